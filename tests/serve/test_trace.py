"""The admin WebSocket and its live traces, in process on real sockets: who may open it
(token in a header or the subprotocol, never the URL; Origin; how many), what a tracer
gets (filters, redaction), a tracer that stops reading (loses messages, counted and told;
the relay answers on), and shutdown."""
from __future__ import annotations

import asyncio
import base64
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from aiosip_ws.serve.relay import RelayServer
from aiosip_ws.serve.trace import SUBPROTOCOL, TraceService
from tests.support.sip import recv, register_raw

pytestmark = pytest.mark.filterwarnings('error')

TOKEN = 'a-token-of-some-length'


@pytest.fixture
async def traced():
    server = RelayServer()
    service = server.server_options.admin = TraceService(
        server.events, token=TOKEN, origins=['https://admin.example.com'], max_tracers=2)
    [listener] = await server.start('ws://127.0.0.1:0/')
    try:
        yield server, service, listener.bound_url
    finally:
        await server.close()


def tracer(url: str, *, token: str | None = TOKEN, origin: str | None = None, **extra):
    headers = {'Authorization': 'Bearer ' + token} if token else {}
    return connect(url, subprotocols=[SUBPROTOCOL], additional_headers=headers, proxy=None,
                   origin=origin, **extra)


async def trace(ws, **wanted) -> dict:
    await ws.send(json.dumps({'trace': wanted}))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def next_frame(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def refused(url: str, **options) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with tracer(url, **options):
            pass
    return info.value.response.status_code


async def test_who_may_open_the_admin_websocket(traced):
    server, service, url = traced
    assert await refused(url, token=None) == 401
    assert await refused(url, token='not-the-token-at-all') == 401
    assert await refused(url + '?token=' + TOKEN) == 400             # never in the URL
    assert await refused(url, origin='https://evil.example.com') == 403
    async with tracer(url, origin='https://admin.example.com') as ws:
        assert (await trace(ws))['type'] == 'tracing'
    encoded = base64.urlsafe_b64encode(TOKEN.encode()).decode().rstrip('=')
    async with connect(url, subprotocols=[SUBPROTOCOL, 'aiosip-ws.token.' + encoded],
                       proxy=None) as ws:                               # a browser's way
        assert ws.subprotocol == SUBPROTOCOL and (await trace(ws))['type'] == 'tracing'
    async with tracer(url) as one, tracer(url) as two:
        await trace(one)
        await trace(two)
        assert await refused(url) == 503                               # --max-tracers 2
    async with asyncio.timeout(5):
        while service.tracers:
            await asyncio.sleep(0.01)
    assert not [s for s in server.events.subscriptions if s.name == 'trace']
    # SIP clients are not affected, and a SIP listener without a token has no admin side
    async with connect(url, subprotocols=['sip'], proxy=None) as sip:
        await register_raw(sip, 'alice')
    plain = RelayServer()
    [listener] = await plain.start('ws://127.0.0.1:0/')
    try:
        assert await refused(listener.bound_url) == 400
    finally:
        await plain.close()


async def test_a_tracer_sees_what_matches_its_filter_redacted(traced):
    server, service, url = traced
    async with tracer(url) as by_call, tracer(url) as by_aor, \
            connect(url, subprotocols=['sip'], proxy=None) as alice:
        assert (await trace(by_call, call_id='reg-bob', method='register'))['filter'] == {
            'call_id': 'reg-bob', 'method': 'REGISTER'}
        await trace(by_aor, aor='sip:Alice@Example.com')
        await register_raw(alice, 'alice')
        async with connect(url, subprotocols=['sip'], proxy=None) as bob:
            await register_raw(bob, 'bob')
            request, answer = await next_frame(by_call), await next_frame(by_call)
            assert (request['method'], request['direction'], answer['status']) == \
                ('REGISTER', 'in', 200)
            assert request['source'] == list(bob.local_address[:2])
            assert request['destination'] == list(bob.remote_address[:2])
            assert request['text'].startswith('REGISTER sip:example.com SIP/2.0\r\n')
            assert request['call_id'] == 'reg-bob' and request['transport'] == 'ws'
        seen = [await next_frame(by_aor), await next_frame(by_aor)]
        assert [f['call_id'] for f in seen] == ['reg-alice', 'reg-alice']   # not bob's
        await alice.send('OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS a.invalid;branch='
                         'z9hG4bKo1\r\nFrom: <sip:alice@example.com>;tag=o\r\nTo: <sip:example'
                         '.com>\r\nCall-ID: o-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n'
                         'Proxy-Authorization: Digest username="alice", realm="x", nonce="n", '
                         'uri="sip:example.com", response="0000feedbeef"\r\n\r\n')
        await recv(alice)
        frame = await next_frame(by_aor)
        assert 'response="[redacted]"' in frame['text'] and 'feedbeef' not in frame['text']


async def test_a_tracer_that_stops_reading_loses_messages_never_the_relay(traced):
    server, service, url = traced
    service.queue = 5
    service.bodies = True
    async with tracer(url, max_size=None) as slow, \
            connect(url, subprotocols=['sip'], proxy=None, max_size=None) as alice:
        await trace(slow)
        host = await register_raw(alice, 'alice')
        await next_frame(slow)
        await next_frame(slow)
        slow.transport.pause_reading()                  # it stops reading its socket
        body = 'x' * 60000
        for n in range(300):                            # 18 MB through the tracer
            await alice.send('MESSAGE sip:nobody@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;'
                             'branch=z9hG4bKm%d\r\nFrom: <sip:alice@example.com>;tag=m\r\nTo: '
                             '<sip:nobody@example.com>\r\nCall-ID: m-%d\r\nCSeq: 1 MESSAGE\r\n'
                             'Max-Forwards: 70\r\nContent-Type: text/plain\r\n\r\n%s'
                             % (host, n, n, body))
            assert (await asyncio.wait_for(recv(alice), 2)).status == 404   # answered on
        [subscription] = [s for s in server.events.subscriptions if s.name == 'trace']
        assert subscription.dropped > 0
        text = server.metrics.exposition().decode()
        assert 'aiosip_ws_event_drops_total{consumer="trace"}' in text
        slow.transport.resume_reading()
        frames = []
        async with asyncio.timeout(10):
            while not any(f['type'] == 'dropped' for f in frames):
                frames.append(await next_frame(slow))
        lost = sum(f['count'] for f in frames if f['type'] == 'dropped')
        assert 0 < lost <= subscription.dropped


async def test_shutdown_closes_the_tracers(traced):
    server, service, url = traced
    async with tracer(url) as ws:
        await trace(ws)
        await server.close()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1001
    assert not service.tracers
