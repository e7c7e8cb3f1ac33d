"""``aiosip-ws options`` and ``message`` over udp://, tcp:// and tls:// (aiosip_ws.tools
.netprobe), against a small SIP server of the test on the project's UDP and TCP
transports: a MESSAGE is challenged (407), the probe answers it, the server checks the
credentials with a Digest implementation of its own (tests.support.digest)."""
from __future__ import annotations

import asyncio

import pytest

from aiosip_ws.core.codec import make_response
from aiosip_ws.core.digest import challenge_value, parse_credentials
from aiosip_ws.core.grammar import split_net_url
from aiosip_ws.tools.netprobe import NetProbe
from aiosip_ws.transport.tcp import listen_tcp
from aiosip_ws.transport.transactions import TransactionLayer
from aiosip_ws.transport.udp import listen_udp
from tests.support.cli import run_aiosip_ws
from tests.support.digest import independent_response
from tests.support.net import closed_port


class Registrar:
    """Answers OPTIONS 200; MESSAGE 407, then 200 for the right Proxy-Authorization."""

    def __init__(self):
        self.layer = TransactionLayer()
        self.messages = []

    def connection_made(self, conn):
        pass

    def connection_lost(self, conn, exc):
        self.layer.flow_lost(conn)

    def message_received(self, flow, message):
        if not message.is_request:
            return
        request = self.layer.request_received(flow, message)
        if request is None:
            return
        if request.method == 'MESSAGE':
            answer = self.check(request)
        else:
            answer = make_response(request, 200, to_tag='srv')
        self.layer.respond(answer, flow)

    def check(self, request):
        value = request.get('Proxy-Authorization')
        if value is None:
            return make_response(request, 407, to_tag='srv', headers=[(
                'Proxy-Authenticate', challenge_value('example.com', 'n0nce', 'MD5'))])
        fields = parse_credentials(value)
        if fields['response'] != independent_response(fields, 'MESSAGE', 'secret'):
            return make_response(request, 403, to_tag='srv')
        self.messages.append(request)
        return make_response(request, 200, to_tag='srv')


@pytest.fixture
async def registrar(certs):
    handler = Registrar()
    endpoint = await listen_udp('127.0.0.1', 0, handler)
    tcp = await listen_tcp('127.0.0.1', 0, handler)
    tls = await listen_tcp('127.0.0.1', 0, handler, ssl_context=certs.server_context())
    yield handler, {'udp': endpoint.local_addr[1], 'tcp': tcp.local_addr[1],
                    'tls': tls.local_addr[1]}
    handler.layer.close()
    endpoint.close()
    await endpoint.wait_closed()
    await tcp.close()
    await tls.close()


@pytest.mark.parametrize('scheme', ['udp', 'tcp', 'tls'])
async def test_options_and_an_authenticated_message(registrar, certs, scheme):
    handler, ports = registrar
    target = '%s://127.0.0.1:%d' % (scheme, ports[scheme])
    async with NetProbe(target, timeout=5, ssl_context=certs.client_context()) as probe:
        options = await probe.options()
        assert options.ok and options.request_uri == {
            'udp': 'sip:127.0.0.1:%d', 'tcp': 'sip:127.0.0.1:%d;transport=tcp',
            'tls': 'sips:127.0.0.1:%d'}[scheme] % ports[scheme]
        sent = await probe.message('sip:alice@example.com', 'sip:bob@example.com', 'hello',
                                   password='secret')
        assert sent.ok, sent.outcome()
        assert [status for status, _, _ in sent.responses] == [407, 200]
        assert sent.response.get('Via').startswith('SIP/2.0/%s 127.0.0.1:' % scheme.upper())
        wrong = await probe.message('sip:alice@example.com', 'sip:bob@example.com', 'x',
                                    password='wrong')
        assert wrong.status == 403
    [message] = handler.messages
    assert message.body == b'hello' and message.cseq[0] == 2
    assert 'received=127.0.0.1' in message.get('Via') or scheme != 'udp'


async def test_an_unanswered_udp_probe_times_out_and_bad_targets_are_usage_errors():
    async with NetProbe('udp://127.0.0.1:%d' % closed_port(), timeout=0.5) as probe:
        txn = await probe.options()
    assert not txn.ok and 'within 0.5 s' in txn.outcome()
    for target, message in (('udp://', 'with a host'), ('tcp://h:5060/path', 'has no path'),
                            ('tcp://h:99999', 'bad port')):
        with pytest.raises(Exception, match=message):
            split_net_url(target)
    done = await asyncio.to_thread(run_aiosip_ws, 'register', 'udp://127.0.0.1:5060', '--aor',
                                   'sip:a@example.com')
    assert done.returncode == 2 and 'work with options, message and bench' in done.stderr
    done = await asyncio.to_thread(run_aiosip_ws, 'options', 'tcp://127.0.0.1:%d' % closed_port(),
                                   '--timeout', '2')
    assert done.returncode == 1 and 'cannot connect' in done.stderr


@pytest.mark.parametrize('scheme', ['udp', 'tcp'])
async def test_bench_drives_serve_over_udp_and_tcp(scheme):
    """``aiosip-ws bench udp://`` / ``tcp://``: clients that register over UDP (or TCP) and
    message each other through serve's bridge, every MESSAGE answered by its callee."""
    import json

    from aiosip_ws.serve.relay import RelayServer
    server = RelayServer()
    _, net = await server.start('ws://127.0.0.1:0/', '%s://127.0.0.1:0' % scheme)
    try:
        done = await asyncio.to_thread(
            run_aiosip_ws, 'bench', net.bound_url, '--scenario', 'message', '--clients', '5',
            '--rate', '50', '--duration', '1', '--json', '--no-progress', timeout=60)
    finally:
        await server.close()
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report['answered'] == {'200': report['sent']} and report['sent'] >= 40
    assert report['requests_received'] == report['sent']


async def test_serve_listens_on_tls_and_answers_options_and_relays_a_message(certs):
    """``serve --listen tls://`` (its --tls-cert context): the probe over TLS gets 200 for
    OPTIONS, and a MESSAGE to a client registered over WebSocket is relayed to it."""
    from websockets.asyncio.client import connect

    from aiosip_ws.core.codec import serialize
    from aiosip_ws.options import ServerOptions
    from aiosip_ws.serve.relay import RelayServer
    from tests.support.sip import recv, register_raw
    server = RelayServer(server_options=ServerOptions(ssl=certs.server_context()))
    ws, tls = await server.start('ws://127.0.0.1:0/', 'tls://127.0.0.1:0')
    assert tls.bound_url.startswith('tls://127.0.0.1:')
    try:
        async with connect(ws.bound_url, subprotocols=['sip'], proxy=None) as bob:
            await register_raw(bob, 'bob')
            probe = NetProbe(tls.bound_url.replace('127.0.0.1', 'localhost'), timeout=5,
                             ssl_context=certs.client_context())
            async with probe:
                options = await probe.options()
                assert options.ok and options.request_uri.startswith('sips:localhost:')
                sending = asyncio.ensure_future(probe.message(
                    'sip:alice@example.com', 'sip:bob@example.com', 'over TLS'))
                got = await recv(bob)
                assert got.body == b'over TLS'
                assert got.get_all('Via')[1].startswith('SIP/2.0/TLS ')
                await bob.send(serialize(make_response(got, 200, to_tag='t1')).decode())
                assert (await sending).ok
    finally:
        await server.close()
