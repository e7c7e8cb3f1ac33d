"""The aiosip-ws client starting from a SIP URI alone: DNS discovery against dnsmasq, ending
in real connections to `aiosip-ws serve` (RFC 3263 + RFC 7118 5.5)."""
from __future__ import annotations

import asyncio

import pytest

from aiosip_ws import Application, DiscoveryError
from aiosip_ws.transport.discovery import Resolver
from tests.support.dnsmasq import Dnsmasq
from tests.support.net import closed_port


async def test_naptr_srv_a_to_serve_then_register_and_message(relay):
    """RFC 7118 §5.5: NAPTR SIP+D2W -> SRV -> A -> a real REGISTER and relayed MESSAGE."""
    server, url = relay
    port = int(url.rsplit(':', 1)[1].strip('/'))
    with Dnsmasq(naptr=[('disc.test', 10, 10, 's', 'SIP+D2W', '', '_sip._ws.disc.test')],
                 srv=[('_sip._ws.disc.test', 'edge.disc.test', port, 10, 1)],
                 hosts=[('edge.disc.test', '127.0.0.1')]) as dns:
        resolver = Resolver([dns.nameserver])
        alice, bob = Application(resolver=resolver), Application(resolver=resolver)
        inbox: asyncio.Queue = asyncio.Queue()

        async def on_message(dialog, msg):
            await inbox.put(msg)
            dialog.reply(msg, 200)

        bob.router.add_route('MESSAGE', on_message)
        try:
            for app, user in ((alice, 'alice'), (bob, 'bob')):
                aor = 'sip:%s@disc.test' % user
                dialog = await app.start_dialog(aor, aor, remote_addr='sip:disc.test')
                assert (await asyncio.wait_for(dialog.register(), 5)).status_code == 200
                [conn] = app.connections
                assert conn.url == 'ws://disc.test:%d/' % port     # Host: the SIP domain
            dialog = await alice.start_dialog('sip:alice@disc.test', 'sip:bob@disc.test',
                                              remote_addr='sip:disc.test')
            response = await asyncio.wait_for(dialog.send_message('MESSAGE', payload='found you'), 5)
            assert response.status_code == 200 and (await inbox.get()).payload == 'found you'
            assert len(alice.connections) == 1                 # RFC 5626 §4.3: the URI's connection reused
        finally:
            await alice.close()
            await bob.close()
        assert any('NAPTR' in q and 'disc.test' in q for q in dns.queries())


async def test_dead_first_target_client_uses_the_second(relay):
    """RFC 7118 §4.1, RFC 3263 4.3: the first SRV target refuses; the client connects to the second."""
    _, url = relay
    port = int(url.rsplit(':', 1)[1].strip('/'))
    with Dnsmasq(srv=[('_sip._ws.two.test', 'dead.two.test', closed_port(), 10, 1),
                      ('_sip._ws.two.test', 'live.two.test', port, 20, 1)],
                 hosts=[('dead.two.test', '127.0.0.1'), ('live.two.test', '127.0.0.1')]) as dns:
        app = Application(resolver=Resolver([dns.nameserver]))
        try:
            dialog = await app.start_dialog('sip:a@two.test', 'sip:a@two.test',
                                            remote_addr='sip:two.test;transport=ws')
            assert (await asyncio.wait_for(dialog.register(), 5)).status_code == 200
            [conn] = app.connections
            assert conn.remote_addr[1] == port
        finally:
            await app.close()


async def test_nxdomain_is_a_clear_error_from_the_client():
    with Dnsmasq(hosts=[('other.test', '127.0.0.1')]) as dns:
        app = Application(resolver=Resolver([dns.nameserver]))
        try:
            with pytest.raises(DiscoveryError, match='nxd.test'):
                await app.start_dialog('sip:a@nxd.test', 'sip:a@nxd.test', remote_addr='sip:nxd.test')
        finally:
            await app.close()
