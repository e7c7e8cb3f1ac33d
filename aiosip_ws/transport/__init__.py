"""asyncio transports on top of :mod:`aiosip_ws.core`: the RFC 7118 WebSocket
connection (:mod:`.websocket`) and listener (:mod:`.listener`), and RFC 3263
discovery (:mod:`.discovery`).

Nothing here imports aiosip.
"""
