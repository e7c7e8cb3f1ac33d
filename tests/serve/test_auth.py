"""Digest authentication in serve (RFC 3261 §22, RFC 7616, RFC 8760), on the wire.

A RelayServer with a DigestAuthenticator on 127.0.0.1, raw WebSocket clients; the
answers are computed with hashlib alone (tests/support/digest.py), never with aiosip_ws.
"""
from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator

import pytest

from aiosip_ws.core.codec import SIPMessage, make_response, parse, serialize
from aiosip_ws.errors import ConfigurationError
from aiosip_ws.serve.auth import DigestAuthenticator, UserFile, user_line
from aiosip_ws.serve.relay import RelayServer
from tests.support.digest import digest_authorization
from tests.support.websocket import RawWebSocket

HOST = '127.0.0.1'
REALM = 'example.com'


def h(algorithm: str, text: str) -> str:
    return hashlib.new({'MD5': 'md5', 'SHA-256': 'sha256'}[algorithm], text.encode()).hexdigest()


#: alice: MD5 and SHA-256; bob: an htdigest line (MD5 only); carol: SHA-256 only;
#: dave: may use sip:d@example.com only
USERS = '\n'.join([
    '# serve --users file',
    'alice:%s:%s:%s' % (REALM, h('MD5', 'alice:%s:wonderland' % REALM),
                        h('SHA-256', 'alice:%s:wonderland' % REALM)),
    'bob:%s:%s' % (REALM, h('MD5', 'bob:%s:builder' % REALM)),
    'carol:%s::%s' % (REALM, h('SHA-256', 'carol:%s:singer' % REALM)),
    'dave:%s:%s::sip:d@example.com' % (REALM, h('MD5', 'dave:%s:diver' % REALM)),
])
PASSWORDS = {'alice': 'wonderland', 'bob': 'builder', 'carol': 'singer', 'dave': 'diver'}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Client:
    """A raw WebSocket SIP client that builds its requests and reads the answers."""

    def __init__(self, ws: RawWebSocket, user: str, domain: str = 'example.com') -> None:
        self.ws, self.user, self.domain = ws, user, domain
        self.host = '%s.invalid' % secrets.token_hex(4)
        self.call_id = secrets.token_hex(6)
        self.cseq = 0

    def request(self, method: str, uri: str, *, to: str | None = None, from_: str | None = None,
                headers: tuple[str, ...] = (), body: str = '') -> str:
        self.cseq += 1
        aor = 'sip:%s@%s' % (self.user, self.domain)
        lines = ['%s %s SIP/2.0' % (method, uri),
                 'Via: SIP/2.0/WS %s;branch=z9hG4bK%s' % (self.host, secrets.token_hex(6)),
                 'From: <%s>;tag=%s' % (from_ or aor, secrets.token_hex(3)),
                 'To: <%s>' % (to or aor),
                 'Call-ID: %s' % self.call_id, 'CSeq: %d %s' % (self.cseq, method),
                 'Max-Forwards: 70',
                 'Contact: <sip:%s@%s;transport=ws>' % (self.user, self.host), *headers]
        if body:
            lines += ['Content-Type: text/plain', 'Content-Length: %d' % len(body.encode())]
        return '\r\n'.join(lines) + '\r\n\r\n' + body

    async def send(self, text: str) -> SIPMessage:
        await self.ws.send_text(text)
        return await self.response()

    async def response(self) -> SIPMessage:
        while True:
            message = parse(await self.ws.recv_text())
            if message.status != 100:
                return message

    def register(self, *headers: str, expires: int = 60, to: str | None = None,
                 contact: str | None = None) -> str:
        text = self.request('REGISTER', 'sip:example.com', to=to,
                            headers=('Expires: %d' % expires, *headers))
        if contact is not None:
            text = text.replace('Contact: <sip:%s@%s;transport=ws>' % (self.user, self.host),
                                'Contact: %s' % contact)
        return text

    async def register_with_password(self, password: str | None = None, *, pick: int = -1,
                                     **kwargs) -> SIPMessage:
        challenge = await self.send(self.register(**kwargs))
        assert challenge.status == 401, challenge
        value = challenge.get_all('WWW-Authenticate')[pick]
        answer = digest_authorization(value, method='REGISTER', uri='sip:example.com',
                                      username=self.user,
                                      password=password or PASSWORDS[self.user])
        return await self.send(self.register(answer, **kwargs))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def relay(clock: Clock) -> AsyncIterator[RelayServer]:
    auth = DigestAuthenticator(UserFile.parse(USERS), REALM, nonce_secret=b'shared secret',
                               clock=clock)
    async with RelayServer(auth=auth) as server:
        await server.start('ws://%s:0/' % HOST)
        yield server
        for client in OPENED:                  # every client socket closed, not left to GC
            await client.ws.close()
        OPENED.clear()


#: the clients the running test opened (closed by the relay fixture)
OPENED: list[Client] = []


async def connect(relay: RelayServer, user: str, domain: str = 'example.com') -> Client:
    ws = await RawWebSocket.connect(HOST, relay.listeners[0].port)
    client = Client(ws, user, domain)
    OPENED.append(client)
    return client


def challenges(response: SIPMessage, header: str = 'WWW-Authenticate') -> list[str]:
    return [v.split('algorithm=')[1].split(',')[0] for v in response.get_all(header)]


async def test_register_is_challenged_sha256_first_and_either_answer_registers(relay):
    """401 with one challenge per algorithm, SHA-256 first (RFC 8760 §2.4: the server's
    preference first) and MD5 last (JsSIP and SIP.js read only the last one, and only MD5);
    MD5 and SHA-256 answers both register; a user with only an MD5 HA1 (an htdigest
    line) is offered only MD5, one with only SHA-256 only SHA-256."""
    alice = await connect(relay, 'alice')
    first = await alice.send(alice.register())
    assert first.status == 401 and challenges(first) == ['SHA-256', 'MD5']
    assert all('qop="auth"' in v for v in first.get_all('WWW-Authenticate'))
    ok = await alice.register_with_password(pick=0)
    assert ok.status == 200 and ok.get('Contact')
    ok = await alice.register_with_password(pick=-1)
    assert ok.status == 200

    bob = await connect(relay, 'bob')
    first = await bob.send(bob.register())        # the user the To names: what it can check
    assert challenges(first) == ['MD5']
    assert (await bob.register_with_password()).status == 200
    # once the credentials name the user, the same
    wrong = await bob.send(bob.register(digest_authorization(
        (await bob.send(bob.register())).get_all('WWW-Authenticate')[0], method='REGISTER',
        uri='sip:example.com', username='bob', password='not it')))
    assert wrong.status == 401 and challenges(wrong) == ['MD5']
    carol = await connect(relay, 'carol')
    challenge = await carol.send(carol.register())
    assert challenges(challenge) == ['SHA-256']
    stranger = await connect(relay, 'nobody')                # unknown: every algorithm
    assert challenges(await stranger.send(stranger.register())) == ['SHA-256', 'MD5']
    sha = [v for v in challenge.get_all('WWW-Authenticate') if 'SHA-256' in v][0]
    ok = await carol.send(carol.register(digest_authorization(
        sha, method='REGISTER', uri='sip:example.com', username='carol', password='singer')))
    assert ok.status == 200
    assert [b.aor for b in relay.registrar.bindings()].count('sip:carol@example.com') == 1


async def test_a_wrong_password_gets_new_challenges_then_403(relay):
    """A wrong answer is challenged again (a new nonce, not stale: browsers give up there);
    the third failure on one connection gets 403, never an endless loop."""
    alice = await connect(relay, 'alice')
    statuses = []
    for _ in range(3):
        answer = await alice.register_with_password('wrong')
        statuses.append(answer.status)
        if answer.status == 401:
            assert 'stale' not in answer.get('WWW-Authenticate')
    assert statuses == [401, 401, 403], statuses
    assert 'authentication failed 3 times' in answer.reason
    assert not list(relay.registrar.bindings())
    assert 'aiosip_ws_auth_failures_total 3.0' in relay.metrics.exposition().decode()


async def test_replayed_nc_is_refused_and_next_nc_accepted(relay):
    """The highest nc per nonce is kept: the same Authorization again is refused, the same
    nonce with a higher nc (how JsSIP refreshes) is accepted."""
    alice = await connect(relay, 'alice')
    challenge = (await alice.send(alice.register())).get_all('WWW-Authenticate')[0]

    def answer(nc: int) -> str:
        return digest_authorization(challenge, method='REGISTER', uri='sip:example.com',
                                    username='alice', password='wonderland', nc=nc,
                                    cnonce='fixed')
    assert (await alice.send(alice.register(answer(1)))).status == 200
    replay = await alice.send(alice.register(answer(1)))
    assert replay.status == 401
    assert (await alice.send(alice.register(answer(2)))).status == 200


async def test_an_expired_nonce_is_stale_and_a_forged_one_is_not(relay, clock):
    alice = await connect(relay, 'alice')
    challenge = (await alice.send(alice.register())).get_all('WWW-Authenticate')[0]
    clock.now += 301                                      # the default lifetime is 300 s
    stale = await alice.send(alice.register(digest_authorization(
        challenge, method='REGISTER', uri='sip:example.com', username='alice',
        password='wonderland')))
    assert stale.status == 401 and all('stale=true' in v
                                       for v in stale.get_all('WWW-Authenticate'))
    forged = challenge.replace('nonce="', 'nonce="1', 1)
    refused = await alice.send(alice.register(digest_authorization(
        forged, method='REGISTER', uri='sip:example.com', username='alice',
        password='wonderland')))
    assert refused.status == 401 and 'stale' not in refused.get('WWW-Authenticate')


async def test_nonces_of_another_secret_are_refused_and_of_the_same_secret_accepted(clock):
    """Nodes sharing --nonce-secret accept each other's nonces; another secret's are not."""
    users = UserFile.parse(USERS)
    a = DigestAuthenticator(users, REALM, nonce_secret=b'one', clock=clock)
    b = DigestAuthenticator(users, REALM, nonce_secret=b'one', clock=clock)
    c = DigestAuthenticator(users, REALM, nonce_secret=b'two', clock=clock)
    request = parse('REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS x.invalid;branch=z9hG4bK1'
                    '\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n'
                    'Call-ID: n\r\nCSeq: 1 REGISTER\r\n\r\n')
    challenge = a.check(request, {}).headers[0][1]
    request.headers.append(('Authorization', digest_authorization(
        challenge, method='REGISTER', uri='sip:example.com', username='alice',
        password='wonderland').split(': ', 1)[1]))
    assert b.check(request, {}).identity is not None
    assert c.check(request, {}).identity is None


async def test_a_user_binds_only_their_own_aor(relay):
    """Authenticated as alice, registering bob's AOR gets 403; dave's file line names his
    AOR, sip:d@example.com, and sip:dave@example.com is not his."""
    alice = await connect(relay, 'alice')
    refused = await alice.register_with_password(to='sip:bob@example.com')
    assert refused.status == 403 and 'sip:bob@example.com' in refused.reason
    dave = await connect(relay, 'dave')
    assert (await dave.register_with_password()).status == 403
    assert (await dave.register_with_password(to='sip:d@example.com')).status == 200
    assert [b.aor for b in relay.registrar.bindings()] == ['sip:d@example.com']


async def test_message_from_a_local_domain_gets_407_then_goes_through(relay):
    """Out-of-dialog requests From a local domain are challenged with 407 and
    Proxy-Authenticate; answered, the request is relayed without our credentials; a
    From that is not the user's gets 403; a foreign From is not challenged; CANCEL never."""
    bob = await connect(relay, 'bob')
    assert (await bob.register_with_password()).status == 200
    alice = await connect(relay, 'alice')
    message = alice.request('MESSAGE', 'sip:bob@example.com', to='sip:bob@example.com',
                            body='hi bob')
    challenge = await alice.send(message)
    assert challenge.status == 407 and challenges(challenge, 'Proxy-Authenticate') == \
        ['SHA-256', 'MD5']
    answer = digest_authorization(challenge.get_all('Proxy-Authenticate')[-1], method='MESSAGE',
                                  uri='sip:bob@example.com', username='alice',
                                  password='wonderland', header='Proxy-Authorization')
    await alice.ws.send_text(alice.request('MESSAGE', 'sip:bob@example.com',
                                           to='sip:bob@example.com', headers=(answer,),
                                           body='hi bob'))
    delivered = parse(await bob.ws.recv_text())
    assert delivered.method == 'MESSAGE' and delivered.body == b'hi bob'
    assert delivered.get('Proxy-Authorization') is None
    await bob.ws.send_text(serialize(make_response(delivered, 200, to_tag='b')).decode())
    assert (await alice.response()).status == 200

    spoof = await alice.send(alice.request('MESSAGE', 'sip:bob@example.com',
                                           to='sip:bob@example.com',
                                           from_='sip:carol@example.com', body='x'))
    assert spoof.status == 407
    answer = digest_authorization(spoof.get_all('Proxy-Authenticate')[-1], method='MESSAGE',
                                  uri='sip:bob@example.com', username='alice',
                                  password='wonderland', header='Proxy-Authorization')
    refused = await alice.send(alice.request('MESSAGE', 'sip:bob@example.com',
                                             to='sip:bob@example.com',
                                             from_='sip:carol@example.com', headers=(answer,),
                                             body='x'))
    assert refused.status == 403

    foreign = await connect(relay, 'mallory', domain='elsewhere.test')
    await foreign.ws.send_text(foreign.request('MESSAGE', 'sip:bob@example.com',
                                               to='sip:bob@example.com', body='from afar'))
    assert parse(await bob.ws.recv_text()).body == b'from afar'
    cancel = await alice.send(alice.request('CANCEL', 'sip:bob@example.com',
                                            to='sip:bob@example.com'))
    assert cancel.status == 481                     # not challenged: no INVITE to cancel


async def test_a_trusted_peer_is_not_challenged(clock):
    auth = DigestAuthenticator(UserFile.parse(USERS), REALM, trusted=['127.0.0.0/8'],
                               clock=clock)
    async with RelayServer(auth=auth) as server:
        await server.start('ws://%s:0/' % HOST)
        trunk = await connect(server, 'alice')
        assert (await trunk.send(trunk.register())).status == 200
        await trunk.ws.close()


async def test_with_authentication_the_user_owns_every_binding_of_the_aor(relay):
    """RFC 3261 §10.3 step 6 with authentication: Contact: * removes every binding of
    the AOR, also those another connection of the same user made; the 200 of the user's
    query shows their Outbound parameters."""
    laptop = await connect(relay, 'alice')
    contact = '<sip:alice@%s;transport=ws>;+sip.instance="<urn:uuid:1>";reg-id=1' % laptop.host
    assert (await laptop.register_with_password(
        'wonderland', contact=contact, expires=60)).status == 200
    phone = await connect(relay, 'alice')
    query = await phone.register_with_password(expires=60)
    assert query.status == 200
    assert any('reg-id=1' in c for c in query.get_all('Contact'))
    assert len(list(relay.registrar.bindings())) == 2
    removed = await phone.register_with_password(contact='*', expires=0)
    assert removed.status == 200 and not removed.get_all('Contact')
    assert not list(relay.registrar.bindings())


def test_user_file_lines_and_their_errors(tmp_path):
    users = UserFile.parse(USERS)
    assert set(users.get('alice', REALM).ha1) == {'MD5', 'SHA-256'}
    assert set(users.get('bob', REALM).ha1) == {'MD5'}
    assert set(users.get('carol', REALM).ha1) == {'SHA-256'}
    assert users.get('dave', REALM).aor == 'sip:d@example.com'
    line = user_line('erin', REALM, 'pw', aor='sip:e@example.com')
    assert line == 'erin:%s:%s:%s:sip:e@example.com' % (REALM, h('MD5', 'erin:%s:pw' % REALM),
                                                       h('SHA-256', 'erin:%s:pw' % REALM))
    assert 'pw' not in line.split(':')
    for bad, says in [('alice:example.com', 'expected USER:REALM'),
                      ('alice:example.com:secret', 'an HA1, not a password'),
                      ('alice:example.com::', 'has no HA1'),
                      ('alice:example.com:%s::mailto:x' % ('0' * 32), 'no SIP URI')]:
        with pytest.raises(ConfigurationError, match=says) as error:
            UserFile.parse('# header\n' + bad, 'users.txt')
        assert 'users.txt:2' in str(error.value)
    with pytest.raises(ConfigurationError, match='unknown digest algorithm'):
        DigestAuthenticator(users, REALM, algorithms=['SHA-1'])


def test_the_nc_store_is_bounded_and_forgets_safely(clock):
    """At most max_nonces entries; a nonce dropped for room while still valid comes back
    stale (a new challenge), never as a fresh nonce whose nc 1 could be replayed."""
    auth = DigestAuthenticator(UserFile.parse(USERS), REALM, nonce_secret=b's', max_nonces=2,
                               clock=clock)
    template = ('REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS x.invalid;branch=z9hG4bK%d'
                '\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n'
                'Call-ID: n\r\nCSeq: %d REGISTER\r\n\r\n')
    answered = []
    for n in range(3):
        clock.now += 1
        request = parse(template % (n, n + 1))
        challenge = auth.check(request, {}).headers[0][1]
        request.headers.append(('Authorization', digest_authorization(
            challenge, method='REGISTER', uri='sip:example.com', username='alice',
            password='wonderland').split(': ', 1)[1]))
        assert auth.check(request, {}).identity is not None
        answered.append(request)
    assert len(auth._nc) == 2
    again = auth.check(answered[0], {})
    assert again.status == 401 and 'stale=true' in again.headers[0][1]


async def test_a_call_authenticates_its_invite_only(relay):
    """INVITE from a local user gets 407 (after serve's own 100 Trying, if any); the
    authenticated INVITE rings bob; the ACK of the 2xx and the BYE, in-dialog, are relayed
    without a challenge (RFC 3261 §22.1: ACK never is; in-dialog requests are not)."""
    bob = await connect(relay, 'bob')
    assert (await bob.register_with_password()).status == 200
    alice = await connect(relay, 'alice')
    invite = alice.request('INVITE', 'sip:bob@example.com', to='sip:bob@example.com',
                           body='v=0\r\n')
    challenge = await alice.send(invite)
    assert challenge.status == 407
    await alice.ws.send_text(alice.request('ACK', 'sip:bob@example.com', to='sip:bob@example.com'))
    answer = digest_authorization(challenge.get_all('Proxy-Authenticate')[-1], method='INVITE',
                                  uri='sip:bob@example.com', username='alice',
                                  password='wonderland', header='Proxy-Authorization')
    await alice.ws.send_text(alice.request('INVITE', 'sip:bob@example.com',
                                           to='sip:bob@example.com', headers=(answer,),
                                           body='v=0\r\n'))
    ringing = parse(await bob.ws.recv_text())
    assert ringing.method == 'INVITE' and ringing.get('Proxy-Authorization') is None
    ok = make_response(ringing, 200, to_tag='b',
                       headers=[('Contact', '<sip:bob@%s;transport=ws>' % bob.host)])
    await bob.ws.send_text(serialize(ok).decode())
    answered = await alice.response()
    assert answered.status == 200
    to = answered.get('To')
    for method in ('ACK', 'BYE'):
        text = alice.request(method, 'sip:bob@%s;transport=ws' % bob.host, to='sip:bob@example.com')
        await alice.ws.send_text(text.replace('To: <sip:bob@example.com>', 'To: %s' % to))
        got = parse(await bob.ws.recv_text())
        assert got.method == method
        if method == 'BYE':
            await bob.ws.send_text(serialize(make_response(got, 200)).decode())
            assert (await alice.response()).status == 200


async def test_the_aiosip_ws_client_registers_messages_and_calls_with_its_password(relay):
    """The library's own client (aiosip Applications with a password) through serve with
    Digest: REGISTER answers the 401 (SHA-256 when the user has it, bob's htdigest line
    offers MD5 only), MESSAGE and INVITE answer the 407 (the 407 to the INVITE is ACKed),
    then the call is set up and ended in-dialog without any challenge."""
    import asyncio

    from aiosip_ws import Application
    url = relay.listeners[0].bound_url
    alice, bob = Application(), Application()
    got: asyncio.Queue = asyncio.Queue()

    async def on_invite(dialog, msg):
        bob.dialog = dialog
        dialog.register_callback('BYE', lambda d, m: got.put_nowait(('BYE', m)))
        dialog.reply(msg, 200, content_type='application/sdp', payload='v=0\r\n')

    async def on_message(dialog, msg):
        dialog.reply(msg, 200)
        await got.put(('MESSAGE', msg))

    bob.router.add_route('INVITE', on_invite)
    bob.router.add_route('MESSAGE', on_message)
    try:
        registration = await bob.start_dialog('sip:bob@example.com', 'sip:bob@example.com',
                                              remote_addr=url, password='builder')
        assert (await asyncio.wait_for(registration.register(), 5)).status_code == 200
        chat = await alice.start_dialog('sip:alice@example.com', 'sip:bob@example.com',
                                        remote_addr=url, password='wonderland')
        sent = await asyncio.wait_for(chat.send_message('MESSAGE', content_type='text/plain',
                                                        payload='hello bob'), 5)
        assert sent.status_code == 200
        kind, message = await asyncio.wait_for(got.get(), 5)
        assert kind == 'MESSAGE' and message.raw.body == b'hello bob'
        assert message.raw.get('Proxy-Authorization') is None          # consumed by serve
        call = await alice.start_dialog('sip:alice@example.com', 'sip:bob@example.com',
                                        remote_addr=url, password='wonderland')
        answered = await asyncio.wait_for(call.send_message(
            'INVITE', content_type='application/sdp', payload='v=0\r\n'), 5)
        assert answered.status_code == 200
        call.send_message('ACK')
        bye = await asyncio.wait_for(call.send_message('BYE'), 5)
        assert bye.status_code == 200
        kind, _ = await asyncio.wait_for(got.get(), 5)
        assert kind == 'BYE'
    finally:
        await alice.close()
        await bob.close()
