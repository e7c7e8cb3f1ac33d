"""aiosip applications talking SIP over real WebSocket connections on 127.0.0.1.

Both roles are aiosip-ws: an ``Application`` that listens (server) and one that
connects (client), plus raw ``websockets`` peers where the test needs to craft
or inspect exact frames.
"""
from __future__ import annotations

import asyncio
import re

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import InvalidStatus

import aiosip_ws
from aiosip_ws import Application, ClientOptions, ConnectionLost, HandshakeError, ServerOptions
from aiosip_ws.core.codec import parse

SDP = ('v=0\r\no=- 4858 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n'
       'm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n'
       'a=fingerprint:sha-256 AB:CD:EF\r\na=setup:actpass\r\n')


class Server:
    """An aiosip-ws server application recording what its routes receive."""

    def __init__(self, options: ServerOptions | None = None) -> None:
        self.app = Application(server_options=options)
        self.requests: asyncio.Queue = asyncio.Queue()
        self.connections: dict[str, object] = {}
        for method in ('REGISTER', 'MESSAGE', 'OPTIONS', 'INVITE'):
            self.app.router.add_route(method, self.on_request)
        self.answer_sdp: str | None = None

    async def on_request(self, dialog, msg):
        await self.requests.put(msg)
        if msg.method == 'REGISTER':
            self.connections[str(aiosip_ws.NameAddr.parse(msg.headers['To']).uri)] = dialog.protocol
            dialog.reply(msg, 200, headers={'Contact': msg.headers['Contact'] + ';expires=60'})
        elif msg.method == 'INVITE':
            dialog.reply(msg, 200, content_type='application/sdp', payload=self.answer_sdp,
                         headers={'Contact': '<sip:server@127.0.0.1;transport=ws>'})
        else:
            dialog.reply(msg, 200)

    async def listen(self, url: str = 'ws://127.0.0.1:0/') -> str:
        listener = await self.app.listen(url)
        return listener.bound_url


@pytest.fixture
async def server():
    srv = Server()
    yield srv
    await srv.app.close()


@pytest.fixture
async def client():
    app = Application()
    yield app
    await app.close()


@pytest.mark.parametrize('scheme', ['ws', 'wss'])
async def test_register_and_message_in_both_directions(scheme, certs):
    """RFC 7118 §4.1, §5.1, §5.2, Appendix B.1; RFC 3261 §18.2.2: REGISTER and MESSAGE both ways.

    Responses and the server's own MESSAGE go over the connection the client opened,
    although Via and Contact name a `.invalid` host.
    """
    srv = Server(ServerOptions(ssl=certs.server_context() if scheme == 'wss' else None))
    client = Application(client_options=ClientOptions(ssl=certs.client_context()))
    inbox: asyncio.Queue = asyncio.Queue()

    async def on_message(dialog, msg):
        await inbox.put(msg)
        dialog.reply(msg, 200)

    client.router.add_route('MESSAGE', on_message)
    try:
        url = await srv.listen('%s://127.0.0.1:0/' % scheme)
        if scheme == 'wss':
            url = url.replace('127.0.0.1', 'localhost')
        reg = await client.start_dialog('sip:alice@example.com', 'sip:alice@example.com',
                                        remote_addr=url)
        response = await asyncio.wait_for(reg.register(expires=60), 5)
        assert response.status_code == 200
        register = await srv.requests.get()
        via = register.raw.vias[0]
        assert via.transport == scheme.upper()                                   # RFC 7118 §5.1
        assert re.fullmatch(r'[a-z0-9]{12}\.invalid', via.host) and via.port is None  # RFC 7118 B.1
        assert via.branch.startswith('z9hG4bK') and len(via.branch) > 7 + 8
        contact = aiosip_ws.NameAddr.parse(register.headers['Contact']).uri
        assert contact.param('transport') == 'ws' and contact.host == via.host   # RFC 7118 §5.2
        assert register.request_uri == 'sip:example.com'                          # D10
        assert response.headers['Contact'].endswith(';expires=60')

        # client -> server MESSAGE on the same connection (RFC 5626 §4.3)
        out = await client.start_dialog('sip:alice@example.com', 'sip:bob@example.com', remote_addr=url)
        response = await asyncio.wait_for(out.send_message('MESSAGE', content_type='text/plain',
                                                           payload='hi server'), 5)
        assert response.status_code == 200
        message = await srv.requests.get()
        assert message.payload == 'hi server' and message.request_uri == 'sip:bob@example.com'
        assert len(client.connections) == 1 and len(srv.app.connections) == 1

        # server -> client MESSAGE over the client's own connection, to its registered Contact
        conn = srv.connections['sip:alice@example.com']
        back = await srv.app.start_dialog('sip:server@example.com', 'sip:alice@example.com',
                                          protocol=conn)
        back.remote_target = str(contact)
        body = 'line one\r\nline two\r\n'
        response = await asyncio.wait_for(back.send_message('MESSAGE', content_type='text/plain',
                                                            payload=body), 5)
        assert response.status_code == 200
        received = await inbox.get()
        assert received.payload == body and received.request_uri == str(contact)
        assert received.raw.vias[0].transport == scheme.upper()
    finally:
        await client.close()
        await srv.app.close()


async def test_invite_sdp_arrives_byte_identical(server, client):
    """D1, RFC 3261 §20.14: a multi-line SDP offer and answer survive byte for byte."""
    server.answer_sdp = SDP.replace('actpass', 'active')
    url = await server.listen()
    dialog = await client.start_dialog('sip:alice@example.com', 'sip:bob@example.com', remote_addr=url)
    future = dialog.send_message('INVITE', content_type='application/sdp', payload=SDP)
    response = await asyncio.wait_for(future, 5)
    invite = await server.requests.get()
    assert invite.raw.body == SDP.encode() and invite.payload == SDP
    assert invite.raw.get('Content-Length') == str(len(SDP.encode()))
    assert response.status_code == 200 and response.raw.body == server.answer_sdp.encode()
    assert dialog.remote_target == 'sip:server@127.0.0.1;transport=ws'


async def raw_exchange(url: str, data, *, wait: bool = True):
    """Send one WebSocket message as a raw client; return the first reply (or None)."""
    async with connect(url, subprotocols=['sip'], proxy=None, open_timeout=5) as ws:
        await ws.send(data)
        if not wait:
            return None
        return await asyncio.wait_for(ws.recv(), 5)


def raw_request(method: str, *extra: str, body: str = '', content_length: int | None = None,
                uri: str = 'sip:bob@example.com') -> str:
    lines = ['%s %s SIP/2.0' % (method, uri), 'Via: SIP/2.0/WS raw.invalid;branch=z9hG4bKraw1',
             'From: <sip:raw@example.com>;tag=r1', 'To: <sip:bob@example.com>', 'Call-ID: raw-1',
             'CSeq: 5 %s' % method, 'Max-Forwards: 70', *extra]
    if content_length is not None:
        lines.append('Content-Length: %d' % content_length)
    return '\r\n'.join(lines) + '\r\n\r\n' + body


async def test_binary_frame_request_is_processed(server):
    """RFC 7118 §4.2 (RFC7118-4.2-a): a SIP message in a binary WebSocket message is accepted."""
    url = await server.listen()
    reply = await raw_exchange(url, raw_request('MESSAGE', body='binary hello').encode())
    assert isinstance(reply, str) and reply.startswith('SIP/2.0 200 OK\r\n')
    assert (await server.requests.get()).payload == 'binary hello'


async def test_non_utf8_message_goes_out_in_a_binary_frame(certs):
    """RFC 7118 §4.2 (RFC7118-4.2-b): the server sends a message that is not valid UTF-8 as a binary frame."""
    received: asyncio.Queue = asyncio.Queue()

    async def peer(ws):
        async for frame in ws:
            await received.put(frame)

    async with serve(peer, '127.0.0.1', 0, subprotocols=['sip']) as raw_server:
        port = raw_server.sockets[0].getsockname()[1]
        app = Application()
        try:
            dialog = await app.start_dialog('sip:a@example.com', 'sip:b@example.com',
                                            remote_addr='ws://127.0.0.1:%d/' % port)
            dialog.send_message('MESSAGE', content_type='application/octet-stream',
                                payload=b'\xff\xfe\x00\x01')
            dialog.send_message('MESSAGE', content_type='text/plain', payload='plain text')
            first = await asyncio.wait_for(received.get(), 5)
            second = await asyncio.wait_for(received.get(), 5)
        finally:
            await app.close()
    assert isinstance(first, bytes) and first.endswith(b'\r\n\r\n\xff\xfe\x00\x01')
    assert isinstance(second, str) and second.endswith('\r\n\r\nplain text')


async def test_message_without_content_length(server):
    """RFC 7118 §5 (RFC7118-5-c): no Content-Length; the body is the rest of the WebSocket message."""
    url = await server.listen()
    reply = await raw_exchange(url, raw_request('MESSAGE', 'Content-Type: text/plain',
                                                body='no length\r\nline 2'))
    assert reply.startswith('SIP/2.0 200 OK')
    assert (await server.requests.get()).raw.body == b'no length\r\nline 2'


async def test_content_length_shorter_than_body_discards_the_rest(server):
    """RFC 3261 §18.3 (RFC3261-18.3-a): what follows Content-Length is discarded."""
    url = await server.listen()
    reply = await raw_exchange(url, raw_request('MESSAGE', body='0123456789EXTRA', content_length=10))
    assert reply.startswith('SIP/2.0 200 OK')
    assert (await server.requests.get()).payload == '0123456789'


async def test_content_length_longer_than_body_gets_400_at_once(server):
    """RFC 3261 §18.3 (RFC3261-18.3-a): 400 Bad Request, without waiting for more bytes."""
    url = await server.listen()
    reply = await raw_exchange(url, raw_request('MESSAGE', body='short', content_length=100))
    response = parse(reply)
    assert response.status == 400 and response.get('Call-ID') == 'raw-1'
    assert response.cseq == (5, 'MESSAGE') and response.get('Via').endswith('z9hG4bKraw1')
    assert server.requests.empty()


async def test_compact_and_oddly_spaced_headers_over_the_wire(server):
    """D2, D3: compact names, `Name:value`, tabs and Kamailio's double space all parse."""
    url = await server.listen()
    message = ('MESSAGE sip:bob@example.com SIP/2.0\r\n'
               'v:SIP/2.0/WS  raw.invalid;branch=z9hG4bKodd\r\n'
               'f :\t<sip:raw@example.com>;tag=x1\r\n'
               't:<sip:bob@example.com>\r\n'
               'i:odd-1\r\n'
               'CSeq:  9 MESSAGE\r\n'
               'c: text/plain\r\n'
               'l:4\r\n\r\nodd!')
    reply = parse(await raw_exchange(url, message))
    assert reply.status == 200 and reply.get('Call-ID') == 'odd-1'
    assert reply.get('Via') == 'SIP/2.0/WS  raw.invalid;branch=z9hG4bKodd'
    request = await server.requests.get()
    assert request.payload == 'odd!' and request.cseq == 9 and request.headers['Call-ID'] == 'odd-1'


async def test_crlf_ping_is_answered_and_never_reaches_sip(server):
    """RFC 7118 §6: `\\r\\n\\r\\n` is answered `\\r\\n` on the same connection; no SIP is produced."""
    url = await server.listen()
    async with connect(url, subprotocols=['sip'], proxy=None) as ws:
        await ws.send('\r\n\r\n')
        assert await asyncio.wait_for(ws.recv(), 2) == '\r\n'
        await ws.send(b'\r\n\r\n')
        assert await asyncio.wait_for(ws.recv(), 2) == '\r\n'
        await ws.send('\r\n')                       # a pong: swallowed, no answer
        await ws.send(raw_request('OPTIONS', uri='sip:example.com').replace('bob@', ''))
        reply = await asyncio.wait_for(ws.recv(), 2)
        assert reply.startswith('SIP/2.0 200 OK')
    assert (await server.requests.get()).method == 'OPTIONS' and server.requests.empty()


async def test_client_sends_crlf_pings_at_an_interval():
    """RFC 5626 §4.4.1 (RFC5626-4.4.1-a): with crlf_ping_interval the client pings and takes the pong."""
    seen: list[str] = []

    async def peer(ws):
        async for frame in ws:
            seen.append(frame)
            if frame == '\r\n\r\n':
                await ws.send('\r\n')

    async with serve(peer, '127.0.0.1', 0, subprotocols=['sip']) as raw_server:
        port = raw_server.sockets[0].getsockname()[1]
        app = Application(client_options=ClientOptions(crlf_ping_interval=0.1))
        try:
            conn = await app.connect('ws://127.0.0.1:%d/' % port)
            await asyncio.sleep(0.5)
            assert conn.is_open
        finally:
            await app.close()
    assert seen.count('\r\n\r\n') >= 2


@pytest.mark.parametrize('offer', [None, ['chat']])
async def test_handshake_without_sip_is_refused_with_400(server, offer):
    """RFC 6455 §4.2.2 (RFC6455-4.2.2-a): no `sip` offered: HTTP 400, as Kamailio does."""
    url = await server.listen()
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, subprotocols=offer, proxy=None):
            pass
    assert info.value.response.status_code == 400


async def test_origin_allow_list():
    """RFC 7118 Appendix A.1: a forbidden Origin gets 403; an allowed one and a missing one get 101."""
    srv = Server(ServerOptions(allowed_origins=['https://phone.example.com']))
    try:
        url = await srv.listen()
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, subprotocols=['sip'], proxy=None, origin='https://evil.example'):
                pass
        assert info.value.response.status_code == 403
        async with connect(url, subprotocols=['sip'], proxy=None,
                           origin='https://phone.example.com') as ws:
            assert ws.subprotocol == 'sip'
        async with connect(url, subprotocols=['sip'], proxy=None) as ws:
            assert ws.subprotocol == 'sip'
    finally:
        await srv.app.close()


async def test_client_handshake_offers_sip_and_sends_origin_and_headers():
    """RFC 7118 §4.1, §7: `sip` offered; Origin, Cookie and Authorization options are sent."""
    seen = {}

    def record(connection, request):
        seen.update((name, request.headers[name]) for name in request.headers)

    async with serve(lambda ws: ws.wait_closed(), '127.0.0.1', 0, subprotocols=['sip'],
                     process_request=record) as raw_server:
        port = raw_server.sockets[0].getsockname()[1]
        options = ClientOptions(origin='https://app.example.com',
                                headers={'Cookie': 'sid=abc', 'Authorization': 'Bearer t0k3n'})
        app = Application(client_options=options)
        try:
            conn = await app.connect('ws://127.0.0.1:%d/sip' % port)
            assert conn.websocket.subprotocol == 'sip'
        finally:
            await app.close()
    assert 'sip' in [p.strip() for p in seen['sec-websocket-protocol'].split(',')]
    assert seen['origin'] == 'https://app.example.com'
    assert seen['cookie'] == 'sid=abc' and seen['authorization'] == 'Bearer t0k3n'


async def test_server_that_does_not_select_sip_is_an_error():
    """RFC 7118 §4.1 (RFC7118-4.1-c): a 101 without `sip` is a transport error that says so."""
    async with serve(lambda ws: ws.wait_closed(), '127.0.0.1', 0,
                     select_subprotocol=lambda conn, offered: None) as raw_server:
        port = raw_server.sockets[0].getsockname()[1]
        app = Application()
        try:
            with pytest.raises(HandshakeError, match='did not select the "sip"'):
                await app.start_dialog('sip:a@example.com', 'sip:a@example.com',
                                       remote_addr='ws://127.0.0.1:%d/' % port)
        finally:
            await app.close()


async def test_refused_handshake_is_a_transport_error(server):
    """RFC 7118 §4.1 (RFC7118-4.1-e): HTTP errors and refused TCP connections become HandshakeError."""
    url = await server.listen('ws://127.0.0.1:0/only-here')
    app = Application()
    try:
        with pytest.raises(HandshakeError, match='HTTP 404'):
            await app.connect(url.replace('/only-here', '/elsewhere'))
        await app.connect(url)
        with pytest.raises(HandshakeError, match='cannot connect'):
            await app.connect('ws://127.0.0.1:1/')
    finally:
        await app.close()


async def test_one_connection_is_reused_for_one_url(server, client):
    """RFC 5626 §4.3: REGISTER then OPTIONS to the same URL share one WebSocket connection."""
    url = await server.listen()
    first = await client.start_dialog('sip:alice@example.com', 'sip:alice@example.com', remote_addr=url)
    second = await client.start_dialog('sip:alice@example.com', 'sip:example.com', remote_addr=url)
    assert first.protocol is second.protocol
    assert (await asyncio.wait_for(first.register(), 5)).status_code == 200
    assert (await asyncio.wait_for(second.send_message('OPTIONS'), 5)).status_code == 200
    assert len(server.app.connections) == 1


async def test_pending_transaction_fails_when_the_connection_closes():
    """A transaction waiting on a connection that closes fails at once with ConnectionLost."""
    async def silent(ws):
        await ws.recv()
        await ws.close(1001)

    async with serve(silent, '127.0.0.1', 0, subprotocols=['sip']) as raw_server:
        port = raw_server.sockets[0].getsockname()[1]
        app = Application()
        try:
            dialog = await app.start_dialog('sip:a@example.com', 'sip:b@example.com',
                                            remote_addr='ws://127.0.0.1:%d/' % port)
            with pytest.raises(ConnectionLost, match='closed'):
                await asyncio.wait_for(dialog.send_message('MESSAGE', payload='x'), 5)
        finally:
            await app.close()


async def test_transaction_times_out_with_timer_f():
    """RFC 7118 §5 (RFC7118-5-a): no retransmission over WS; Timer F (configurable) ends the transaction."""
    frames: list[str] = []

    async def silent(ws):
        async for frame in ws:
            frames.append(frame)

    async with serve(silent, '127.0.0.1', 0, subprotocols=['sip']) as raw_server:
        port = raw_server.sockets[0].getsockname()[1]
        app = Application(client_options=ClientOptions(transaction_timeout=0.3))
        try:
            dialog = await app.start_dialog('sip:a@example.com', 'sip:b@example.com',
                                            remote_addr='ws://127.0.0.1:%d/' % port)
            with pytest.raises(aiosip_ws.TransactionTimeout, match='Timer F'):
                await asyncio.wait_for(dialog.send_message('MESSAGE', payload='x'), 5)
        finally:
            await app.close()
    assert len(frames) == 1                       # sent once, never retransmitted


async def test_request_without_route_gets_405_with_allow(server):
    url = await server.listen()
    reply = parse(await raw_exchange(url, raw_request('SUBSCRIBE', 'Event: presence')))
    assert reply.status == 405 and 'MESSAGE' in reply.get('Allow')


async def test_oversize_message_closes_with_1009():
    """RFC 6455 §7.4.1 (PRACTICE-max-size): over max_size the connection closes with 1009."""
    srv = Server(ServerOptions(max_size=2048))
    try:
        url = await srv.listen()
        async with connect(url, subprotocols=['sip'], proxy=None) as ws:
            await ws.send(raw_request('MESSAGE', body='x' * 4096))
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1009
    finally:
        await srv.app.close()
