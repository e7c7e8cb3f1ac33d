"""A WebSocket client written by hand (RFC 6455, standard library only).

It shows every frame, control frames included (the websockets library answers Pings
silently), and sends frames the websockets library refuses to send (fragments, invalid
UTF-8). No extensions. The handshake pieces (:func:`handshake_request`,
:func:`check_response`) and :func:`encode_frame` also serve blocking probes.

    ws = await RawWebSocket.connect('127.0.0.1', port)        # offers "sip", checks the 101
    await ws.send_text('OPTIONS sip:127.0.0.1 SIP/2.0\\r\\n...')
    reply = await ws.recv_text()                              # answers Pings on the way
    await ws.close()
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hashlib
import os
import re
import ssl as _ssl
from collections.abc import Sequence


class Opcode(enum.IntEnum):
    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'


def new_key() -> str:
    """A fresh ``Sec-WebSocket-Key``."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer ``key`` with (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()


def handshake_request(host: str, port: int, key: str, *, path: str = '/',
                      subprotocols: Sequence[str] = ('sip',)) -> bytes:
    """The client's opening handshake (an HTTP/1.1 GET with Upgrade)."""
    lines = ['GET %s HTTP/1.1' % path, 'Host: %s:%d' % (host, port), 'Upgrade: websocket',
             'Connection: Upgrade', 'Sec-WebSocket-Key: %s' % key, 'Sec-WebSocket-Version: 13']
    if subprotocols:
        lines.append('Sec-WebSocket-Protocol: ' + ', '.join(subprotocols))
    return ('\r\n'.join(lines) + '\r\n\r\n').encode()


def response_headers(head: str) -> list[tuple[str, str]]:
    """The header fields of an HTTP response head, in order."""
    fields = []
    for line in head.split('\r\n')[1:]:
        if ':' in line:
            name, value = line.split(':', 1)
            fields.append((name.strip(), value.strip()))
    return fields


def check_response(head: str, key: str, subprotocols: Sequence[str] = ('sip',)) -> None:
    """Raise ConnectionError unless the server's response ``head`` is a 101; AssertionError
    when the 101 is wrong: a ``Sec-WebSocket-Accept`` that does not match ``key``, or (when
    ``subprotocols`` were offered) not exactly one ``Sec-WebSocket-Protocol`` among them."""
    if not head.startswith('HTTP/1.1 101 '):
        raise ConnectionError('WebSocket handshake refused: %r' % head)
    fields = response_headers(head)
    accept = [v for k, v in fields if k.lower() == 'sec-websocket-accept']
    if accept != [accept_key(key)]:
        raise AssertionError('wrong Sec-WebSocket-Accept in %r' % head)
    chosen = [v for k, v in fields if k.lower() == 'sec-websocket-protocol']
    if subprotocols and (len(chosen) != 1 or chosen[0] not in subprotocols):
        raise AssertionError('the 101 does not choose one of %r: %r' % (tuple(subprotocols), head))


def _masked(data: bytes, mask: bytes) -> bytes:
    """``data`` XOR the 4-byte ``mask`` repeated (masking and unmasking alike)."""
    n = len(data)
    repeated = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, 'big') ^ int.from_bytes(repeated, 'big')).to_bytes(n, 'big')


def encode_frame(opcode: int, payload: bytes = b'', *, fin: bool = True) -> bytes:
    """One frame as a client sends it (masked); ``fin=False`` for all but a message's last
    fragment."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + n.to_bytes(2, 'big')
    else:
        head = bytes([first, 0x80 | 127]) + n.to_bytes(8, 'big')
    mask = os.urandom(4)
    return head + mask + _masked(payload, mask)


class RawWebSocket:
    """A client WebSocket whose frames the test sees and writes one by one.

    ``strict``: the server under test must send what RFC 6455 lets a server send and only
    whole text messages besides Ping, Pong and Close: a masked or fragmented frame, or
    (in :meth:`recv_text`) any other frame, fails the test with AssertionError, and text
    must be valid UTF-8. Otherwise masked frames are unmasked, fragments are returned as
    they come, binary messages count as text and a Close raises ConnectionError."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 response_head: str = '', *, strict: bool = False) -> None:
        self.reader, self.writer = reader, writer
        self.response_head = response_head
        self.strict = strict

    @property
    def response_headers(self) -> list[tuple[str, str]]:
        """The header fields of the server's 101."""
        return response_headers(self.response_head)

    @classmethod
    async def connect(cls, host: str, port: int, *, path: str = '/',
                      subprotocols: Sequence[str] = ('sip',), ssl: _ssl.SSLContext | None = None,
                      timeout: float = 5.0, strict: bool = False) -> RawWebSocket:
        """Open TCP (TLS with ``ssl``) and do the handshake (see :func:`check_response`)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl, server_hostname=host if ssl else None),
            timeout)
        key = new_key()
        writer.write(handshake_request(host, port, key, path=path, subprotocols=subprotocols))
        head = (await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'), timeout)).decode('latin-1')
        try:
            check_response(head, key, subprotocols)
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, head, strict=strict)

    @classmethod
    async def open(cls, url: str, **kwargs) -> RawWebSocket:
        """:meth:`connect` to a ``ws://host:port/path`` URL."""
        m = re.fullmatch(r'ws://([^:/]+):(\d+)(/.*)', url)
        if not m:
            raise ValueError('not a ws://host:port/path URL: %r' % url)
        return await cls.connect(m.group(1), int(m.group(2)), path=m.group(3), **kwargs)

    async def send_frame(self, opcode: int, payload: bytes = b'', *, fin: bool = True) -> None:
        self.writer.write(encode_frame(opcode, payload, fin=fin))
        await self.writer.drain()

    async def send_text(self, text: str) -> None:
        await self.send_frame(Opcode.TEXT, text.encode('utf-8'))

    async def recv_frame(self, timeout: float = 5.0) -> tuple[Opcode, bytes]:
        """The next frame as (opcode, payload); fragments are not reassembled."""
        async def read() -> tuple[Opcode, bytes]:
            b0, b1 = await self.reader.readexactly(2)
            if self.strict and (b1 & 0x80 or not b0 & 0x80):
                raise AssertionError('servers send unmasked, unfragmented frames: %02x %02x'
                                     % (b0, b1))
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), 'big')
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), 'big')
            mask = await self.reader.readexactly(4) if b1 & 0x80 else None
            data = await self.reader.readexactly(n)
            return Opcode(b0 & 0x0F), _masked(data, mask) if mask else data
        return await asyncio.wait_for(read(), timeout)

    async def recv_text(self, timeout: float = 5.0, *, auto_pong: bool = True) -> str:
        """The next message as str, within ``timeout``; Pings are answered on the way unless
        ``auto_pong`` is False, Pongs skipped (see the class for ``strict``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            opcode, data = await self.recv_frame(max(0.01, deadline - loop.time()))
            if opcode == Opcode.PING and auto_pong:
                await self.send_frame(Opcode.PONG, data)
            elif opcode == Opcode.TEXT:
                return data.decode('utf-8', 'strict' if self.strict else 'replace')
            elif self.strict:
                if opcode not in (Opcode.PING, Opcode.PONG):
                    raise AssertionError('not a text message: %r' % ((opcode, data),))
            elif opcode == Opcode.BINARY:
                return data.decode('utf-8', 'replace')
            elif opcode == Opcode.CLOSE:
                raise ConnectionError('server closed the WebSocket: %r' % data)

    async def recv_close(self, timeout: float = 5.0) -> int:
        """Wait (``timeout`` for each frame) for the server's Close frame; its status code."""
        while True:
            opcode, data = await self.recv_frame(timeout)
            if opcode == Opcode.CLOSE:
                return int.from_bytes(data[:2], 'big')

    async def close(self, code: int = 1000) -> None:
        with contextlib.suppress(Exception):
            await self.send_frame(Opcode.CLOSE, code.to_bytes(2, 'big'))
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)


class Recorder:
    """A ConnectionHandler for ``listen()`` that keeps what it is told: the connections
    made, in order, and the SIP messages received (a queue)."""

    def __init__(self) -> None:
        self.connections: list = []
        self.messages: asyncio.Queue = asyncio.Queue()

    def connection_made(self, conn) -> None:
        self.connections.append(conn)

    def message_received(self, conn, message) -> None:
        self.messages.put_nowait(message)

    def connection_lost(self, conn, exc) -> None:
        pass
