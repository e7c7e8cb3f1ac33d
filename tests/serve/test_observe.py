"""What an operator sees: /healthz, /metrics (Prometheus text), /registrations, on the
WebSocket port, plain HTTP from real sockets on 127.0.0.1."""
from __future__ import annotations

import asyncio
import json
import re

from aiosip_ws.core.codec import make_response, parse, serialize
from aiosip_ws.serve.relay import RelayServer
from tests.support.net import http_get
from tests.support.sip import register_request
from tests.support.websocket import RawWebSocket, handshake_request, new_key

HOST = '127.0.0.1'


def samples(text: bytes) -> dict[str, float]:
    """``name{labels}`` -> value, from the Prometheus text format."""
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith('#'):
            name, value = line.rsplit(' ', 1)
            out[name] = float(value)
    return out


async def test_healthz_metrics_and_registrations_tell_what_serve_does():
    async with RelayServer() as server:
        [listener] = await server.start('ws://%s:0/' % HOST)
        port = listener.port
        status, headers, body = await http_get(port, '/healthz')
        assert (status, body) == (200, b'ok\n')

        bob = await RawWebSocket.connect(HOST, port)
        await bob.send_text(register_request('bob', host='bob-m.invalid'))
        assert (await bob.recv_text()).startswith('SIP/2.0 200 ')
        alice = await RawWebSocket.connect(HOST, port)
        await alice.send_text(register_request('alice'))
        await alice.recv_text()
        message = ('MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS a.invalid;branch=z9hG4bKm'
                   '\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n'
                   'Call-ID: m1\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n\r\n')
        await alice.send_text(message)
        relayed = parse(await bob.recv_text())
        await bob.send_text(serialize(make_response(relayed, 200, to_tag='b')).decode())
        assert (await alice.recv_text()).startswith('SIP/2.0 200 ')
        await alice.send_text(message.replace('MESSAGE', 'FOO').replace('z9hG4bKm', 'z9hG4bKf'))
        assert (await alice.recv_text()).startswith('SIP/2.0 405 ')
        await alice.send_text(message.replace('bob@', 'nobody@').replace('z9hG4bKm', 'z9hG4bKn'))
        assert (await alice.recv_text()).startswith('SIP/2.0 404 ')
        # a handshake without the sip subprotocol: refused with 400
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(handshake_request(HOST, port, new_key(), subprotocols=()))
        assert (await reader.readuntil(b'\r\n\r\n')).startswith(b'HTTP/1.1 400 ')
        writer.close()
        await alice.close()
        await asyncio.sleep(0.1)

        status, headers, body = await http_get(port, '/metrics')
        assert status == 200 and headers['content-type'].startswith('text/plain; version=')
        got = samples(body)
        assert got['aiosip_ws_connections'] == 1
        assert got['aiosip_ws_connections_opened_total'] == 2
        assert got['aiosip_ws_connections_closed_total{code="1000"}'] == 1
        assert got['aiosip_ws_handshakes_refused_total{status="400"}'] == 1
        assert got['aiosip_ws_bindings'] == 1 and got['aiosip_ws_aors'] == 1
        assert got['aiosip_ws_sip_requests_total{method="REGISTER"}'] == 2
        assert got['aiosip_ws_sip_requests_total{method="MESSAGE"}'] == 2
        assert got['aiosip_ws_sip_requests_total{method="other"}'] == 1          # FOO
        assert got['aiosip_ws_sip_responses_total{class="2xx"}'] == 3
        assert got['aiosip_ws_sip_responses_total{class="4xx"}'] == 2
        assert got['aiosip_ws_relayed_requests_total{method="MESSAGE"}'] == 1
        assert got['aiosip_ws_transaction_seconds_count{method="MESSAGE"}'] == 1
        assert got['aiosip_ws_auth_failures_total'] == 0
        assert not [name for name in got if re.search(r'method="(?!%s)' % '|'.join(
            ['REGISTER', 'INVITE', 'ACK', 'CANCEL', 'BYE', 'OPTIONS', 'MESSAGE', 'SUBSCRIBE',
             'NOTIFY', 'PUBLISH', 'INFO', 'REFER', 'PRACK', 'UPDATE', 'other']), name)]

        status, headers, body = await http_get(port, '/registrations')
        assert status == 200 and headers['content-type'] == 'application/json'
        [row] = json.loads(body)
        assert row['aor'] == 'sip:bob@example.com' and 'bob-m.invalid' in row['contact']
        assert row['remote'].startswith('127.0.0.1:') and 0 < row['expires'] <= 60
        # the WebSocket service is still there, and an unknown path is no admin page
        status, _, _ = await http_get(port, '/nothing')
        assert status == 426
        await bob.close()


async def test_metrics_and_registrations_only_for_allowed_addresses():
    """--metrics-allow: /metrics and /registrations answer 403 to other addresses (here,
    only 127.0.0.2 is allowed and the client comes from 127.0.0.1); /healthz is for all."""
    async with RelayServer(admin_allow=['127.0.0.2/32']) as server:
        [listener] = await server.start('ws://%s:0/' % HOST)
        for path in ('/metrics', '/registrations'):
            status, _, body = await http_get(listener.port, path)
            assert status == 403 and b'aiosip_ws' not in body
            status, _, _ = await http_get(listener.port, path, source='127.0.0.2')
            assert status == 200
        assert (await http_get(listener.port, '/healthz'))[0] == 200
