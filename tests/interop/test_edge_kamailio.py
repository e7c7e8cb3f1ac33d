"""``aiosip-ws serve --registrar`` as an RFC 5626 edge in front of Kamailio (its registrar
storing Path: ``use_path``, ``path_mode`` 0), over UDP: JsSIP and SIP.js register through
the edge (Kamailio's 401 answered through it), MESSAGE goes both ways between them and an
aiosip-ws client registered on Kamailio itself, and once JsSIP's connection is gone
Kamailio's MESSAGE to it gets the edge's 430 Flow Failed."""
from __future__ import annotations

import asyncio

import pytest

from tests.interop.test_interop_kamailio import Client
from tests.support.kamailio import kamailio as run_kamailio
from tests.support.net import free_port
from tests.support.node import NodeAgent

pytestmark = pytest.mark.interop


async def test_jssip_behind_the_edge_and_a_client_on_kamailio_message_each_other(
        kamailio_version, node_agents_ready, serve_process, tmp_path):
    sip_port = free_port()
    with run_kamailio(tmp_path / 'k', ws_port=free_port(), sip_port=sip_port,
                      defines=('WITH_PATH',)) as kamailio:
        edge = serve_process('--listen', 'ws://127.0.0.1:0/', '--listen', 'udp://127.0.0.1:0',
                             '--registrar', 'sip:127.0.0.1:%d' % sip_port,
                             '--flow-secret', 'edges share this')
        ws_url, udp_url = edge.urls
        assert udp_url.startswith('udp://127.0.0.1:')
        alice = Client(kamailio.ws_url, 'alice')
        try:
            assert (await alice.register()).status_code == 200
            async with NodeAgent('jssip', url=ws_url, aor='sip:bob@example.com',
                                 password='secret') as bob:
                assert (await bob.register())['status'] == 200      # 401 answered via the edge
                log = kamailio.log_text()
                assert 'Path: <sip:' in log and ';lr;ob>' in log     # JsSIP asks for Outbound

                response = await alice.request('MESSAGE', 'sip:bob@example.com', 'to the edge')
                assert response.status_code == 200
                assert (await bob.wait_event('message', timeout=10))['body'] == 'to the edge'

                await bob.message('sip:alice@example.com', 'from behind the edge')
                msg = await asyncio.wait_for(alice.inbox.get(), 10)
                assert msg.payload == 'from behind the edge'
                assert (await bob.wait_event('messageSent', timeout=10))['status'] == 200

                async with NodeAgent('sipjs', url=ws_url, aor='sip:carol@example.com',
                                     password='secret') as carol:
                    await carol.register()                      # (SIP.js reports no status)
                    response = await alice.request('MESSAGE', 'sip:carol@example.com', 'SIP.js?')
                    assert response.status_code == 200
                    assert (await carol.wait_event('message', timeout=10))['body'] == 'SIP.js?'
                    await carol.message('sip:bob@example.com', 'edge to edge')  # up and back
                    assert (await bob.wait_event('message', timeout=10))['body'] == 'edge to edge'
                bob.proc.kill()               # gone without un-registering: Kamailio keeps it
                await bob.proc.wait()
            await asyncio.sleep(0.5)                                  # bob's flow is gone
            response = await alice.request('MESSAGE', 'sip:bob@example.com', 'too late')
            assert response.status_code == 430
        finally:
            await alice.close()
    code, _, err = await asyncio.get_running_loop().run_in_executor(None, edge.stop)
    assert code == 0 and 'Traceback' not in err
