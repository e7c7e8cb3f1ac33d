"""The admin WebSocket, in process on real sockets: who may open it (token in a header
or the subprotocol, never the URL; Origin; how many), what a tracer gets (filters,
redaction), a tracer that stops reading (loses messages, counted and told; the relay
answers on), the admin actions (list, close, unbind, drain), and shutdown."""
from __future__ import annotations

import asyncio
import base64
import json
import logging

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from aiosip_ws.serve.admin import SUBPROTOCOL, AdminSocket
from aiosip_ws.serve.relay import RelayServer
from tests.support import eventually
from tests.support.sip import recv, register_raw

pytestmark = pytest.mark.filterwarnings('error')

TOKEN = 'a-token-of-some-length'


@pytest.fixture
async def traced():
    server = RelayServer()
    service = server.server_options.admin = AdminSocket(
        server, token=TOKEN, origins=['https://admin.example.com'], max_tracers=2)
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
    await eventually(lambda: not service.tracers)
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

        async def until_told() -> None:
            while not any(f['type'] == 'dropped' for f in frames):
                frames.append(await next_frame(slow))
        await asyncio.wait_for(until_told(), 10)
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


async def act(url: str, **request) -> dict:
    async with tracer(url) as ws:
        await ws.send(json.dumps(request))
        return await next_frame(ws)


async def test_admin_actions_list_close_unbind_and_drain(traced, caplog):
    server, service, url = traced
    caplog.set_level(logging.INFO, 'aiosip_ws.serve.admin')
    async with connect(url, subprotocols=['sip'], proxy=None) as alice, \
            connect(url, subprotocols=['sip'], proxy=None) as bob:
        await register_raw(alice, 'alice')
        await register_raw(bob, 'bob')
        answer = await act(url, action='connections', id=7)
        assert answer['type'] == 'result' and answer['id'] == 7
        rows = {tuple(row['address']): row for row in answer['result']}
        row = rows[alice.local_address[:2]]
        assert row['aors'] == ['sip:alice@example.com'] and row['transport'] == 'ws'
        assert row['peer'] == row['address'] and 0 <= row['age'] < 10
        assert row['pending'] == 0 and row['queued_bytes'] == 0
        assert row['bytes_in'] > 200 and row['bytes_out'] > 200     # its REGISTER and 200
        closed = await act(url, action='close', connection=row['id'], code=4001,
                           reason='admin says bye')
        assert closed['type'] == 'result'
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(alice.recv(), 5)
        assert alice.close_code == 4001 and alice.close_reason == 'admin says bye'
        assert 'closed connection %s' % row['id'] in caplog.text
        wrong = await act(url, action='close', connection=row['id'])
        assert wrong['type'] == 'error' and 'no connection' in wrong['error']
        bad = await act(url, action='close', connection=rows[bob.local_address[:2]]['id'],
                        code=1005)
        assert bad['type'] == 'error' and 'close code 1005' in bad['error']
        assert (await act(url, action='unbind', aor='sip:bob@example.com'))['result'] == {
            'removed': 1}
        assert server.registrar.lookup('sip:bob@example.com') == []
        assert 'removed 1 binding(s) of sip:bob@example.com' in caplog.text
        missing = await act(url, action='unbind', aor='sip:bob@example.com')
        assert missing['type'] == 'error' and 'has no bindings' in missing['error']
        unknown = await act(url, action='reboot')
        assert unknown['type'] == 'error' and 'no action' in unknown['error']
        assert (await act(url, action='drain', window=0))['result']['draining']
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(bob.recv(), 5)
        assert bob.close_code == 1001 and server.draining
