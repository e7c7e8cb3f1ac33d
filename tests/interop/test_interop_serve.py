"""Browser SIP stacks against `aiosip-ws serve`: JsSIP 3.13 and SIP.js 0.21 in Node, ws and wss.

Each scenario registers a JsSIP and a SIP.js user agent with a real `aiosip-ws serve`
process, exchanges MESSAGEs both ways through it, un-registers, and checks what
crossed the wire (status codes, bodies, Via transport, Contact parameters).
"""
from __future__ import annotations

import asyncio
import re

import pytest

from tests.support.node import NodeAgent

pytestmark = pytest.mark.interop


def first_line(data: str) -> str:
    return data.split('\r\n', 1)[0]


def header(data: str, name: str) -> list[str]:
    return re.findall(r'(?im)^%s\s*:\s*(.*?)\r?$' % re.escape(name), data)


@pytest.mark.parametrize('scheme', ['ws', 'wss'])
async def test_jssip_and_sipjs_register_and_message_through_serve(
        scheme, serve_process, certs, node_agents_ready):
    """RFC 7118 §4.1 (both stacks negotiate `sip`), §5.1 (Via WS/WSS), §5.2 (Contact
    transport=ws over wss too), Appendix B.1 (delivery over the registered connection)."""
    args = ['--listen', '%s://127.0.0.1:0/' % scheme, '--log-level', 'DEBUG']
    env = {}
    if scheme == 'wss':
        args += ['--tls-cert', str(certs.cert), '--tls-key', str(certs.key)]
        env['NODE_EXTRA_CA_CERTS'] = str(certs.ca_cert)
    process = serve_process(*args)
    [url] = process.urls
    async with NodeAgent('jssip', url=url, aor='sip:alice@example.com', env=env) as alice, \
            NodeAgent('sipjs', url=url, aor='sip:bob@example.com', env=env) as bob:
        await alice.register()
        await bob.register()

        # what the stacks sent, and that our server accepted their quirks
        [jssip_register] = alice.sip('out', 'REGISTER')[:1]
        contact = header(jssip_register, 'Contact')[0]
        assert 'reg-id=1' in contact and '+sip.instance="<urn:uuid:' in contact
        assert header(jssip_register, 'Via')[0].startswith('SIP/2.0/%s ' % scheme.upper())
        assert 'transport=ws' in contact                         # RFC 7118 §5.2, also over wss
        [sipjs_register] = bob.sip('out', 'REGISTER')[:1]
        assert header(sipjs_register, 'CSeq')[0] == '2 REGISTER'   # SIP.js starts at CSeq 2
        for agent in (alice, bob):
            [ok] = agent.sip('in', 'SIP/2.0 200')[:1]
            assert 'expires=' in header(ok, 'Contact')[0]

        await alice.message('sip:bob@example.com', 'hello from JsSIP ☎')
        got = await bob.wait_event('message', timeout=10)
        assert got['body'] == 'hello from JsSIP ☎' and 'alice@example.com' in got['from']
        sent = await alice.wait_event('messageSent', timeout=10)
        assert sent['status'] == 200

        await bob.message('sip:alice@example.com', 'and back from SIP.js')
        got = await alice.wait_event('message', timeout=10)
        assert got['body'] == 'and back from SIP.js'
        assert (await bob.wait_event('messageSent', timeout=10))['status'] == 200
        [relayed] = alice.sip('in', 'MESSAGE')[:1]
        vias = header(relayed, 'Via')
        assert vias[0].startswith('SIP/2.0/%s 127.0.0.1:' % scheme.upper())   # our own Via

        await alice.unregister()
        await bob.message('sip:alice@example.com', 'anyone there?')
        failed = await bob.wait_event('messageFailed', timeout=10)
        assert failed['status'] == 404
        await bob.unregister()
    code, out, err = await asyncio.get_running_loop().run_in_executor(None, process.stop)
    assert code == 0 and 'stopped cleanly' in out
    assert 'malformed' not in err and 'Traceback' not in err


async def test_crlf_ping_from_serve_and_pong_swallowed(serve_process, node_agents_ready):
    """RFC 7118 §6, RFC 5626 §4.4 from the server side: serve pings JsSIP with CRLF CRLF, JsSIP
    answers CRLF, and the pong is swallowed: no SIP error, the flow stays up."""
    process = serve_process('--listen', 'ws://127.0.0.1:0/', '--crlf-ping-interval', '0.5',
                            '--log-level', 'DEBUG')
    [url] = process.urls
    async with NodeAgent('jssip', url=url, aor='sip:carol@example.com') as carol, \
            NodeAgent('jssip', url=url, aor='sip:dave@example.com') as dave:
        await carol.register()
        await dave.register()
        for _ in range(60):
            if carol.raw('in').count('\r\n\r\n') >= 3:
                break
            await asyncio.sleep(0.1)
        assert carol.raw('in').count('\r\n\r\n') >= 3
        assert '\r\n' in carol.raw('out')
        await carol.message('sip:dave@example.com', 'still here')
        assert (await dave.wait_event('message', timeout=10))['body'] == 'still here'
        assert 'disconnected' not in carol.event_names()
    code, _, err = await asyncio.get_running_loop().run_in_executor(None, process.stop)
    assert code == 0
    assert 'received CRLF pong' in err
    assert 'no CRLF pong' not in err and 'malformed' not in err


async def test_jssip_unregister_all_removes_its_bindings_with_contact_star(
        serve_process, node_agents_ready):
    """JsSIP's ``unregister({all: true})`` sends ``Contact: *`` with ``Expires: 0`` (RFC 3261
    §10.3 step 6): serve answers 200 and alice is gone; without authentication only the
    bindings of JsSIP's own connection are removed, so a second device of alice stays."""
    process = serve_process('--listen', 'ws://127.0.0.1:0/')
    [url] = process.urls
    async with NodeAgent('jssip', url=url, aor='sip:alice@example.com') as alice, \
            NodeAgent('sipjs', url=url, aor='sip:alice@example.com') as second, \
            NodeAgent('sipjs', url=url, aor='sip:bob@example.com') as bob:
        await alice.register()
        await second.register()
        await alice.unregister(all=True)
        [star] = [m for m in alice.sip('out', 'REGISTER') if 'Contact: *' in m]
        assert 'Expires: 0' in star
        [answer] = alice.sip('in', 'SIP/2.0')[-1:]
        assert answer.startswith('SIP/2.0 200')
        await bob.message('sip:alice@example.com', 'second device?')
        got = await second.wait_event('message', timeout=10)
        assert got['body'] == 'second device?'
        await second.unregister()
        await bob.message('sip:alice@example.com', 'anyone?')
        assert (await bob.wait_event('messageFailed', timeout=10))['status'] == 404
    code, _, err = await asyncio.get_running_loop().run_in_executor(None, process.stop)
    assert code == 0 and 'Traceback' not in err


async def test_jssip_and_sipjs_authenticate_register_and_message_through_serve(
        serve_process, users_file, node_agents_ready):
    """``serve --users``: both stacks answer the 401 (the last challenge, MD5) and the 407
    of their MESSAGEs, and messages cross both ways, to both devices of alice (JsSIP and
    SIP.js registered as one user: forking, RFC 3261 §16.6); a wrong password ends with a final
    401 after one retry; with authentication JsSIP's ``Contact: *`` removes every binding
    of the AOR, the second device's too (RFC 3261 §10.3 step 6)."""
    process = serve_process('--listen', 'ws://127.0.0.1:0/', '--users', str(users_file),
                            '--realm', 'example.com')
    [url] = process.urls
    async with NodeAgent('jssip', url=url, aor='sip:alice@example.com', password='secret') \
            as alice, \
            NodeAgent('sipjs', url=url, aor='sip:bob@example.com', password='secret') as bob, \
            NodeAgent('sipjs', url=url, aor='sip:alice@example.com', password='secret') \
            as second:
        for agent in (alice, bob, second):
            await agent.register()
            [challenge] = agent.sip('in', 'SIP/2.0 401')[:1]
            offered = header(challenge, 'WWW-Authenticate')
            assert 'algorithm=SHA-256' in offered[0] and 'algorithm=MD5' in offered[-1]
            assert 'algorithm=MD5' in header(agent.sip('out', 'REGISTER')[1], 'Authorization')[0]

        await alice.message('sip:bob@example.com', 'authenticated hello')
        assert (await bob.wait_event('message', timeout=10))['body'] == 'authenticated hello'
        assert (await alice.wait_event('messageSent', timeout=10))['status'] == 200
        assert alice.sip('in', 'SIP/2.0 407')
        [delivered] = [m for m in bob.sip('in', 'MESSAGE')][-1:]
        assert not header(delivered, 'Proxy-Authorization')      # consumed by serve
        await bob.message('sip:alice@example.com', 'and back')    # forked to both devices
        got = [await alice.wait_event('message', timeout=10),
               await second.wait_event('message', timeout=10)]
        assert [g['body'] for g in got] == ['and back', 'and back']
        assert (await bob.wait_event('messageSent', timeout=10))['status'] == 200

        await alice.unregister(all=True)
        await bob.message('sip:alice@example.com', 'anyone?')
        assert (await bob.wait_event('messageFailed', timeout=10))['status'] == 404

    async with NodeAgent('jssip', url=url, aor='sip:bob@example.com', password='wrong') as bad:
        await bad.send(cmd='register')
        failed = await bad.wait_event('registrationFailed', timeout=10)
        assert failed['status'] == 401
        assert len(bad.sip('out', 'REGISTER')) == 2               # one retry, no loop
    code, _, err = await asyncio.get_running_loop().run_in_executor(None, process.stop)
    assert code == 0 and 'Traceback' not in err
    assert 'authentication failed (wrong password) for bob' in err
