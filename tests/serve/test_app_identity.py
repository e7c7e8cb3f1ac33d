"""Routing in Python, second half: users from the app's credentials() (cached, misses too,
lookups per second bounded, a failing store answered 503), token_identity() for JWT
claims, on_event with call times and who ended each call, and MESSAGEs serve sends for
the app (send_message), with raw WebSocket clients and ``aiosip-ws serve`` processes."""
from __future__ import annotations

import asyncio
import hashlib
import time

import pytest
from websockets.asyncio.client import connect

from aiosip_ws.serve.auth import DigestAuthenticator
from aiosip_ws.serve.credentials import CredentialStore
from aiosip_ws.serve.events import CallChanged, ConnectionClosed, RegistrationChanged
from aiosip_ws.serve.relay import RelayServer
from aiosip_ws.serve.routing import App, Credentials, Reply
from tests.support import eventually
from tests.support.digest import digest_authorization
from tests.support.sip import SDP, answer, invite, message, recv, register_raw

REALM = 'example.com'
SECRET = 'a secret of thirty-two bytes, at least'


def ws(url):
    return connect(url, subprotocols=['sip'], proxy=None)


def register(user: str, *, cseq: int = 1, credentials: str = '') -> str:
    return ('REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS %s.invalid;branch=z9hG4bKr%d\r\n'
            'From: <sip:%s@example.com>;tag=r1\r\nTo: <sip:%s@example.com>\r\n'
            'Call-ID: reg-%s\r\nCSeq: %d REGISTER\r\nMax-Forwards: 70\r\n%s'
            'Contact: <sip:%s@%s.invalid;transport=ws>\r\nExpires: 60\r\n\r\n'
            % (user, cseq, user, user, user, cseq, credentials + '\r\n' if credentials else '',
               user, user))


_CSEQ = iter(range(1, 10 ** 6))


async def register_with(conn, user: str, password: str) -> int:
    """REGISTER, answer the challenge with ``password``: the final status."""
    await conn.send(register(user, cseq=next(_CSEQ)))
    challenge = await recv(conn)
    if challenge.status != 401:
        return challenge.status or 0
    line = digest_authorization(challenge.get('WWW-Authenticate'), method='REGISTER',
                                uri='sip:example.com', username=user, password=password)
    await conn.send(register(user, cseq=next(_CSEQ), credentials=line))
    return (await recv(conn)).status or 0


class Store(App):
    """Users in a dict; every lookup counted; ``slow`` users take a while, ``broken`` fail."""

    def __init__(self):
        self.users = {'alice': Credentials(password='wonderland'),
                      'bob': Credentials(ha1={'MD5': hashlib.md5(
                          b'bob:example.com:builder').hexdigest()})}
        self.lookups = []

    async def credentials(self, user, realm):
        self.lookups.append(user)
        await asyncio.sleep(0.05)                     # a database round trip
        if user == 'broken':
            raise ConnectionError('the database is down')
        return self.users.get(user)


@pytest.fixture
def with_store(serve_with):
    """``serve_with`` whose users come from the app's credentials (as ``run`` wires them)."""
    def start(app, **store_options):
        def prepare(server, router):
            store = router.credential_store = CredentialStore(router.credentials, REALM,
                                                              **store_options)
            server.admission.auth = DigestAuthenticator(store, REALM)
        return serve_with(app, prepare)
    return start


async def test_users_come_from_the_app_cached_with_misses_and_their_algorithms(with_store):
    app = Store()
    server, url = await with_store(app, ttl=0.5)
    async with ws(url) as conn:
        assert await register_with(conn, 'alice', 'wonderland') == 200
        assert await register_with(conn, 'alice', 'wonderland') == 200
        assert app.lookups == ['alice']                       # cached
        # bob has an MD5 HA1 only: his first challenge offers MD5 alone
        await conn.send(register('bob', cseq=next(_CSEQ)))
        challenge = await recv(conn)
        assert [v for k, v in challenge.headers if k == 'WWW-Authenticate'] and all(
            'algorithm=MD5' in v for k, v in challenge.headers if k == 'WWW-Authenticate')
        # nobody: one lookup, then the miss is cached
        assert await register_with(conn, 'nobody', 'x') == 401
        assert await register_with(conn, 'nobody', 'x') in (401, 403)
        assert app.lookups.count('nobody') == 1
    async with ws(url) as conn:
        assert await register_with(conn, 'carol', 'singer') == 401    # no such user yet
        app.users['carol'] = Credentials(password='singer', aors=['sip:carol@example.com',
                                                                  'sip:c@example.com'])
        assert await register_with(conn, 'carol', 'singer') == 401    # the miss, cached
        await asyncio.sleep(0.6)                                       # past the TTL
        assert await register_with(conn, 'carol', 'singer') == 200
    async with ws(url) as conn:
        assert await register_with(conn, 'alice', 'wrong') == 401
    metrics = server.metrics
    metrics.flush()
    assert metrics.app_hooks.labels('credentials', 'found')._value.get() >= 3
    assert metrics.app_hooks.labels('credentials', 'unknown')._value.get() >= 2


async def test_a_flood_of_made_up_users_is_bounded_and_a_broken_store_is_503(with_store):
    """30 first REGISTERs for made-up users: at most the burst plus the rate are looked up
    (the others are challenged with every algorithm); credentials needing a lookup over the
    rate, or of a store that fails, get 503 with Retry-After."""
    app = Store()
    _, url = await with_store(app, rate=5.0)
    async with ws(url) as conn:
        started = time.monotonic()
        for n in range(30):
            await conn.send(register('made-up-%d' % n, cseq=next(_CSEQ)))
            assert (await recv(conn)).status == 401
        elapsed = time.monotonic() - started
        assert len(app.lookups) <= 5 + 5 * elapsed + 1, (len(app.lookups), elapsed)
        await asyncio.sleep(1.2)
        await conn.send(register('broken', cseq=next(_CSEQ)))
        challenge = await recv(conn)            # the store failed: a challenge of every kind
        assert challenge.status == 401
        line = digest_authorization(challenge.get('WWW-Authenticate'), method='REGISTER',
                                    uri='sip:example.com', username='broken', password='x')
        await conn.send(register('broken', cseq=next(_CSEQ), credentials=line))
        busy = await recv(conn)
        assert busy.status == 503 and busy.get('Retry-After')
        assert 'user store' in busy.reason


async def test_on_event_tells_registrations_calls_with_times_and_who_ended_them():
    seen = []

    class Listener(App):
        events = (RegistrationChanged, CallChanged, ConnectionClosed)

        async def on_event(self, event):
            seen.append(event)

    server = RelayServer(node_id='node-a')
    server.use_app(Listener())
    [listener] = await server.start('ws://127.0.0.1:0/')
    url = listener.bound_url
    try:
        async with ws(url) as alice, ws(url) as bob:
            alice_host = await register_raw(alice, 'alice')
            await register_raw(bob, 'bob')
            # 1: answered, bob hangs up
            await alice.send(invite(alice_host))
            assert (await recv(alice)).status == 100
            to_bob = await recv(bob)
            await answer(bob, to_bob, 200, 'b1', headers=[
                ('Contact', '<sip:bob@bob-raw.invalid;transport=ws>')], body=SDP.encode())
            assert (await recv(alice)).status == 200
            await asyncio.sleep(0.2)
            await bob.send('BYE sip:alice@%s;transport=ws SIP/2.0\r\nVia: SIP/2.0/WS '
                           'bob-raw.invalid;branch=z9hG4bKbye1\r\nFrom: <sip:bob@example.com>;'
                           'tag=b1\r\nTo: <sip:alice@example.com>;tag=a1\r\nCall-ID: call-1\r\n'
                           'CSeq: 1 BYE\r\nMax-Forwards: 70\r\n\r\n' % alice_host)
            bye = await recv(alice)
            await answer(alice, bye, 200, 'a1')
            assert (await recv(bob)).status == 200
            # 2: busy
            await alice.send(invite(alice_host, 'z9hG4bK2').replace('call-1', 'call-2'))
            assert (await recv(alice)).status == 100
            to_bob = await recv(bob)
            await answer(bob, to_bob, 486, 'b2')
            assert (await recv(alice)).status == 486
            assert (await recv(bob)).method == 'ACK'              # serve's, hop by hop
            # 3: nobody there (serve's 404)
            await alice.send(invite(alice_host, 'z9hG4bK3').replace('call-1', 'call-3')
                             .replace('sip:bob@', 'sip:carol@'))
            assert (await recv(alice)).status == 404
            # 4: answered, then bob's connection goes
            await alice.send(invite(alice_host, 'z9hG4bK4').replace('call-1', 'call-4'))
            assert (await recv(alice)).status == 100
            to_bob = await recv(bob)
            await answer(bob, to_bob, 200, 'b4', headers=[
                ('Contact', '<sip:bob@bob-raw.invalid;transport=ws>')], body=SDP.encode())
            assert (await recv(alice)).status == 200
            await bob.close()
            await eventually(lambda: any(isinstance(e, ConnectionClosed) for e in seen))
            await eventually(lambda: sum(isinstance(e, CallChanged) and e.change == 'ended'
                                         for e in seen) == 4)
    finally:
        await server.close()
    registrations = [(e.change, e.aor) for e in seen if isinstance(e, RegistrationChanged)]
    assert registrations[:2] == [('added', 'sip:alice@example.com'),
                                 ('added', 'sip:bob@example.com')]
    ended = {e.call_id: e for e in seen if isinstance(e, CallChanged) and e.change == 'ended'}
    assert (ended['call-1'].ended_by, ended['call-1'].status) == ('callee', 200)
    assert ended['call-1'].answered - ended['call-1'].started < 1.0
    assert ended['call-1'].time - ended['call-1'].answered >= 0.2
    assert ended['call-1'].caller.startswith('<sip:alice@example.com>')
    assert (ended['call-2'].ended_by, ended['call-2'].status, ended['call-2'].answered) == \
        ('callee', 486, None)
    assert (ended['call-3'].ended_by, ended['call-3'].status) == ('serve', 404)
    assert (ended['call-4'].ended_by, ended['call-4'].status) == ('callee', None)
    assert {e.node for e in ended.values()} == {'node-a'}
    assert not server.ctx.calls                               # nothing left in the book


async def test_send_message_reaches_the_bindings_and_says_how_it_went():
    class Echo(App):
        async def startup(self, serve):
            self.serve = serve

        async def on_request(self, request):
            if request.method == 'MESSAGE' and request.uri.user == 'echo':
                self.serve.spawn(self.serve.send_message(
                    'sip:echo@example.com', request.from_uri.aor, request.body,
                    request.content_type or 'text/plain'))
                return Reply(200)
            return None

    echo = Echo()
    server = RelayServer()
    server.use_app(echo)
    [listener] = await server.start('ws://127.0.0.1:0/')
    try:
        async with ws(listener.bound_url) as alice:
            alice_host = await register_raw(alice, 'alice')
            await alice.send(message(alice_host, 'ping?').replace('sip:bob@', 'sip:echo@'))
            assert (await recv(alice)).status == 200
            back = await recv(alice)
            assert (back.method, back.body, back.get('From').split(';')[0]) == \
                ('MESSAGE', b'ping?', '<sip:echo@example.com>')
            assert len(back.vias) == 2 and back.uri == 'sip:alice@%s;transport=ws' % alice_host
            status = echo.serve.send_message('sip:echo@example.com', 'sip:alice@example.com',
                                             'two')
            task = asyncio.ensure_future(status)
            second = await recv(alice)
            await answer(alice, second, 202, 'a9')
            assert await task == 202
            await answer(alice, back, 200, 'a8')                  # late: absorbed
            assert await echo.serve.send_message('sip:echo@example.com',
                                                 'sip:nobody@example.com', 'x') == 404
    finally:
        await server.close()


async def test_token_identity_maps_claims_and_refuses_what_it_does_not_know():
    import jwt

    from aiosip_ws.options import ServerOptions
    from aiosip_ws.serve.auth import TokenAuthenticator
    from aiosip_ws.serve.routing import TokenUser

    class Accounts(App):
        def token_identity(self, claims):
            if claims.get('account') == 'acme-42':
                return TokenUser('alice', ['sip:alice@example.com', 'support'])
            return None

    tokens = TokenAuthenticator(SECRET, domain='example.com')
    server = RelayServer(server_options=ServerOptions(authenticate=tokens))
    router = server.use_app(Accounts())
    tokens.claims_hook = router.token_user
    [listener] = await server.start('ws://127.0.0.1:0/')
    url = listener.bound_url

    def token(**claims):
        return jwt.encode({'sub': 'anyone', 'exp': int(time.time()) + 60, **claims},
                          SECRET, algorithm='HS256')
    try:
        async with ws(url + '?token=' + token(account='acme-42')) as alice:
            await register_raw(alice, 'alice')
            await alice.send(register('support'))
            assert (await recv(alice)).status == 200             # both AORs are hers
            await alice.send(register('bob'))
            assert (await recv(alice)).status == 403
        with pytest.raises(Exception, match='403'):
            async with ws(url + '?token=' + token(account='other')):
                pass
    finally:
        await server.close()


def test_the_call_record_lines_of_two_processes_never_mix(tmp_path):
    """cdr.py's lines, written by two processes at once into one CDR_FILE (as --workers
    do): every line whole."""
    import json
    import subprocess
    import sys

    from tests.support import REPO
    script = (
        'import asyncio, sys\n'
        'from aiosip_ws.serve.app import load_app\n'
        'from aiosip_ws.serve.events import CallChanged\n'
        'app = load_app(sys.argv[1]).target\n'
        'async def main():\n'
        '    await app.startup()\n'
        '    for n in range(2000):\n'
        '        await app.on_event(CallChanged("ended", "%s-%d-" % (sys.argv[2], n) + "x" * 200,'
        ' "<sip:a@example.com>;tag=1", "<sip:b@example.com>", 200, None, 1.0, 2.0, "caller"))\n'
        '    await app.shutdown()\n'
        'asyncio.run(main())\n')
    env = dict(__import__('os').environ, CDR_FILE=str(tmp_path / 'calls.jsonl'))
    writers = [subprocess.Popen([sys.executable, '-c', script,
                                 str(REPO / 'examples/routing/cdr.py'), name], env=env)
               for name in ('w1', 'w2')]
    assert [w.wait(60) for w in writers] == [0, 0]
    records = [json.loads(line) for line in (tmp_path / 'calls.jsonl').read_text().splitlines()]
    assert len(records) == 4000
    assert {r['call_id'].split('-')[0] for r in records} == {'w1', 'w2'}
    assert records[0]['duration'] > 0 and records[0]['ended_by'] == 'caller'


async def test_on_failure_sees_the_identity_the_invite_was_admitted_with(with_store):
    """alice's authenticated INVITE to bob (486): on_failure's request carries alice's
    identity, though another request of the connection came through meanwhile."""
    from aiosip_ws.serve.routing import Identity
    seen = []

    class Failures(Store):
        async def on_failure(self, request, response):
            seen.append(request.identity)
            return None

    _, url = await with_store(Failures())
    async with ws(url) as alice, ws(url) as bob:
        assert await register_with(alice, 'alice', 'wonderland') == 200
        assert await register_with(bob, 'bob', 'builder') == 200
        text = invite('alice.invalid')
        await alice.send(text)
        challenge = await recv(alice)
        line = digest_authorization(challenge.get('Proxy-Authenticate'), method='INVITE',
                                    uri='sip:bob@example.com', username='alice',
                                    password='wonderland', header='Proxy-Authorization')
        await alice.send(text.replace('CSeq: 10 INVITE', 'CSeq: 11 INVITE').replace(
            'z9hG4bKinv1', 'z9hG4bKinv2').replace('Max-Forwards: 70\r\n',
                                                  'Max-Forwards: 70\r\n%s\r\n' % line))
        assert (await recv(alice)).status == 100
        to_bob = await recv(bob)
        await alice.send(message('alice.invalid').replace('sip:alice@', 'sip:nobody@'))
        assert (await recv(alice)).status == 407        # the flow's identity is now None
        await answer(bob, to_bob, 486, 'b')
        assert (await recv(alice)).status == 486
    assert seen == [Identity('alice', 'sip:alice@example.com', 'digest')]


async def test_the_apps_tasks_are_bounded_and_their_failures_logged(caplog):
    import logging

    from aiosip_ws.errors import RoutingError
    from aiosip_ws.options import RelayLimits

    class Tasks(App):
        async def startup(self, serve):
            self.serve = serve

        async def on_event(self, event):
            pass

    app = Tasks()
    server = RelayServer(limits=RelayLimits(max_pending=2))
    server.use_app(app)
    await server.start('ws://127.0.0.1:0/')
    try:
        gate = asyncio.Event()

        async def wait():
            await gate.wait()

        async def fail():
            raise ValueError('the app\'s own bug')
        tasks = [app.serve.spawn(wait()), app.serve.spawn(wait())]
        with pytest.raises(RoutingError, match='tasks running already'):
            app.serve.spawn(wait())
        gate.set()
        await asyncio.gather(*tasks)
        await asyncio.sleep(0)
        with caplog.at_level(logging.ERROR, 'aiosip_ws.serve.app'):
            await app.serve.spawn(fail())
        assert 'a task the app spawned failed' in caplog.text and 'own bug' in caplog.text
        assert app.serve.running == 0
    finally:
        await server.close()
