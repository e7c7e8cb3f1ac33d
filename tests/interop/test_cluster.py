"""Two serve nodes on one real Redis (Debian's redis-server on loopback): bindings shared,
requests forwarded to the node that holds the callee's connection and the responses
back, forking over both nodes with the CANCEL crossing, REGISTERs applied atomically
under contention, bindings deleted with their connection, and a Redis outage: each node
keeps serving its own clients, 503 for the others, bindings published again after."""
from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from aiosip_ws.core.codec import parse
from aiosip_ws.serve.registrar import Registrar
from aiosip_ws.serve.relay import RelayServer
from tests.support.sip import (
    answer,
    answered_here_cancelled_there,
    invite,
    message,
    quiet,
    recv,
    register_device,
    register_raw,
)

pytestmark = pytest.mark.interop           # a real Redis: once, on one Python

redis_async = pytest.importorskip('redis.asyncio')
HEARTBEAT = 0.2


async def start_node(redis_server, name: str, **options) -> RelayServer:
    """A serve node called ``name`` on ws://127.0.0.1, heart-beating every HEARTBEAT s."""
    node = RelayServer(redis_url=redis_server.url, node_id=name, **options)
    node.cluster.heartbeat = HEARTBEAT
    await node.start('ws://127.0.0.1:0/')
    return node


@pytest.fixture
async def nodes(redis_server):
    """Nodes a and b on one Redis: (node, its ws:// URL) each."""
    started = []
    for name in ('a', 'b'):
        node = await start_node(redis_server, name, registrar=Registrar(max_contacts=10))
        started.append((node, node.listeners[0].bound_url))
    yield started
    for node, _ in started:
        await node.close()


def ws(url: str, ssl=None):
    return connect(url, subprotocols=['sip'], proxy=None, open_timeout=5, ssl=ssl)


async def keys(redis_server, pattern: str = 'aiosip-ws:*') -> list[str]:
    client = redis_async.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        return sorted(await client.keys(pattern))
    finally:
        await client.aclose()


async def test_a_message_crosses_nodes_both_ways_and_bindings_are_readable_in_redis(
        nodes, redis_server):
    (a, url_a), (b, url_b) = nodes
    async with ws(url_a) as alice, ws(url_b) as bob:
        alice_host = await register_raw(alice, 'alice')
        bob_host = await register_device(bob, 'bob', 'desk')
        await alice.send(message(alice_host, 'over the bus'))
        got = await recv(bob)                          # written by node b
        assert got.method == 'MESSAGE' and got.body == b'over the bus'
        assert got.vias[0].branch.endswith('.a')     # relayed by a: its transaction
        await answer(bob, got, 200, 'b1')
        ok = await recv(alice)
        assert ok.status == 200 and ok.get('To').endswith('tag=b1')
        # and back: alice's binding is on a
        await bob.send(message(bob_host, 'and back').replace('sip:bob@example.com SIP',
                                                             'sip:alice@example.com SIP'))
        back = await recv(alice)
        assert back.body == b'and back'
        await answer(alice, back, 200, 'a9')
        assert (await recv(bob)).status == 200

        client = redis_async.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            [binding] = await client.keys('aiosip-ws:binding:sip:bob@example.com:*')
            fields = await client.hgetall(binding)
            assert fields['node'] == 'b' and fields['contact'] == '<sip:bob@%s;transport=ws>' % bob_host
            assert 0 < await client.pttl(binding) <= 60_000
            assert await client.zcard('aiosip-ws:aor:sip:bob@example.com') == 1
        finally:
            await client.aclose()
    for _ in range(100):                              # both closed: their bindings go
        if not await keys(redis_server, 'aiosip-ws:binding:*'):
            break
        await asyncio.sleep(0.02)
    assert await keys(redis_server, 'aiosip-ws:binding:*') == []


async def test_an_invite_forks_over_both_nodes_and_the_cancel_crosses(nodes):
    """bob's laptop on node b, his phone on node a with the caller: both ring; the phone
    answers; the laptop gets serve's CANCEL over the bus, its 200 and 487 come back and
    node a ACKs the 487 through node b."""
    (a, url_a), (b, url_b) = nodes
    async with ws(url_a) as caller, ws(url_b) as laptop, ws(url_a) as phone:
        caller_host = await register_raw(caller, 'alice')
        await register_device(laptop, 'bob', 'laptop')
        phone_host = await register_device(phone, 'bob', 'phone')
        await caller.send(invite(caller_host))
        assert (await recv(caller)).status == 100
        to_laptop, to_phone = await recv(laptop), await recv(phone)
        assert to_laptop.get('Record-Route').startswith('<sip:b@')      # names the node
        assert to_phone.get('Record-Route').startswith('<sip:a@')
        await answer(laptop, to_laptop, 180, 'l')
        assert (await recv(caller)).status == 180
        await answered_here_cancelled_there(caller, phone, to_phone, phone_host, laptop, to_laptop)
        await quiet(caller)
        assert not len(a.transactions) and not len(b.transactions)


async def test_concurrent_registers_through_two_nodes_apply_as_if_one_after_the_other(
        nodes, redis_server):
    """100 REGISTERs for one AOR at once, 50 through each node, each adding its own
    Contact, with at most 10 bindings per AOR: exactly 10 get 200 and Redis holds those
    10, as applying them one after the other would (without atomicity the cap would be
    overrun)."""
    (a, url_a), (b, url_b) = nodes
    async with ws(url_a) as one, ws(url_b) as two:
        def register(n: int) -> str:
            host = 'dev%d.invalid' % n
            return ('REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKc%d\r\n'
                    'From: <sip:carol@example.com>;tag=c%d\r\nTo: <sip:carol@example.com>\r\n'
                    'Call-ID: race-%d\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n'
                    'Contact: <sip:carol@%s;transport=ws>\r\nExpires: 60\r\n\r\n'
                    % (host, n, n, n, host))
        await asyncio.gather(*(one.send(register(n)) for n in range(0, 100, 2)),
                             *(two.send(register(n)) for n in range(1, 100, 2)))
        answers = [parse(await asyncio.wait_for(conn.recv(), 20)) for conn in (one, two)
                   for _ in range(50)]
        accepted = {a.get('Call-ID') for a in answers if a.status == 200}
        assert len(accepted) == 10
        assert {a.status for a in answers} == {200, 403}
        client = redis_async.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            stored = set()
            for key in await client.keys('aiosip-ws:binding:sip:carol@example.com:*'):
                stored.add(await client.hget(key, 'call_id'))
        finally:
            await client.aclose()
        assert stored == accepted


async def test_redis_down_each_node_serves_its_own_and_republishes_when_back(
        nodes, redis_server):
    (a, url_a), (b, url_b) = nodes
    async with ws(url_a) as alice, ws(url_b) as bob, ws(url_a) as dave:
        alice_host = await register_raw(alice, 'alice')
        await register_device(bob, 'bob', 'desk')
        await register_device(dave, 'dave', 'desk')
        redis_server.stop()
        await alice.send(message(alice_host, 'to bob on b'))
        busy = await recv(alice)
        assert busy.status == 503 and busy.get('Retry-After')
        await alice.send(message(alice_host, 'to dave on a').replace(
            'sip:bob@example.com SIP', 'sip:dave@example.com SIP').replace('msg-1', 'msg-2'))
        got = await recv(dave)
        assert got.body == b'to dave on a'                 # a's own bindings still work
        await answer(dave, got, 200, 'd')
        assert (await recv(alice)).status == 200
        assert a.cluster.degraded
        async def stored_aors(expected: set[str]) -> set[str]:
            for _ in range(150):
                found = {k.split(':')[3].split('@')[0]
                         for k in await keys(redis_server, 'aiosip-ws:binding:*')}
                if found == expected:
                    break
                await asyncio.sleep(0.02)
            return found

        async with ws(url_a) as eve:                       # a REGISTER while Redis is away:
            await register_device(eve, 'eve', 'desk')      # 200, into a's memory
            redis_server.start()                           # empty: nothing persisted
            # the first Redis operation that works again (a lookup here, b's heartbeat)
            # makes each node publish its bindings again, eve's too
            assert await a.cluster.lookup('sip:nobody@example.com') == []
            assert await stored_aors({'alice', 'bob', 'dave', 'eve'}) == {'alice', 'bob', 'dave',
                                                                          'eve'}
        assert await stored_aors({'alice', 'bob', 'dave'}) == {'alice', 'bob', 'dave'}  # eve left
        assert not a.cluster.degraded and not b.cluster.degraded
        client = redis_async.Redis.from_url(redis_server.url, decode_responses=True)
        try:                         # b subscribed again (Pub/Sub does not keep messages)
            for _ in range(100):
                if (await client.pubsub_numsub('aiosip-ws:node:b'))[0][1]:
                    break
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        await alice.send(message(alice_host, 'bob again').replace('msg-1', 'msg-4'))
        got = await recv(bob)                              # across nodes again
        assert got.body == b'bob again'
        await answer(bob, got, 200, 'b')
        assert (await recv(alice)).status == 200


async def test_the_bindings_of_a_silent_or_restarted_node_are_ignored_and_purged(
        nodes, redis_server):
    """A node that stops heart-beating (its process frozen or killed) loses its bindings
    for the others within 3 heartbeats, and they are purged; a node started again under the
    same name has a new incarnation, so the bindings of its earlier start are purged too."""
    (a, url_a), (b, url_b) = nodes
    async with ws(url_b) as bob, ws(url_b) as carol:
        await register_device(bob, 'bob', 'desk')
        [seen] = await a.cluster.lookup('sip:bob@example.com')
        assert seen.connection.node == 'b'
        b.cluster._tasks[2].cancel()                      # b's heartbeats stop
        await asyncio.sleep(HEARTBEAT * 3 + 0.2)
        assert await a.cluster.lookup('sip:bob@example.com') == []
        assert await keys(redis_server, 'aiosip-ws:binding:sip:bob@*') == []

        await register_device(carol, 'carol', 'desk')   # made by the old b, now stale
        restarted = await start_node(redis_server, 'b')   # a new 'b'
        try:
            assert await a.cluster.lookup('sip:carol@example.com') == []
            assert await keys(redis_server, 'aiosip-ws:binding:sip:carol@*') == []
        finally:
            await restarted.close()


async def test_three_serve_processes_jssip_and_sipjs_message_both_ways(
        serve_process, redis_server, node_agents_ready):
    """Three `aiosip-ws serve --redis URL --node-id NAME` processes: JsSIP registered on
    the first and the third, SIP.js on the second, MESSAGEs both ways through Redis."""
    from tests.support.node import NodeAgent
    one, two, three = (serve_process('--listen', 'ws://127.0.0.1:0/', '--redis',
                                     redis_server.url, '--node-id', name)
                       for name in ('one', 'two', 'three'))
    async with NodeAgent('jssip', url=one.urls[0], aor='sip:alice@example.com') as alice, \
            NodeAgent('sipjs', url=two.urls[0], aor='sip:bob@example.com') as bob, \
            NodeAgent('jssip', url=three.urls[0], aor='sip:carol@example.com') as carol:
        for agent in (alice, bob, carol):
            await agent.register()
        await alice.message('sip:bob@example.com', 'from node one')
        assert (await bob.wait_event('message', timeout=10))['body'] == 'from node one'
        assert (await alice.wait_event('messageSent', timeout=10))['status'] == 200
        await bob.message('sip:alice@example.com', 'from node two')
        assert (await alice.wait_event('message', timeout=10))['body'] == 'from node two'
        await carol.message('sip:bob@example.com', 'from node three')
        assert (await bob.wait_event('message', timeout=10))['body'] == 'from node three'
    for process in (one, two, three):
        code, _, err = await asyncio.get_running_loop().run_in_executor(None, process.stop)
        assert code == 0 and 'Traceback' not in err
        assert 'cluster node' in err


async def test_a_call_between_nodes_acks_byes_and_reinvites_both_ways(nodes, redis_server):
    """alice on node a calls bob on node b: the ACK of the 2xx, a re-INVITE and the BYE
    find the other side's connection through its Contact host in Redis
    (``aiosip-ws:contact:<host>``), whichever node the request lands on; responses go back
    to the node that relayed the request; hosts are released with their connection."""
    (a, url_a), (b, url_b) = nodes
    async with ws(url_a) as alice, ws(url_b) as bob:
        alice_host = await register_raw(alice, 'alice')
        bob_host = await register_device(bob, 'bob', 'desk')
        await alice.send(invite(alice_host))
        assert (await recv(alice)).status == 100
        offer = await recv(bob)
        await answer(bob, offer, 200, 'b',
                     headers=[('Contact', '<sip:bob@%s;transport=ws>' % bob_host)])
        assert (await recv(alice)).status == 200

        def in_dialog(method: str, cseq: int, target: str, via: str, caller: bool) -> str:
            ends = ('From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b'
                    if caller else
                    'From: <sip:bob@example.com>;tag=b\r\nTo: <sip:alice@example.com>;tag=a1')
            return ('%s sip:%s;transport=ws SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bK%s%d\r\n'
                    '%s\r\nCall-ID: call-1\r\nCSeq: %d %s\r\nMax-Forwards: 70\r\n\r\n'
                    % (method, target, via, method.lower(), cseq, ends, cseq, method))

        await alice.send(in_dialog('ACK', 10, 'bob@' + bob_host, alice_host, True))
        assert (await recv(bob)).method == 'ACK'                       # a -> Redis -> b
        await alice.send(in_dialog('INVITE', 11, 'bob@' + bob_host, alice_host, True))
        reinvite = await recv(bob)
        assert reinvite.method == 'INVITE' and reinvite.cseq == (11, 'INVITE')
        await answer(bob, reinvite, 200, 'b')
        assert (await recv(alice)).status == 200
        await bob.send(in_dialog('BYE', 1, 'alice@' + alice_host, bob_host, False))
        bye = await recv(alice)                                        # b -> Redis -> a
        assert bye.method == 'BYE'
        await answer(alice, bye, 200, 'a1')
        assert (await recv(bob)).status == 200
        assert sorted(await keys(redis_server, 'aiosip-ws:contact:*')) == [
            'aiosip-ws:contact:' + alice_host, 'aiosip-ws:contact:' + bob_host]
    for _ in range(100):
        if not await keys(redis_server, 'aiosip-ws:contact:*'):
            break
        await asyncio.sleep(0.02)
    assert await keys(redis_server, 'aiosip-ws:contact:*') == []


async def test_a_nonce_count_accepted_by_one_node_is_a_replay_on_the_other(redis_server):
    """Digest in a cluster: the nodes share the nonce secret (so each accepts the other's
    nonces) and the highest nc per nonce (``aiosip-ws:nc:<nonce>``): the REGISTER that
    node a accepted, replayed as it is to node b, is refused there; the next nc passes."""
    import hashlib

    from aiosip_ws.serve.auth import DigestAuthenticator, UserFile
    from tests.support.digest import digest_authorization
    ha1 = hashlib.md5(b'alice:example.com:wonderland').hexdigest()
    started = []
    for name in ('a', 'b'):
        auth = DigestAuthenticator(UserFile.parse('alice:example.com:%s' % ha1), 'example.com',
                                   nonce_secret=b'the shared secret')
        started.append(await start_node(redis_server, name, auth=auth))
    try:
        a, b = started
        register = ('REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS r.invalid;branch=z9hG4bK%s\r\n'
                    'From: <sip:alice@example.com>;tag=r\r\nTo: <sip:alice@example.com>\r\n'
                    'Call-ID: nc-1\r\nCSeq: %d REGISTER\r\nMax-Forwards: 70\r\n'
                    'Contact: <sip:alice@r.invalid;transport=ws>\r\nExpires: 60\r\n%s\r\n')
        async with ws(a.listeners[0].bound_url) as one, ws(b.listeners[0].bound_url) as two:
            await one.send(register % ('c1', 1, ''))
            challenge = await recv(one)
            assert challenge.status == 401

            def answer_with(nc: int) -> str:
                return digest_authorization(challenge.get_all('WWW-Authenticate')[-1],
                                            method='REGISTER', uri='sip:example.com',
                                            username='alice', password='wonderland', nc=nc) + '\r\n'
            await one.send(register % ('c2', 2, answer_with(1)))
            assert (await recv(one)).status == 200
            await two.send(register % ('c3', 3, answer_with(1)))      # the same nc, node b
            assert (await recv(two)).status == 401
            await two.send(register % ('c4', 4, answer_with(2)))
            assert (await recv(two)).status == 200
    finally:
        for node in started:
            await node.close()


async def test_serve_workers_share_a_port_and_meet_in_redis(serve_process, redis_server, certs):
    """``serve --workers 2 --redis URL``: one wss:// port, two processes (each a node,
    t-w1 and t-w2); 16 clients spread over both; a MESSAGE between clients of different
    workers; /metrics counts the connections of both, whichever answers; SIGHUP reloads
    the certificate in both, SIGUSR1 drains both; SIGTERM stops both cleanly."""
    import os
    import signal

    import redis as redis_sync

    from tests.support.net import http_get
    process = serve_process('--listen', 'wss://127.0.0.1:0/', '--workers', '2', '--redis',
                            redis_server.url, '--node-id', 't', '--drain-window', '0.5',
                            '--tls-cert', str(certs.cert), '--tls-key', str(certs.key))
    [line] = process.urls
    assert '(2 workers: pids ' in line
    url = line.split(' ')[0]
    first_pid = int(line.split('pids ')[1].split(',')[0])
    port = int(url.rsplit(':', 1)[1].strip('/'))
    trust = certs.client_context()
    clients = [await ws(url, ssl=trust).__aenter__() for _ in range(16)]
    try:
        for n, client in enumerate(clients):
            await register_device(client, 'user%d' % n, 'd')
        store = redis_sync.Redis.from_url(redis_server.url, decode_responses=True)
        nodes = {store.hget(key, 'node') for key in store.keys('aiosip-ws:binding:*')}
        assert nodes == {'t-w1', 't-w2'}
        by_node = {store.hget(key, 'node'): key.split(':')[3].split('@')[0]
                   for key in store.keys('aiosip-ws:binding:*')}
        sender = clients[int(by_node['t-w1'][4:])]
        await sender.send(message('user%s-d.invalid' % by_node['t-w1'][4:], 'across workers')
                          .replace('sip:bob@example.com SIP', 'sip:%s@example.com SIP'
                                   % by_node['t-w2']))
        got = await recv(clients[int(by_node['t-w2'][4:])])
        assert got.body == b'across workers'
        for _ in range(3):                     # whichever worker answers: both counted
            status, _, body = await http_get(port, '/metrics', ssl=trust)
            assert status == 200
            assert b'aiosip_ws_connections_opened_total 16.0' in body
        # the per-message counters too: each worker adds its counts every second
        for _ in range(30):
            status, _, body = await http_get(port, '/metrics', ssl=trust)
            if b'aiosip_ws_sip_requests_total{method="REGISTER"} 16.0' in body:
                break
            await asyncio.sleep(0.2)
        assert b'aiosip_ws_sip_requests_total{method="REGISTER"} 16.0' in body
        # worker 1 killed: its clients' bindings are ignored at once (the worker that
        # takes its place has a new incarnation), the other worker's go on working
        before = store.get('aiosip-ws:alive:t-w1')
        os.kill(first_pid, signal.SIGKILL)
        for _ in range(100):
            if store.get('aiosip-ws:alive:t-w1') not in (None, before):
                break
            await asyncio.sleep(0.1)
        assert store.get('aiosip-ws:alive:t-w1') not in (None, before)   # started again
        async with ws(url, ssl=trust) as probe:
            probe_host = await register_raw(probe, 'probe')
            target = by_node['t-w2']
            await probe.send(message(probe_host, 'still here').replace(
                'sip:bob@example.com SIP', 'sip:%s@example.com SIP' % target))
            got = await recv(clients[int(target[4:])])
            assert got.body == b'still here'
            await probe.send(message(probe_host, 'gone?').replace(
                'sip:bob@example.com SIP', 'sip:%s@example.com SIP' % by_node['t-w1'])
                .replace('msg-1', 'msg-2'))
            assert (await recv(probe)).status == 404
            assert store.keys('aiosip-ws:binding:sip:%s@*' % by_node['t-w1']) == []  # purged
        process.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        process.proc.send_signal(signal.SIGUSR1)
        for client in clients:
            await asyncio.wait_for(client.wait_closed(), 10)
    finally:
        for client in clients:
            await client.close()
    code, out, err = await asyncio.get_running_loop().run_in_executor(None, process.stop)
    assert code == 0, err
    assert err.count('draining: closing') == 2
    assert err.count('SIGHUP: reloaded the TLS certificate') == 2
    assert 'worker 1 exited unexpectedly (status -9): starting it again' in err
    assert 'stopped cleanly' in out and 'Traceback' not in err


async def test_lost_on_the_bus_is_408_and_a_client_gone_is_480_never_a_hang(redis_server):
    """A request published to a node that does not hear it ends by Timer F (408, here
    after 1 s); one that reaches the node after its client left is answered ``gone`` by
    that node at once (480)."""
    from aiosip_ws.options import ServerOptions
    started = []
    for name in ('a', 'b'):
        started.append(await start_node(redis_server, name,
                                        server_options=ServerOptions(transaction_timeout=1.0)))
    a, b = started
    try:
        async with ws(a.listeners[0].bound_url) as alice, ws(b.listeners[0].bound_url) as bob:
            alice_host = await register_raw(alice, 'alice')
            await register_device(bob, 'bob', 'desk')
            [conn] = b.connections
            held = b.cluster.local.pop(conn.flow_state.cluster_id)   # b "lost" the connection
            loop = asyncio.get_running_loop()
            began = loop.time()
            await alice.send(message(alice_host, 'anyone?'))
            assert (await recv(alice)).status == 480
            assert loop.time() - began < 0.5                      # at once, not Timer F
            b.cluster.local[conn.flow_state.cluster_id] = held
            b.cluster._received = lambda data: None              # the bus loses b's messages
            began = loop.time()
            await alice.send(message(alice_host, 'lost').replace('msg-1', 'msg-2'))
            assert (await recv(alice)).status == 408
            assert 0.9 < loop.time() - began < 3
            assert not len(a.transactions)
            del b.cluster._received                              # hears again
            await b.cluster._pubsub.unsubscribe()                # and subscribes again
            client = redis_async.Redis.from_url(redis_server.url, decode_responses=True)
            try:
                for _ in range(60):
                    await asyncio.sleep(0.05)
                    if (await client.pubsub_numsub('aiosip-ws:node:b'))[0][1]:
                        break
            finally:
                await client.aclose()
            await alice.send(message(alice_host, 'again').replace('msg-1', 'msg-3'))
            got = await recv(bob)
            assert got.body == b'again'
            await answer(bob, got, 200, 'b')
            assert (await recv(alice)).status == 200
    finally:
        for node in started:
            await node.close()


async def test_an_unreachable_redis_stops_start_and_its_password_is_never_shown(caplog):
    """A node that cannot reach Redis does not start (ConfigurationError naming the
    URL); the URL's password is shown as ***, there and in every log line."""
    from aiosip_ws.errors import ConfigurationError
    from tests.support.net import closed_port
    node = RelayServer(redis_url='redis://:s3cret@127.0.0.1:%d/0' % closed_port(), node_id='x')
    with pytest.raises(ConfigurationError, match=r'cannot reach Redis at redis://:\*\*\*@127'):
        await node.start('ws://127.0.0.1:0/')
    await node.close()
    assert 's3cret' not in caplog.text


async def test_a_call_anchored_by_one_node_goes_on_through_the_other(redis_server, ng_url):
    """``--rtpengine`` with ``--redis``: node a anchors alice's call to bob (``always``)
    and records it in Redis (``aiosip-ws:media:<Call-ID>``: the relay, the tags, the
    profiles); bob's re-INVITE and BYE land on node b, which finds the call there and
    drives the same rtpengine: a new offer and answer, then the delete, after which
    rtpengine holds nothing and the key is gone."""
    from aiosip_ws.serve.media import MediaSettings
    from tests.support.rtpengine import own_sessions
    from tests.support.sdp import BROWSER_OFFER
    media = MediaSettings(rtpengine=[ng_url], mode='always')
    a = await start_node(redis_server, 'a', media=media)
    b = await start_node(redis_server, 'b', media=media)
    try:
        async with ws(a.listeners[0].bound_url) as alice, ws(b.listeners[0].bound_url) as bob:
            alice_host = await register_raw(alice, 'alice')
            bob_host = await register_device(bob, 'bob', 'desk')
            await alice.send(invite(alice_host).split('\r\n\r\n')[0] + '\r\n\r\n' + BROWSER_OFFER)
            assert (await recv(alice)).status == 100
            offer = await recv(bob)
            assert offer.body != BROWSER_OFFER.encode() and b'a=fingerprint' in offer.body
            answer_sdp = BROWSER_OFFER.replace('a=setup:actpass', 'a=setup:active').encode()
            await answer(bob, offer, 200, 'b', headers=[
                ('Contact', '<sip:bob@%s;transport=ws>' % bob_host),
                ('Content-Type', 'application/sdp')], body=answer_sdp)
            ok = await recv(alice)
            assert ok.status == 200 and ok.body != answer_sdp
            for _ in range(50):
                if await keys(redis_server, 'aiosip-ws:media:*'):
                    break
                await asyncio.sleep(0.02)
            client = redis_async.Redis.from_url(redis_server.url, decode_responses=True)
            try:
                recorded = json.loads(await client.get('aiosip-ws:media:call-1'))
            finally:
                await client.aclose()
            assert recorded['relay'] == ng_url.split('//', 1)[1]
            assert recorded['caller-tag'] == 'a1' and recorded['callee-tag'] == 'b'
            assert recorded['node'] == 'a' and 'call-1' not in b.media.calls

            def in_dialog(method, cseq, target, via, caller, body=b''):
                ends = ('From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;'
                        'tag=b' if caller else 'From: <sip:bob@example.com>;tag=b\r\nTo: '
                        '<sip:alice@example.com>;tag=a1')
                return ('%s sip:%s;transport=ws SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bK%s'
                        '%d\r\n%s\r\nCall-ID: call-1\r\nCSeq: %d %s\r\nMax-Forwards: 70\r\n%s'
                        '\r\n%s' % (method, target, via, method.lower(), cseq, ends, cseq,
                                    method, 'Content-Type: application/sdp\r\n' if body
                                    else '', body.decode()))
            await alice.send(in_dialog('ACK', 10, 'bob@' + bob_host, alice_host, True))
            assert (await recv(bob)).method == 'ACK'
            hold = BROWSER_OFFER.replace('a=sendrecv', 'a=sendonly').encode()
            await bob.send(in_dialog('INVITE', 1, 'alice@' + alice_host, bob_host, False, hold))
            reinvite = await recv(alice)                      # b -> rtpengine -> Redis -> a
            assert reinvite.method == 'INVITE' and b'a=sendonly' in reinvite.body
            assert reinvite.body != hold and b'a=fingerprint' in reinvite.body
            assert 'call-1' in b.media.calls                  # b took the call from Redis
            held = BROWSER_OFFER.replace('a=sendrecv', 'a=recvonly').replace(
                'a=setup:actpass', 'a=setup:active').encode()
            await answer(alice, reinvite, 200, 'a1', headers=[
                ('Content-Type', 'application/sdp')], body=held)
            ok = await recv(bob)
            while ok.status == 100:
                ok = await recv(bob)
            assert ok.status == 200 and b'a=recvonly' in ok.body and ok.body != held
            await bob.send(in_dialog('BYE', 2, 'alice@' + alice_host, bob_host, False))
            bye = await recv(alice)
            await answer(alice, bye, 200, 'a1')
            assert (await recv(bob)).status == 200
            for _ in range(40):
                if own_sessions(ng_url) == 0 and not await keys(redis_server,
                                                                'aiosip-ws:media:*'):
                    break
                await asyncio.sleep(0.05)
            assert own_sessions(ng_url) == 0
            assert await keys(redis_server, 'aiosip-ws:media:*') == []
            for _ in range(40):                   # a, which anchored it, forgot it too
                if 'call-1' not in a.media.calls:
                    break
                await asyncio.sleep(0.05)
            assert 'call-1' not in a.media.calls and 'call-1' not in b.media.calls
    finally:
        await a.close()
        await b.close()


async def test_a_nodes_history_shows_the_other_node_as_a_party(nodes):
    """alice on node a sends a MESSAGE to bob on node b: a's history (its ladder) shows
    the request going to node b and the answer coming from it, labelled with the node;
    a's HEP export leaves that leg to b (it crossed no socket of a)."""
    from aiosip_ws.serve.hep import HepExport
    from aiosip_ws.serve.history import CallHistory
    from tests.serve.test_hep import Collector
    (a, url_a), (b, url_b) = nodes
    history = CallHistory(node='a')
    history.follow(a.events)
    loop = asyncio.get_running_loop()
    transport, collector = await loop.create_datagram_endpoint(Collector,
                                                               local_addr=('127.0.0.1', 0))
    export = HepExport(['udp://127.0.0.1:%d' % transport.get_extra_info('sockname')[1]])
    await export.start(a.events)
    try:
        async with ws(url_a) as alice, ws(url_b) as bob:
            alice_host = await register_raw(alice, 'alice')
            await register_device(bob, 'bob', 'desk')
            await alice.send(message(alice_host, 'across').replace('Call-ID: ',
                                                                   'Call-ID: across-'))
            got = await recv(bob)
            await answer(bob, got, 202, 'b1')
            assert (await recv(alice)).status == 202
            await asyncio.sleep(0.1)
        [call_id] = [c for c in history.calls if c.startswith('across-')]
        record = history.get(call_id)
        steps = [(e.direction, e.transport, e.label) for e in record.entries
                 if e.kind == 'message']
        assert steps == [('in', 'ws', 'MESSAGE'), ('out', 'node b', 'MESSAGE'),
                         ('in', 'node b', '202'), ('out', 'ws', '202')]
        assert any(transport == 'node b' for transport, _, _ in record.peers)
        exported = []
        while not collector.packets.empty():
            exported.append(collector.packets.get_nowait())
        mine = [p for p in exported if p.correlation_id == call_id]
        assert [parse(p.payload).method or parse(p.payload).status for p in mine] == [
            'MESSAGE', 202]                              # alice's leg only, on a's sockets
    finally:
        await export.close()
        await history.close()
        transport.close()
