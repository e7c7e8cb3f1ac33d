"""asyncio transports on top of :mod:`aiosip_ws.core`: the RFC 7118 WebSocket
connection and listener (:mod:`.websocket`) and RFC 3263 discovery (:mod:`.discovery`).

Nothing here imports aiosip.
"""
