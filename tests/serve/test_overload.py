"""`aiosip-ws serve` under overload, on the wire: a client that stops reading, a callee that
never answers, the caps on pending transactions (503 with Retry-After, the only 503 serve
makes itself; a downstream 503 is relayed as 500, RFC 3261 §16.7) and the request rate."""
from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from aiosip_ws.core.codec import make_response, parse, serialize
from aiosip_ws.options import RelayLimits, ServerOptions
from aiosip_ws.serve.relay import RelayServer
from tests.support.net import http_get
from tests.support.sip import register_request


def register(name: str) -> str:
    return register_request(name, host='%s.invalid' % name, call_id='reg-%s' % name,
                            expires=300)


def message(to: str, n: int, body: str = 'x') -> str:
    return ('MESSAGE sip:%s@example.com SIP/2.0\r\nVia: SIP/2.0/WS bob.invalid;branch=z9hG4bKm%d\r\n'
            'Max-Forwards: 70\r\nFrom: <sip:bob@example.com>;tag=b\r\nTo: <sip:%s@example.com>\r\n'
            'Call-ID: m%d\r\nCSeq: %d MESSAGE\r\nContent-Type: text/plain\r\n\r\n%s'
            % (to, n, to, n, n + 1, body))


async def open_client(url: str, name: str | None = None):
    ws = await connect(url, subprotocols=['sip'], proxy=None, max_size=2 ** 20)
    if name is not None:
        await ws.send(register(name))
        assert parse(await asyncio.wait_for(ws.recv(), 5)).status == 200
    return ws


def rss_kib(pid: int) -> int:
    for line in Path('/proc/%d/status' % pid).read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
    raise AssertionError('no VmRSS')


async def send_and_collect(ws, frames: list[str], timeout: float) -> list[int]:
    """Send every frame while reading the answers concurrently; their statuses, in order."""
    statuses: list[int] = []

    async def read() -> None:
        while len(statuses) < len(frames):
            statuses.append(parse(await ws.recv()).status or 0)

    reader = asyncio.ensure_future(read())
    try:
        for frame in frames:
            await ws.send(frame)
        await asyncio.wait_for(asyncio.shield(reader), timeout)
    except asyncio.TimeoutError:
        raise AssertionError('only %d of %d answered' % (len(statuses), len(frames))) from None
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return statuses


@pytest.mark.load
async def test_a_client_that_stops_reading_is_closed_and_memory_stays_bounded(serve_process):
    """20,000 MESSAGEs of 1 KiB for a registered client that no longer reads: serve closes
    it (1008) once its send queue is full, the MESSAGEs in flight to it end at once as 480
    (not after Timer F), as do those relayed while it closes; once it is gone they get 404;
    serve's memory stays bounded."""
    process = serve_process('--listen', 'ws://127.0.0.1:0/', '--max-requests-per-second', '0',
                            '--max-send-queue', str(256 * 1024), '--max-pending', '20000',
                            '--max-pending-per-connection', '20000', '--log-level', 'WARNING')
    [url] = process.urls
    alice = await open_client(url, 'alice')
    bob = await open_client(url, 'bob')
    try:
        alice.transport.pause_reading()
        before = rss_kib(process.proc.pid)
        body = 'x' * 1024
        frames = [message('alice', n, body) for n in range(20000)]
        started = time.monotonic()
        statuses = await send_and_collect(bob, frames, timeout=60)
        elapsed = time.monotonic() - started
        grown = rss_kib(process.proc.pid) - before
        counts = {s: statuses.count(s) for s in set(statuses)}
        assert set(counts) <= {480, 404}, counts
        assert counts.get(480, 0) >= 1, counts       # in flight, or sent while it closes
        assert elapsed < 25, elapsed                       # nothing waited for Timer F (32 s)
        assert grown < 60 * 1024, 'serve grew by %d KiB' % grown
        alice.transport.resume_reading()
        try:
            while True:
                await asyncio.wait_for(alice.recv(), 10)
        except ConnectionClosed as closed:
            assert closed.rcvd is None or closed.rcvd.code == 1008
        port = int(url.rsplit(':', 1)[1].strip('/'))
        status, _, metrics = await http_get(port, '/metrics')
        assert status == 200
        [drops] = [line for line in metrics.decode().splitlines()
                   if line.startswith('aiosip_ws_send_queue_drops_total ')]
        assert float(drops.split()[1]) >= 1, drops
    finally:
        await bob.close()
        alice.transport.abort()
    code, _, err = process.stop()
    assert code == 0, err
    assert 'the peer is not reading' in err and 'closing with 1008' in err
    assert 'Traceback' not in err


async def test_a_callee_that_never_answers_fills_its_cap_then_503():
    """Requests towards a connection that reads but never answers: at most
    ``max_pending_per_connection`` are relayed, the rest get 503 with Retry-After at once,
    and Timer F ends the relayed ones with 408."""
    server = RelayServer(server_options=ServerOptions(transaction_timeout=1.5),
                         limits=RelayLimits(max_pending_per_connection=50,
                                            max_requests_per_second=None))
    [listener] = await server.start('ws://127.0.0.1:0/')
    url = listener.bound_url
    alice, bob = await open_client(url, 'alice'), await open_client(url, 'bob')
    forwarded = 0

    async def read_silently():
        nonlocal forwarded
        async for _ in alice:
            forwarded += 1

    reader = asyncio.ensure_future(read_silently())
    try:
        frames = [message('alice', n) for n in range(2000)]
        for frame in frames:
            await bob.send(frame)
        responses = [parse(await asyncio.wait_for(bob.recv(), 10)) for _ in frames]
        busy = [r for r in responses if r.status == 503]
        assert len(busy) == 2000 - 50 and forwarded == 50
        assert all(r.get('Retry-After') == '5' for r in busy)
        assert {r.reason for r in busy} <= {
            'Service Unavailable (the callee has too many requests unanswered)',
            'Service Unavailable (too many requests in progress from this connection (50))'}
        assert sorted(r.status for r in responses if r.status != 503) == [408] * 50
        assert not len(server.transactions) and alice.state is not None
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await alice.close()
        await bob.close()
        await server.close()


async def test_the_total_cap_and_a_downstream_503_relayed_as_500():
    server = RelayServer(limits=RelayLimits(max_pending=3, max_requests_per_second=None))
    [listener] = await server.start('ws://127.0.0.1:0/')
    url = listener.bound_url
    alice, bob = await open_client(url, 'alice'), await open_client(url, 'bob')
    try:
        for n in range(4):
            await bob.send(message('alice', n))
        refused = parse(await asyncio.wait_for(bob.recv(), 5))
        assert refused.status == 503 and 'too many requests in progress (3)' in refused.reason
        assert refused.get('Retry-After') == '5'
        # alice answers the three she got with 503: upstream they become 500
        for _ in range(3):
            request = parse(await asyncio.wait_for(alice.recv(), 5))
            await alice.send(serialize(make_response(request, 503, to_tag='a', headers=[
                ('Retry-After', '60')])).decode())
        answers = [parse(await asyncio.wait_for(bob.recv(), 5)) for _ in range(3)]
        assert [a.status for a in answers] == [500] * 3
        assert all(a.get('Retry-After') is None for a in answers)
    finally:
        await alice.close()
        await bob.close()
        await server.close()


async def test_a_connection_over_the_request_rate_gets_503_then_is_closed():
    server = RelayServer(limits=RelayLimits(max_requests_per_second=50, burst=20,
                                            rate_limit_grace=1.0))
    [listener] = await server.start('ws://127.0.0.1:0/')
    url = listener.bound_url
    flood, calm = await open_client(url), await open_client(url)
    options = ('OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS f.invalid;branch=z9hG4bKo%d\r\n'
               'Max-Forwards: 70\r\nFrom: <sip:f@example.com>;tag=f\r\nTo: <sip:example.com>\r\n'
               'Call-ID: o%d\r\nCSeq: 1 OPTIONS\r\n\r\n')
    try:
        for n in range(60):
            await flood.send(options % (n, n))
        statuses = [parse(await asyncio.wait_for(flood.recv(), 5)).status for _ in range(60)]
        assert statuses[:20] == [200] * 20 and statuses.count(503) >= 30, statuses
        # another connection is not affected
        await calm.send(options % (999, 999))
        assert parse(await asyncio.wait_for(calm.recv(), 5)).status == 200
        # staying over the rate past the grace period closes the connection with 1008
        async def read_answers():
            with contextlib.suppress(ConnectionClosed):
                async for _ in flood:
                    pass

        reader = asyncio.ensure_future(read_answers())
        started = time.monotonic()
        try:
            n = 1000
            while time.monotonic() - started < 10:
                n += 1
                await flood.send(options % (n, n))
                await asyncio.sleep(0.002)
            raise AssertionError('still open after 10 s over the rate')
        except ConnectionClosed:
            pass
        await asyncio.wait_for(reader, 5)
        assert flood.close_code == 1008 and 'rate limit' in (flood.close_reason or '')
    finally:
        await flood.close()
        await calm.close()
        await server.close()
