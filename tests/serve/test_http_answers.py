"""Every HTTP answer serve gives on its listening ports (pages and refusals, ws:// and
wss://) is one a strict client accepts: exactly one Date, one Content-Length (the body's
size) and one Content-Type.  Each is read off a raw socket, parsed by h11 and its header
names counted on the raw bytes (h11 merges equal Content-Lengths and takes two
Content-Types; Prometheus, Go and nginx refuse both)."""
from __future__ import annotations

import asyncio
import base64
import os

import pytest
import websockets
from websockets.http11 import Request

from aiosip_ws.errors import HandshakeRefused
from aiosip_ws.options import ServerOptions
from aiosip_ws.serve.relay import RelayServer
from aiosip_ws.transport.listener import listen
from tests.support.net import header_counts, http_get, http_request

HOST = '127.0.0.1'
#: websockets 17 hands any method to serve (HEAD answered, others 405) and answers an
#: over-long request line or head itself (414, 431); 15 and 16 close such connections
#: without an answer
METHODS_REACH_SERVE = 'method' in Request.__dataclass_fields__


def upgrade(*extra: str, protocol: str | None = 'sip', version: str = '13') -> tuple[str, ...]:
    """The headers of a WebSocket opening handshake."""
    fields = ('Upgrade: websocket', 'Connection: Upgrade',
              'Sec-WebSocket-Key: %s' % base64.b64encode(os.urandom(16)).decode(),
              'Sec-WebSocket-Version: %s' % version)
    if protocol:
        fields += ('Sec-WebSocket-Protocol: %s' % protocol,)
    return fields + extra


def authenticate(request):
    if 'boom' in request.query:
        raise RuntimeError('a broken authentication hook')
    if 'deny' in request.query:
        raise HandshakeRefused(401, 'Unauthorized')
    return None


async def check(port: int, path: str, status: int, *, method: str = 'GET',
                headers: tuple[str, ...] = (), source: str | None = None, ssl=None,
                **expected: str) -> bytes:
    """Fetch, assert the status, one Date, one Content-Length equal to the body's size and
    one Content-Type, and the ``expected`` header values; the body."""
    got, fields, body, raw = await http_request(port, path, method=method, headers=headers,
                                                source=source, ssl=ssl)
    counts = header_counts(raw)
    assert got == status, raw[:300]
    assert (counts['date'], counts['content-length'], counts['content-type']) == (1, 1, 1), raw
    assert 'transfer-encoding' not in counts
    if method == 'HEAD':
        assert body == b'' and raw.endswith(b'\r\n\r\n')        # no content after the head
    else:
        assert int(fields['content-length']) == len(body) == len(raw.split(b'\r\n\r\n', 1)[1])
    for name, value in expected.items():
        assert fields[name.replace('_', '-')] == value, (name, fields)
    return body


@pytest.mark.parametrize('scheme', ['ws', 'wss'])
async def test_every_answer_has_one_framing_header_each(scheme, certs):
    ssl = certs.client_context() if scheme == 'wss' else None
    options = ServerOptions(ssl=certs.server_context() if scheme == 'wss' else None,
                            allowed_origins=['https://phone.example.com'],
                            max_connections=1, authenticate=authenticate, retry_after=5)
    async with RelayServer(server_options=options, admin_allow=['127.0.0.1/32']) as server:
        [listener] = await server.start('%s://%s:0/sip' % (scheme, HOST))
        port = listener.port

        # the pages
        metrics = await check(port, '/metrics', 200, ssl=ssl)
        assert b'aiosip_ws_connections ' in metrics
        assert await check(port, '/healthz', 200, ssl=ssl) == b'ok\n'
        assert await check(port, '/registrations', 200, ssl=ssl,
                           content_type='application/json') == b'[]\n'
        if METHODS_REACH_SERVE:
            await check(port, '/metrics', 200, method='HEAD', ssl=ssl)
            await check(port, '/healthz', 200, method='HEAD', ssl=ssl, content_length='3')
        # the refusals
        await check(port, '/metrics', 403, source='127.0.0.2', ssl=ssl)
        await check(port, '/sip', 403, headers=upgrade('Origin: https://evil.example.com'), ssl=ssl)
        await check(port, '/elsewhere', 404, headers=upgrade(), ssl=ssl)
        await check(port, '/sip', 400, headers=upgrade(protocol=None), ssl=ssl)
        await check(port, '/sip', 426, headers=upgrade(version='8'), ssl=ssl,
                    sec_websocket_version='13', upgrade='websocket')
        await check(port, '/sip', 426, ssl=ssl)                  # a plain GET, no Upgrade
        await check(port, '/sip?deny', 401, headers=upgrade(), ssl=ssl)
        await check(port, '/sip?boom', 500, headers=upgrade(), ssl=ssl)
        if METHODS_REACH_SERVE:                # websockets' own refusals, 17 and later
            await check(port, '/' + 'x' * 9000, 414, ssl=ssl)
            await check(port, '/sip', 431, headers=tuple('X-%d: y' % n for n in range(200)),
                        ssl=ssl)
        if METHODS_REACH_SERVE:
            await check(port, '/metrics', 405, method='POST', ssl=ssl, allow='GET, HEAD')
            await check(port, '/sip', 405, method='PUT', headers=upgrade(), ssl=ssl, allow='GET')

        # 503 with Retry-After: the one connection allowed is taken, then serve drains
        client = await websockets.connect(listener.bound_url, subprotocols=['sip'], ssl=ssl,
                                          proxy=None)
        try:
            body = await check(port, '/sip', 503, headers=upgrade(), ssl=ssl)
            assert b'too many connections' in body
            fields = (await http_request(port, '/sip', headers=upgrade(), ssl=ssl))[1]
            assert 5 <= int(fields['retry-after']) <= 10
        finally:
            await client.close()
        await asyncio.sleep(0.05)
        draining = asyncio.ensure_future(server.drain(0.1))
        await asyncio.sleep(0.02)
        assert await check(port, '/healthz', 503, ssl=ssl) == b'draining\n'
        await check(port, '/sip', 503, headers=upgrade(), ssl=ssl)
        await draining


async def test_listen_with_a_plain_http_handler_answers_whole():
    """A library user's http_handler gets the same one-field-each framing."""
    def pages(path, headers, client):
        return (200, 'text/html; charset=utf-8', b'<p>hi</p>') if path == '/page' else None

    class Quiet:
        def connection_made(self, conn): ...
        def message_received(self, conn, message): ...
        def connection_lost(self, conn, exc): ...

    listener = await listen('ws://%s:0/' % HOST, Quiet(), ServerOptions(http_handler=pages))
    try:
        assert await check(listener.port, '/page', 200,
                           content_type='text/html; charset=utf-8') == b'<p>hi</p>'
    finally:
        await listener.close()


async def test_the_suite_helper_refuses_duplicate_framing_headers():
    """The helper itself fails on the fault serve had (two Content-Lengths, two
    Content-Types), so that the next such fault fails loudly."""
    answers = [b'HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Type: text/plain\r\n'
               b'Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nok',
               b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok',
               b'HTTP/1.1 200 OK\r\nDate: x\r\nDate: y\r\nContent-Length: 2\r\n\r\nok']

    async def answer(reader, writer):
        await reader.readuntil(b'\r\n\r\n')
        writer.write(answers.pop(0))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for _ in range(3):
            with pytest.raises(Exception, match='more than once|Content-Length'):
                await http_get(port, '/')
    finally:
        server.close()
        await server.wait_closed()
