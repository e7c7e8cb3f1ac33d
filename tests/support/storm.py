"""Many registered SIP WebSocket clients in one process, cheap: one asyncio Protocol each
(no aiosip, no websockets), for the disconnect storm of tests/serve.

    python -m tests.support.storm HOST PORT N SOURCES

opens N connections to ws://HOST:PORT/ (source addresses 127.0.0.2 .. 127.0.0.<SOURCES+1>
in turn), REGISTERs each as sip:storm<i>@example.com with a ``.invalid`` Contact host,
answers Pings, then opens one more, the probe (from 127.0.0.1, registered as
sip:probe@example.com), and prints one JSON line: ``{"ready": N, "setup": seconds}``.

A line ``drop`` on stdin then aborts the N transports at once and, right after, sends the
probe's refresh REGISTER into the storm; the line printed when its answer comes is
``{"dropped": N, "took": s, "status": code, "register": s, "register_sent": s}``: the
aborts' duration, the answer's status, and the seconds from the first abort and from the
REGISTER's sending to the answer, on this process's clock, which nothing else keeps busy.
End of stdin exits.  It raises its own RLIMIT_NOFILE soft limit to the hard one.
"""
from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

from tests.support.websocket import Opcode, encode_frame, handshake_request, new_key

REGISTER = ('REGISTER sip:127.0.0.1 SIP/2.0\r\n'
            'Via: SIP/2.0/WS {user}.invalid;branch=z9hG4bK{user}c{cseq}\r\n'
            'Max-Forwards: 70\r\nFrom: <sip:{user}@example.com>;tag={user}\r\n'
            'To: <sip:{user}@example.com>\r\nCall-ID: {user}\r\nCSeq: {cseq} REGISTER\r\n'
            'Contact: <sip:{user}@{user}.invalid;transport=ws>\r\nExpires: 600\r\n'
            'Content-Length: 0\r\n\r\n')
#: the probe's user name and Contact host (the test checks that only these are left)
PROBE = 'probe'


class Client(asyncio.Protocol):
    """Handshake, one REGISTER, then Pongs; ``registered`` gets the status of the answer
    (and of each later :meth:`register`)."""

    def __init__(self, user: str, host: str, port: int) -> None:
        self.user, self.host, self.port = user, host, port
        self.cseq = 1
        self.buffer = b''
        self.upgraded = False
        self.transport: asyncio.Transport | None = None
        self.registered: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def register(self) -> None:
        """Send a refresh REGISTER; its answer's status goes to a new ``registered``."""
        assert self.transport is not None
        self.cseq += 1
        self.registered = asyncio.get_running_loop().create_future()
        self.transport.write(encode_frame(
            Opcode.TEXT, REGISTER.format(user=self.user, cseq=self.cseq).encode()))

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
            self.transport.write(encode_frame(
                Opcode.TEXT, REGISTER.format(user=self.user, cseq=self.cseq).encode()))
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

    async def one(user: str, source: str) -> Client:
        _, client = await loop.create_connection(lambda: Client(user, host, port), host, port,
                                                 local_addr=(source, 0))
        status = await asyncio.wait_for(client.registered, 30)
        if status != 200:
            raise AssertionError('%s: REGISTER got %d' % (user, status))
        return client

    batch = 250
    for first in range(0, count, batch):
        clients += await asyncio.gather(*(one('storm%d' % n, '127.0.0.%d' % (2 + n % sources))
                                          for n in range(first, min(count, first + batch))))
    probe = await one(PROBE, host)
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
            took = time.perf_counter() - began
            probe.register()
            sent = time.perf_counter()
            status = await asyncio.wait_for(probe.registered, 30)
            answered = time.perf_counter()
            print(json.dumps({'dropped': len(clients), 'took': took, 'status': status,
                              'register': answered - began, 'register_sent': answered - sent}),
                  flush=True)


if __name__ == '__main__':
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
