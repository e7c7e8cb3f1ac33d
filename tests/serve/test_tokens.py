"""Handshake authentication: the ServerOptions.authenticate hook, and serve's JWT check
(``--jwt-secret``), on real WebSocket handshakes over 127.0.0.1."""
from __future__ import annotations

import asyncio
import logging
import time

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from aiosip_ws.errors import HandshakeRefused
from aiosip_ws.options import ServerOptions
from aiosip_ws.serve.auth import TokenAuthenticator
from aiosip_ws.serve.relay import RelayServer
from aiosip_ws.transport.listener import HandshakeRequest
from tests.support.sip import register_request

HOST = '127.0.0.1'
SECRET = 'a secret the nodes share, 32 bytes or more'


def token(sub: str = 'sip:alice@example.com', *, exp: float | None = None,
          secret: str = SECRET, **claims) -> str:
    claims.update(sub=sub, exp=int(exp if exp is not None else time.time() + 60))
    return jwt.encode(claims, secret, algorithm='HS256')


async def refused_status(url: str, **kwargs) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, subprotocols=['sip'], proxy=None, **kwargs):
            pass
    return refused.value.response.status_code


async def test_the_hook_sees_the_handshake_and_its_identity_reaches_the_connection():
    """A sync or async hook gets path, query, cookies, headers and the client address;
    what it returns is the connection's identity; HandshakeRefused is an HTTP refusal
    before any SIP; a hook that raises anything else refuses with 500, logged."""
    seen: list[HandshakeRequest] = []

    async def hook(request: HandshakeRequest) -> str:
        seen.append(request)
        await asyncio.sleep(0)
        if request.query.get('who') == 'nobody':
            raise HandshakeRefused(401, 'who are you?')
        if request.query.get('who') == 'bug':
            raise RuntimeError('a bug in the hook')
        return 'identity of %s' % request.cookies.get('session')

    options = ServerOptions(authenticate=hook)
    async with RelayServer(server_options=options) as server:
        [listener] = await server.start('ws://%s:0/' % HOST)
        url = listener.bound_url
        async with connect(url + 'path?who=alice', subprotocols=['sip'], proxy=None,
                           additional_headers={'Cookie': 'a=1; session=s42'}):
            await asyncio.sleep(0.05)
            [conn] = server.connections
            assert conn.identity == 'identity of s42'
        assert seen[0].path == '/path' and seen[0].query == {'who': 'alice'}
        assert seen[0].remote_addr[0] == HOST and seen[0].headers.get('Cookie')
        assert await refused_status(url + '?who=nobody') == 401
        assert await refused_status(url + '?who=bug') == 500


async def test_a_jwt_binds_the_connection_to_its_sub_and_expires_with_it(caplog):
    """--jwt-secret: no token 401, an expired one 401, a forged or wrongly aimed one 403;
    a good one (in ?token= or a token cookie) binds the connection to its sub: it may
    register and send only as that AOR (403 otherwise), with no Digest challenge; when
    the token expires the connection is closed with 1008.  The token is never logged."""
    caplog.set_level(logging.DEBUG)
    auth = TokenAuthenticator(SECRET, audience='sip-edge', domain='example.com')
    async with RelayServer(server_options=ServerOptions(authenticate=auth)) as server:
        [listener] = await server.start('ws://%s:0/' % HOST)
        url = listener.bound_url
        assert await refused_status(url) == 401
        assert await refused_status(url + '?token=' + token(exp=time.time() - 5,
                                                             aud='sip-edge')) == 401
        forged = token(secret='another secret of 32 bytes or more', aud='sip-edge')
        assert await refused_status(url + '?token=' + forged) == 403
        assert await refused_status(url + '?token=' + token(aud='elsewhere')) == 403

        good = token('alice', aud='sip-edge', exp=time.time() + 1.5)
        async with connect(url + '?token=' + good, subprotocols=['sip'], proxy=None) as ws:
            await ws.send(register_request('bob'))
            refused = await asyncio.wait_for(ws.recv(), 5)
            assert refused.startswith('SIP/2.0 403 ') and 'sip:alice@example.com' in refused
            await ws.send(register_request('alice'))
            assert (await asyncio.wait_for(ws.recv(), 5)).startswith('SIP/2.0 200 ')
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            assert closed.value.rcvd.reason == 'token expired'
        cookie = token('sip:carol@example.com', aud='sip-edge')
        async with connect(url, subprotocols=['sip'], proxy=None,
                           additional_headers={'Cookie': 'token=%s' % cookie}) as ws:
            await ws.send(register_request('carol'))
            assert (await asyncio.wait_for(ws.recv(), 5)).startswith('SIP/2.0 200 ')
    # serve's lines (the test's own websockets client logs its request line, token and all)
    logged = '\n'.join(r.getMessage() for r in caplog.records
                       if not r.name.startswith('websockets.client'))
    assert 'GET /?token=***' in logged                       # websockets.server, redacted
    assert good not in logged and cookie not in logged
    assert 'refused handshake' in logged
