"""Digest authentication (aiosip_ws.core.digest and the Dialog's challenge handling), D16."""
from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.server import serve

from aiosip_ws import Application
from aiosip_ws.core.codec import make_response, parse, serialize
from aiosip_ws.core.digest import DigestError, authorization, choose_challenge, parse_challenges
from tests.support.digest import independent_response


def test_rfc2617_md5_qop_auth_vector():
    challenge = parse_challenges('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                                 'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
                                 'opaque="5ccc069c403ebaf9f0171e9517f40e41"')[0]
    value = authorization(challenge, method='GET', uri='/dir/index.html', username='Mufasa',
                          password='Circle Of Life', nc=1, cnonce='0a4f113b')
    assert 'response="6629fae49393a05397450978507c4ef1"' in value
    assert 'qop=auth' in value and 'nc=00000001' in value and 'cnonce="0a4f113b"' in value
    assert 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in value


@pytest.mark.parametrize('algorithm, expected', [
    ('MD5', '8ca523f5e9506fed4657c9700eebdbec'),
    ('SHA-256', '753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1'),
])
def test_rfc7616_vectors(algorithm, expected):
    challenge = parse_challenges(
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=%s, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"' % algorithm)[0]
    value = authorization(challenge, method='GET', uri='/dir/index.html', username='Mufasa',
                          password='Circle of Life', nc=1,
                          cnonce='f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ')
    assert 'response="%s"' % expected in value and 'algorithm=%s' % algorithm in value


def test_quoted_values_with_commas_and_equals_and_bare_padded_nonce():
    [c] = parse_challenges('Digest realm="a, b=c", nonce=YWJj==, opaque="x\\"y", qop=auth')
    assert (c.realm, c.nonce, c.opaque, c.qops) == ('a, b=c', 'YWJj==', 'x"y', ('auth',))
    both = parse_challenges('Digest realm="r", nonce="n1", algorithm=MD5, '
                            'Digest realm="r", nonce="n2", algorithm=SHA-256')
    assert [c.nonce for c in both] == ['n1', 'n2']


def test_strongest_algorithm_is_chosen_and_unknown_ones_refused():
    chosen = choose_challenge(['Digest realm="r", nonce="a", algorithm=MD5',
                               'Digest realm="r", nonce="b", algorithm=SHA-256'])
    assert chosen.algorithm == 'SHA-256'
    with pytest.raises(DigestError, match='no supported Digest algorithm'):
        choose_challenge(['Digest realm="r", nonce="a", algorithm=AKAv1-MD5'])
    with pytest.raises(DigestError, match='no Digest challenge'):
        choose_challenge(['Basic realm="r"'])


def authorization_fields(value: str) -> dict[str, str]:
    assert value.startswith('Digest ')
    [challenge] = parse_challenges(value)          # same grammar as a challenge
    return challenge.params


class Registrar:
    """A raw WebSocket registrar that challenges like real ones do."""

    def __init__(self, *, algorithm: str = 'MD5', stale_first: bool = False, proxy: bool = False,
                 password: str = 'secret') -> None:
        self.algorithm, self.stale_first, self.proxy = algorithm, stale_first, proxy
        self.password = password
        self.nonces = iter(['n0nce,with=comma', 'c2Vjb25k==', 'dGhpcmQ=', 'fourth'])
        self.current = next(self.nonces)
        self.requests: list = []

    def challenge(self, stale: bool = False) -> tuple[str, str]:
        header = 'Proxy-Authenticate' if self.proxy else 'WWW-Authenticate'
        return header, ('Digest realm="test, realm", nonce="%s", qop="auth", algorithm=%s, '
                        'opaque="op=aque"%s' % (self.current, self.algorithm,
                                                ', stale=TRUE' if stale else ''))

    async def handler(self, ws):
        async for frame in ws:
            msg = parse(frame)
            self.requests.append(msg)
            credentials = msg.get('Proxy-Authorization' if self.proxy else 'Authorization')
            if credentials is None:
                response = make_response(msg, 407 if self.proxy else 401, to_tag='t',
                                         headers=[self.challenge()])
            else:
                fields = authorization_fields(credentials)
                ok = (fields['response'] == independent_response(fields, msg.method, self.password)
                      and fields['uri'] == msg.uri and fields['nonce'] == self.current
                      and fields['opaque'] == 'op=aque')
                if ok and self.stale_first:
                    self.stale_first = False
                    self.current = next(self.nonces)
                    response = make_response(msg, 407 if self.proxy else 401, to_tag='t',
                                             headers=[self.challenge(stale=True)])
                else:
                    response = make_response(msg, 200 if ok else 403, to_tag='t')
            await ws.send(serialize(response).decode())


async def run(registrar: Registrar, method: str = 'REGISTER', password: str = 'secret'):
    async with serve(registrar.handler, '127.0.0.1', 0, subprotocols=['sip']) as server:
        url = 'ws://127.0.0.1:%d/' % server.sockets[0].getsockname()[1]
        app = Application()
        try:
            dialog = await app.start_dialog('sip:alice@example.com', 'sip:alice@example.com',
                                            remote_addr=url, password=password)
            if method == 'REGISTER':
                future = dialog.register(expires=60)
            else:
                future = dialog.send_message(method, payload='hello', content_type='text/plain')
            return await asyncio.wait_for(future, 5)
        finally:
            await app.close()


@pytest.mark.parametrize('algorithm', ['MD5', 'SHA-256'])
async def test_register_answers_401_with_qop_auth(algorithm):
    """D16: qop=auth with nc and cnonce, MD5 and SHA-256, quoted commas and '=' in values."""
    registrar = Registrar(algorithm=algorithm)
    response = await run(registrar)
    assert response.status_code == 200
    first, second = registrar.requests
    fields = authorization_fields(second.get('Authorization'))
    assert fields['qop'] == 'auth' and fields['nc'] == '00000001' and len(fields['cnonce']) >= 8
    assert fields['uri'] == 'sip:example.com' == second.uri and fields['username'] == 'alice'
    assert second.cseq[0] == first.cseq[0] + 1 and second.get('Call-ID') == first.get('Call-ID')
    assert second.vias[0].branch != first.vias[0].branch       # a new transaction
    assert second.get('From') == first.get('From')              # same From tag


async def test_message_answers_407_proxy_challenge():
    registrar = Registrar(proxy=True)
    response = await run(registrar, method='MESSAGE')
    assert response.status_code == 200
    assert registrar.requests[1].get('Proxy-Authorization').startswith('Digest ')
    assert registrar.requests[1].body == b'hello'


async def test_stale_nonce_is_retried_once():
    registrar = Registrar(stale_first=True)
    response = await run(registrar)
    assert response.status_code == 200 and len(registrar.requests) == 3
    assert authorization_fields(registrar.requests[2].get('Authorization'))['nonce'] == 'c2Vjb25k=='


async def test_wrong_password_ends_with_the_403_not_a_loop():
    registrar = Registrar()
    response = await run(registrar, password='wrong')
    assert response.status_code == 403 and len(registrar.requests) == 2


async def test_repeated_challenge_is_final():
    """Credentials refused with a second non-stale 401: the 401 is the final answer."""
    registrar = Registrar()
    registrar.password = 'other'                     # every answer fails ...

    async def handler(ws):                           # ... and is challenged again
        async for frame in ws:
            msg = parse(frame)
            registrar.requests.append(msg)
            await ws.send(serialize(make_response(msg, 401, to_tag='t',
                                                  headers=[registrar.challenge()])).decode())

    registrar.handler = handler
    response = await run(registrar)
    assert response.status_code == 401 and len(registrar.requests) == 2


async def test_no_password_gives_the_401_back():
    registrar = Registrar()
    response = await run(registrar, password='')
    assert response.status_code == 401 and len(registrar.requests) == 1
