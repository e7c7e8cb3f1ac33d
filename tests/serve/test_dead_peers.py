"""A peer that stops reading (a phone out of coverage, gone without a FIN) is given up in
bounded time, whatever waits to be sent to it: by the missing Pong (``--ping-interval``,
``--ping-timeout``) or, pings or not, by the send timeout (``--send-timeout``).  Then its
bindings go, the requests relayed to it end with 480 to their senders, and what is sent
to its user is answered at once.

The dead peer is a real socket on 127.0.0.1 with a small receive buffer that stops
reading (its transport's reading paused): the kernel's buffers fill, then serve's."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl as _ssl

import pytest
from websockets.asyncio.client import connect

from aiosip_ws.core.codec import make_response, parse, serialize
from aiosip_ws.core.stream import StreamFramer
from aiosip_ws.options import RelayLimits, ServerOptions
from aiosip_ws.serve.relay import RelayServer
from tests.support.sip import next_framed, register_raw, register_request, tcp_register
from tests.support.websocket import RawWebSocket, check_response, handshake_request, new_key

HOST = '127.0.0.1'
#: the Contact host of the deaf client (a WebSocket client's is .invalid, RFC 7118 §5)
BOB_HOST = 'bob-deaf.invalid'
#: serve's socket takes up to tcp_wmem's maximum (4 MiB here) before its transport pauses
BODY = 'x' * 60000


async def deaf_socket(port: int, ssl: _ssl.SSLContext | None = None
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP (TLS) connection to serve with a 4 KiB receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (HOST, port)), 5)
    return await asyncio.wait_for(asyncio.open_connection(
        sock=sock, ssl=ssl, server_hostname='localhost' if ssl else None), 5)


async def deaf_websocket(port: int, ssl: _ssl.SSLContext | None) -> RawWebSocket:
    reader, writer = await deaf_socket(port, ssl)
    key = new_key()
    writer.write(handshake_request(HOST, port, key))
    head = (await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'), 5)).decode('latin-1')
    check_response(head, key)
    return RawWebSocket(reader, writer, head)


def message_to(user: str, caller_host: str, n: int, body: str = BODY) -> str:
    return ('MESSAGE sip:%s@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKdead%d\r\n'
            'From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:%s@example.com>\r\n'
            'Call-ID: dead-%d\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n'
            'Content-Type: text/plain\r\n\r\n%s' % (user, caller_host, n, user, n, body))


class Alice:
    """The live client: relays MESSAGEs to the dead one and collects every answer."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.answers: dict[str, list[tuple[int, float]]] = {}
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            async for data in self.ws:
                answer = parse(data)
                if answer.is_request:
                    continue
                self.answers.setdefault(answer.get('Call-ID') or '', []).append(
                    (answer.status or 0, loop.time()))

    def finals(self, prefix: str = 'dead-') -> dict[str, tuple[int, float]]:
        return {call_id: got[-1] for call_id, got in self.answers.items()
                if call_id.startswith(prefix) and got[-1][0] >= 200}

    async def final(self, call_id: str, timeout: float) -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            got = [a for a in self.answers.get(call_id, []) if a[0] >= 200]
            if got:
                return got[-1]
            await asyncio.sleep(0.02)
        raise AssertionError('no final answer to %s within %g s' % (call_id, timeout))

    async def close(self) -> None:
        await self.ws.close()
        await self.reader
        # websockets leaves its transport to the peer's close; over TLS, Python 3.10's
        # sslproto then never marks it closed and warns when it is collected (unclosed
        # transport), in whichever later test that happens
        self.ws.transport.close()


def connection_of(server: RelayServer, user: str):
    [binding] = [b for b in server.registrar.bindings() if b.aor == 'sip:%s@example.com' % user]
    return binding.connection


def waiting(conn) -> bool:
    """Whether data waits on serve's side for ``conn`` (a WSConnection or a bridged TCP flow)."""
    inner = getattr(conn, 'inner', None)
    if inner is not None:
        return inner.transport.get_write_buffer_size() > 0
    return bool(conn.queued or conn.websocket.paused)


async def flood(alice: Alice, host: str, conn, most: int = 200) -> int:
    """Relay MESSAGEs to bob until data waits on serve's side for his connection (the
    kernel's buffers are full); how many were sent."""
    for n in range(most):
        await alice.ws.send(message_to('bob', host, n))
        await asyncio.sleep(0.005)
        if waiting(conn):
            return n + 1
    raise AssertionError('nothing waits for the deaf peer after %d MESSAGEs' % most)


async def closed_within(conn, since: float, bound: float) -> float:
    """Seconds from ``since`` to the close of ``conn`` (a WSConnection or a bridged flow),
    asserted under ``bound``."""
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(asyncio.shield(conn.closed), since + bound + 2 - loop.time())
    elapsed = loop.time() - since
    assert elapsed <= bound, 'closed after %.2f s, bound %.2f s' % (elapsed, bound)
    return elapsed


async def after_the_close(server: RelayServer, alice: Alice, host: str, closed_at: float,
                          relayed: bool) -> None:
    """Bindings gone; pending requests ended with 480; a new MESSAGE answered 404 within 2 s."""
    loop = asyncio.get_running_loop()
    assert not [b for b in server.registrar.bindings() if b.aor == 'sip:bob@example.com']
    if relayed:
        await asyncio.sleep(0.3)
        finals = alice.finals()
        ended = [when for status, when in finals.values() if status == 480]
        assert ended, finals
        assert max(ended) - closed_at < 2, 'pending requests ended %.2f s after the close' % (
            max(ended) - closed_at)
        assert {status for status, _ in finals.values()} <= {480, 503}, finals
    sent = loop.time()
    await alice.ws.send(message_to('bob', host, 9999, 'are you there?').replace(
        'dead-9999', 'after-close'))
    status, when = await alice.final('after-close', 2)
    assert status in (404, 480) and when - sent < 2
    # in the dialog: towards bob's Contact, over the connection that is gone
    await alice.ws.send('BYE sip:bob@%s;transport=ws SIP/2.0\r\nVia: SIP/2.0/WS %s;branch='
                        'z9hG4bKbye\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: '
                        '<sip:bob@example.com>;tag=b1\r\nCall-ID: in-dialog\r\nCSeq: 2 BYE\r\n'
                        'Max-Forwards: 70\r\n\r\n' % (BOB_HOST, host))
    assert (await alice.final('in-dialog', 2))[0] == 480


@pytest.fixture(params=['ws', 'wss'])
async def serve_with_a_deaf_bob(request, certs):
    """serve (options from the test's marker) with alice registered and bob registered
    from a socket that then stops reading."""
    async def start(**options):
        secure = request.param == 'wss'
        server = RelayServer(server_options=ServerOptions(
            ssl=certs.server_context() if secure else None, max_send_queue=64 << 20, **options),
            limits=RelayLimits(max_pending_per_connection=1000))
        [listener] = await server.start('%s://%s:0/' % (request.param, HOST))
        client_ssl = certs.client_context() if secure else None
        bob = await deaf_websocket(listener.port, client_ssl)
        await bob.send_text(register_request('bob', host=BOB_HOST))
        assert (await bob.recv_text()).startswith('SIP/2.0 200 ')
        alice_ws = await connect(listener.bound_url, subprotocols=['sip'], ssl=client_ssl,
                                 proxy=None)
        host = await register_raw(alice_ws, 'alice')
        started.append((server, bob, Alice(alice_ws)))
        return server, bob, started[-1][2], host

    started: list = []
    yield start
    for server, bob, alice in started:
        bob.writer.transport.abort()
        await alice.close()
        await server.close()


@pytest.mark.parametrize('queued', [True, False], ids=['data-waiting', 'idle'])
async def test_a_peer_that_stops_reading_is_closed_by_the_missing_pong(serve_with_a_deaf_bob,
                                                                         queued):
    interval, timeout = 1.0, 1.0
    server, bob, alice, host = await serve_with_a_deaf_bob(
        ping_interval=interval, ping_timeout=timeout, send_timeout=None)
    conn = connection_of(server, 'bob')
    loop = asyncio.get_running_loop()
    bob.writer.transport.pause_reading()               # bob is gone: no more reads, no Pong
    stopped = loop.time()
    if queued:
        await flood(alice, host, conn)
    # Deadline: interval + timeout + 1 s, and a keep-alive tick for the wheel's rounding.
    await closed_within(conn, stopped, interval + timeout + 1 + 0.25)
    assert conn.close_code == 1011
    assert server.metrics.closed.labels(code='1011')._value.get() == 1
    await after_the_close(server, alice, host, loop.time(), relayed=queued)


async def test_the_send_timeout_closes_a_peer_that_stops_reading_without_pings(serve_with_a_deaf_bob):
    send_timeout = 1.0
    server, bob, alice, host = await serve_with_a_deaf_bob(ping_interval=None,
                                                           send_timeout=send_timeout)
    conn = connection_of(server, 'bob')
    loop = asyncio.get_running_loop()
    bob.writer.transport.pause_reading()
    stopped = loop.time()
    await flood(alice, host, conn)
    sent = loop.time()
    # From the last byte that left (at most when alice's last MESSAGE was relayed): the
    # timeout, and a step of the watch (a quarter of it) for its rounding.
    elapsed = await closed_within(conn, sent, send_timeout + send_timeout / 4 + 0.5)
    assert loop.time() - stopped >= send_timeout        # not before the timeout
    assert elapsed >= 0
    assert conn.close_code == 1008
    await after_the_close(server, alice, host, loop.time(), relayed=True)


async def test_a_slow_reader_that_keeps_reading_is_not_closed(serve_with_a_deaf_bob):
    """A peer that reads slowly but reads makes progress: the send timeout leaves it."""
    server, bob, alice, host = await serve_with_a_deaf_bob(ping_interval=None, send_timeout=1.0)
    conn = connection_of(server, 'bob')
    bob.writer.transport.pause_reading()
    sent = await flood(alice, host, conn)
    bob.writer.transport.resume_reading()
    got = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    while got < sent:                                     # 20 a second: 2 s and more
        text = await bob.recv_text(timeout=5)
        if text.startswith('MESSAGE '):
            got += 1
            await bob.send_text(serialize(make_response(parse(text), 200, to_tag='b')).decode())
        await asyncio.sleep(0.05)
    assert loop.time() - started > 2 and conn.is_open


async def test_a_tcp_peer_that_stops_reading_is_aborted_by_the_send_timeout():
    """The same for SIP over TCP (a ``tcp://`` listener): there is no Ping there, only
    the send timeout."""
    send_timeout = 1.0
    server = RelayServer(server_options=ServerOptions(send_timeout=send_timeout),
                         limits=RelayLimits(max_pending_per_connection=1000))
    ws_listener, tcp = await server.start('ws://%s:0/' % HOST, 'tcp://%s:0' % HOST)
    port = int(tcp.bound_url.rsplit(':', 1)[1])
    reader, writer = await deaf_socket(port)
    local = writer.get_extra_info('sockname')[1]
    framer = StreamFramer()
    try:
        writer.write(tcp_register('bob', local, call_id='reg-bob', branch='z9hG4bKr1'))
        assert (await next_framed(reader, framer)).status == 200
        flow = connection_of(server, 'bob')
        alice_ws = await connect(ws_listener.bound_url, subprotocols=['sip'], proxy=None)
        host = await register_raw(alice_ws, 'alice')
        alice = Alice(alice_ws)
        loop = asyncio.get_running_loop()
        writer.transport.pause_reading()
        stopped = loop.time()
        await flood(alice, host, flow)
        sent = loop.time()
        await closed_within(flow.inner, sent, send_timeout + send_timeout / 4 + 0.5)
        assert loop.time() - stopped >= send_timeout
        closed_at = loop.time()
        await asyncio.sleep(0.3)
        finals = alice.finals()
        assert [s for s, _ in finals.values() if s == 480], finals
        assert max(when for _, when in finals.values()) - closed_at < 2
        # A TCP binding without Outbound stays (serve can open a new connection to its
        # Contact): the MESSAGE after the close finds no one there and is answered at once.
        sent = loop.time()
        await alice.ws.send(message_to('bob', host, 1, 'still there?').replace('dead-1',
                                                                                'after-close'))
        status, when = await alice.final('after-close', 2)
        assert status in (404, 480) and when - sent < 2
        await alice.close()
    finally:
        writer.transport.abort()
        await server.close()
