"""Sans-I/O SIP: grammar and constants, URIs, messages, the parser and serialiser,
RFC 7118 framing, digest authentication and transactions as data.

Nothing here performs I/O or imports asyncio, websockets or aiosip.
"""
