"""The aiosip-ws client against Kamailio 5.6's websocket module, with digest auth, ws and wss.

Kamailio (started by the tests from tests/interop/kamailio/kamailio.cfg) is the
registrar; a JsSIP user agent registered on the same Kamailio is the other party.
"""
from __future__ import annotations

import asyncio

import pytest

from aiosip_ws import Application, ClientOptions
from tests.support.cli import run_aiosip_ws as run_cli
from tests.support.kamailio import kamailio as run_kamailio
from tests.support.net import free_port
from tests.support.node import NodeAgent

pytestmark = pytest.mark.interop


class Client:
    """An aiosip-ws user agent: REGISTERs, answers MESSAGEs, records them."""

    def __init__(self, url: str, user: str = 'alice', *, options: ClientOptions | None = None):
        self.url, self.aor = url, 'sip:%s@example.com' % user
        self.app = Application(client_options=options)
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.app.router.add_route('MESSAGE', self._on_message)

    async def _on_message(self, dialog, msg):
        await self.inbox.put(msg)
        dialog.reply(msg, 200)

    async def register(self, password: str = 'secret', expires: int = 120):
        self.registration = await self.app.start_dialog(self.aor, self.aor, remote_addr=self.url,
                                                        password=password)
        return await asyncio.wait_for(self.registration.register(expires=expires), 10)

    async def request(self, method: str, to: str, body: str | None = None):
        dialog = await self.app.start_dialog(self.aor, to, remote_addr=self.url, password='secret')
        return await asyncio.wait_for(dialog.send_message(
            method, payload=body, content_type='text/plain' if body else None), 10)

    async def close(self):
        await self.app.close()


async def test_register_with_digest_options_and_message_both_ways(
        kamailio_version, node_agents_ready, tmp_path):
    """D16 against a real registrar: qop=auth MD5; OPTIONS; MESSAGE to and from a JsSIP
    client on the same Kamailio; Kamailio's `SIP/2.0/WS  host` Via; its keep-alive pings."""
    with run_kamailio(tmp_path / 'k', ws_port=free_port(), keepalive=1) as kamailio:
        client = Client(kamailio.ws_url)
        try:
            response = await client.register()
            assert response.status_code == 200
            bindings = response.headers.getall('Contact')
            assert any(client.registration.protocol.via_host in b and 'transport=ws' in b
                       for b in bindings)
            assert 'qop=auth' in kamailio.log_text() and 'nc=00000001' in kamailio.log_text()

            options = await client.request('OPTIONS', 'sip:127.0.0.1:%d' % kamailio.ws_port)
            assert options.status_code == 200

            async with NodeAgent('jssip', url=kamailio.ws_url, aor='sip:bob@example.com',
                                 password='secret') as bob:
                await bob.register()
                response = await client.request('MESSAGE', 'sip:bob@example.com', 'hi JsSIP')
                assert response.status_code == 200
                assert (await bob.wait_event('message', timeout=10))['body'] == 'hi JsSIP'

                await bob.message('sip:alice@example.com', 'hi aiosip-ws')
                msg = await asyncio.wait_for(client.inbox.get(), 10)
                assert msg.payload == 'hi aiosip-ws'
                assert (await bob.wait_event('messageSent', timeout=10))['status'] == 200
                top = msg.raw.get_all('Via')[0]
                assert top.startswith('SIP/2.0/WS  127.0.0.1:')          # two spaces, parsed
                assert msg.raw.vias[0].transport == 'WS'

                # Kamailio pings idle links (keepalive=1 s): websockets answers, link stays up
                await asyncio.sleep(2.5)
                [conn] = client.app.connections
                assert conn.is_open
                response = await client.request('MESSAGE', 'sip:bob@example.com', 'after idle')
                assert response.status_code == 200
        finally:
            await client.close()


async def test_sha256_digest_against_kamailio(kamailio_version, tmp_path):
    """RFC 7616 SHA-256 against Kamailio's auth module (JsSIP and SIP.js only do MD5, so two
    aiosip-ws clients register and exchange a MESSAGE through Kamailio)."""
    with run_kamailio(tmp_path / 'k', ws_port=free_port(),
                      defines=('AUTH_ALGORITHM="SHA-256"',)) as kamailio:
        alice, bob = Client(kamailio.ws_url, 'alice'), Client(kamailio.ws_url, 'bob')
        try:
            assert (await alice.register()).status_code == 200
            assert (await bob.register()).status_code == 200
            assert 'algorithm=SHA-256' in kamailio.log_text()
            response = await alice.request('MESSAGE', 'sip:bob@example.com', 'sha-256 works')
            assert response.status_code == 200
            assert (await asyncio.wait_for(bob.inbox.get(), 10)).payload == 'sha-256 works'
        finally:
            await alice.close()
            await bob.close()


async def test_wrong_password_gets_the_final_401(kamailio_peer):
    client = Client(kamailio_peer.ws_url)
    try:
        response = await client.register(password='not-the-password')
        assert response.status_code == 401
    finally:
        await client.close()


async def test_client_over_wss_to_kamailio(kamailio_tls, certs, tmp_path):
    """wss: our client verifies Kamailio's certificate (test CA) and speaks WSS."""
    with run_kamailio(tmp_path / 'k', ws_port=free_port(), wss_port=free_port(),
                      cert=certs.cert, key=certs.key) as kamailio:
        import ssl
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        client = Client(kamailio.wss_url, options=ClientOptions(ssl=context))
        try:
            response = await client.register()
            assert response.status_code == 200
            [conn] = client.app.connections
            assert conn.via_transport == 'WSS'
            assert 'transport=ws' in response.headers.getall('Contact')[0]
            assert 'SIP/2.0/WSS ' in kamailio.log_text()
        finally:
            await client.close()


def test_the_options_command_probes_kamailio_without_a_sip_port(kamailio_version, tmp_path):
    """``aiosip-ws options ws://HOST:PORT/`` asks for sip:HOST:PORT;transport=ws, which
    Kamailio's ``uri == myself`` recognises although it has no listener on 5060."""
    with run_kamailio(tmp_path / 'k', ws_port=free_port()) as kamailio:
        result = run_cli('options', kamailio.ws_url, '--timeout', '5')
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'OPTIONS sip:127.0.0.1:%d;transport=ws -> 200 OK' % kamailio.ws_port in result.stdout


def test_the_options_command_probes_kamailio_over_udp_and_tcp(kamailio_version, tmp_path):
    """``aiosip-ws options udp://`` and ``tcp://``: the project's own UDP and TCP transports
    (and the transaction layer) against Kamailio's plain SIP listener."""
    sip_port = free_port()
    with run_kamailio(tmp_path / 'k', ws_port=free_port(), sip_port=sip_port) as kamailio:
        udp = run_cli('options', 'udp://127.0.0.1:%d' % sip_port, '--timeout', '5')
        tcp = run_cli('options', 'tcp://127.0.0.1:%d' % sip_port, '--timeout', '5')
        log = kamailio.log_text()
    assert udp.returncode == 0, udp.stdout + udp.stderr
    assert 'OPTIONS sip:127.0.0.1:%d -> 200 OK' % sip_port in udp.stdout
    assert 'UDP (no connection)' in udp.stdout
    assert tcp.returncode == 0, tcp.stdout + tcp.stderr
    assert 'OPTIONS sip:127.0.0.1:%d;transport=tcp -> 200 OK' % sip_port in tcp.stdout
    assert 'Via: SIP/2.0/UDP ' in udp.stdout and 'Via: SIP/2.0/TCP ' in tcp.stdout
    assert ';received=127.0.0.1' in udp.stdout or ';rport=' in udp.stdout
    assert 'OPTIONS' in log


async def test_a_message_over_udp_reaches_a_websocket_client_through_kamailio(kamailio_version,
                                                                             tmp_path):
    """``aiosip-ws message udp://`` with Kamailio asking for proxy authentication: the 407
    is answered over UDP and the MESSAGE reaches bob, registered over WebSocket."""
    sip_port = free_port()
    with run_kamailio(tmp_path / 'k', ws_port=free_port(), sip_port=sip_port,
                      proxy_auth=True) as kamailio:
        bob = Client(kamailio.ws_url, 'bob')
        try:
            assert (await bob.register()).status_code == 200
            sent = await asyncio.to_thread(
                run_cli, 'message', 'udp://127.0.0.1:%d' % sip_port, '--aor',
                'sip:alice@example.com', '--to', 'sip:bob@example.com', '--body', 'over UDP',
                '--password', 'secret', '--timeout', '5')
            assert sent.returncode == 0, sent.stdout + sent.stderr
            assert 'MESSAGE sip:bob@example.com -> 200 OK' in sent.stdout
            msg = await asyncio.wait_for(bob.inbox.get(), 5)
            assert msg.payload == 'over UDP'
            assert 'SIP/2.0/UDP' in ' '.join(msg.raw.get_all('Via'))
            assert '407' in kamailio.log_text() or 'Proxy-Authorization' in kamailio.log_text()
        finally:
            await bob.close()
