"""Many registered SIP WebSocket clients in one process, cheap: one asyncio Protocol each
(no aiosip, no websockets), for the disconnect storm of tests/serve.

    python -m tests.support.storm HOST PORT N SOURCES

opens N connections to ws://HOST:PORT/ (source addresses 127.0.0.2 .. 127.0.0.<SOURCES+1>
in turn), REGISTERs each as sip:storm<i>@example.com with a ``.invalid`` Contact host,
answers Pings, and prints one JSON line: ``{"ready": N, "setup": seconds}``.  A line
``drop`` on stdin then aborts every transport at once (``{"dropped": N, "took": s}``);
end of stdin exits.  It raises its own RLIMIT_NOFILE soft limit to the hard one.
"""
from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

from tests.support.websocket import Opcode, encode_frame, handshake_request, new_key

REGISTER = ('REGISTER sip:127.0.0.1 SIP/2.0\r\n'
            'Via: SIP/2.0/WS s{n}.invalid;branch=z9hG4bKstorm{n}\r\n'
            'Max-Forwards: 70\r\nFrom: <sip:storm{n}@example.com>;tag=s{n}\r\n'
            'To: <sip:storm{n}@example.com>\r\nCall-ID: storm-{n}\r\nCSeq: 1 REGISTER\r\n'
            'Contact: <sip:storm{n}@s{n}.invalid;transport=ws>\r\nExpires: 600\r\n'
            'Content-Length: 0\r\n\r\n')


class Client(asyncio.Protocol):
    """Handshake, one REGISTER, then Pongs; ``registered`` gets the status of the answer."""

    def __init__(self, n: int, host: str, port: int) -> None:
        self.n, self.host, self.port = n, host, port
        self.buffer = b''
        self.upgraded = False
        self.transport: asyncio.Transport | None = None
        self.registered: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(handshake_request(self.host, self.port, new_key()))

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if not self.upgraded:
            head, sep, rest = self.buffer.partition(b'\r\n\r\n')
            if not sep:
                return
            if not head.startswith(b'HTTP/1.1 101 '):
                self._fail(ConnectionError('handshake refused: %r' % head[:80]))
                return
            self.upgraded, self.buffer = True, rest
            self.transport.write(encode_frame(Opcode.TEXT, REGISTER.format(n=self.n).encode()))
        while len(self.buffer) >= 2:
            b0, b1 = self.buffer[0], self.buffer[1]
            length, offset = b1 & 0x7F, 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                length, offset = int.from_bytes(self.buffer[2:4], 'big'), 4
            elif length == 127:
                if len(self.buffer) < 10:
                    return
                length, offset = int.from_bytes(self.buffer[2:10], 'big'), 10
            if len(self.buffer) < offset + length:
                return
            payload = self.buffer[offset:offset + length]
            self.buffer = self.buffer[offset + length:]
            opcode = b0 & 0x0F
            if opcode == Opcode.PING:
                self.transport.write(encode_frame(Opcode.PONG, payload))
            elif opcode == Opcode.TEXT and not self.registered.done():
                self.registered.set_result(int(payload.split(b' ', 2)[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError('closed by the server'))

    def _fail(self, exc: BaseException) -> None:
        if not self.registered.done():
            self.registered.set_exception(exc)


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def main(host: str, port: int, count: int, sources: int) -> None:
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    clients: list[Client] = []

    async def one(n: int) -> None:
        source = '127.0.0.%d' % (2 + n % sources)
        _, client = await loop.create_connection(lambda: Client(n, host, port), host, port,
                                                 local_addr=(source, 0))
        clients.append(client)
        status = await asyncio.wait_for(client.registered, 30)
        if status != 200:
            raise AssertionError('client %d: REGISTER got %d' % (n, status))

    batch = 250
    for first in range(0, count, batch):
        await asyncio.gather(*(one(n) for n in range(first, min(count, first + batch))))
    print(json.dumps({'ready': len(clients), 'setup': time.perf_counter() - started}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        if line.strip() == b'drop':
            began = time.perf_counter()
            for client in clients:
                assert client.transport is not None
                client.transport.abort()
            print(json.dumps({'dropped': len(clients), 'took': time.perf_counter() - began}),
                  flush=True)


if __name__ == '__main__':
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
