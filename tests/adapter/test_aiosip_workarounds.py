"""Every aiosip 0.2.0 defect aiosip-ws works around, by its D-number in docs/aiosip-0.2.0.rst.

Each test drives the real stack over a real WebSocket on 127.0.0.1 and would
fail if the workaround were removed.
"""
from __future__ import annotations

import asyncio
import logging

import pytest
from multidict import CIMultiDict
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from aiosip_ws import Application, aiosip
from aiosip_ws.core.codec import make_response, parse, serialize


def request(method: str = 'MESSAGE', *, call_id: str = 'w-1', extra: tuple[str, ...] = (),
            to: str = '<sip:bob@example.com>', contact: str | None = None, body: str = '',
            uri: str = 'sip:bob@example.com') -> str:
    lines = ['%s %s SIP/2.0' % (method, uri), 'Via: SIP/2.0/WS w.invalid;branch=z9hG4bKw%s' % call_id,
             'From: <sip:w@example.com>;tag=wt', 'To: %s' % to, 'Call-ID: %s' % call_id,
             'CSeq: 2 %s' % method, 'Max-Forwards: 70', *extra]
    if contact:
        lines.append('Contact: %s' % contact)
    return '\r\n'.join(lines) + '\r\n\r\n' + body


@pytest.fixture
async def echo_server():
    """An aiosip-ws server whose routes reply 200 and record the request."""
    app = Application()
    seen: asyncio.Queue = asyncio.Queue()

    async def route(dialog, msg):
        await seen.put((dialog, msg))
        dialog.reply(msg, 200, headers={'Contact': '<sip:srv@127.0.0.1;transport=ws>'})

    for method in ('REGISTER', 'MESSAGE', 'INVITE', 'OPTIONS'):
        app.router.add_route(method, route)
    listener = await app.listen('ws://127.0.0.1:0/')
    yield listener.bound_url, seen, app
    await app.close()


async def exchange(url: str, *frames: str, replies: int = 1) -> list[str]:
    async with connect(url, subprotocols=['sip'], proxy=None) as ws:
        for frame in frames:
            await ws.send(frame)
        return [await asyncio.wait_for(ws.recv(), 5) for _ in range(replies)]


async def test_d7_flag_parameters_star_and_ipv6_do_not_break_parsing(echo_server):
    """D7: `;ob`, `;lr`, IPv6 hosts in From/To/Contact; the headers stay untouched."""
    url, seen, _ = echo_server
    contact = '<sip:w@[2001:db8::7]:5060;transport=ws;ob>;+sip.instance="<urn:uuid:1-2>";reg-id=1'
    [reply] = await exchange(url, request('REGISTER', contact=contact, to='<sip:w@example.com;lr>',
                                          uri='sip:example.com'))
    assert parse(reply).status == 200
    _, msg = await seen.get()
    assert msg.headers['Contact'] == contact and msg.raw.get('To') == '<sip:w@example.com;lr>'


async def test_d8_stray_response_is_dropped_not_routed(echo_server, caplog):
    """D8: a response for no transaction is dropped and logged, never handed to a route."""
    url, seen, _ = echo_server
    stray = ('SIP/2.0 200 OK\r\nVia: SIP/2.0/WS x.invalid;branch=z9hG4bKnone\r\n'
             'From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: nobody\r\n'
             'CSeq: 1 REGISTER\r\n\r\n')
    with caplog.at_level(logging.INFO, logger='aiosip_ws'):
        [reply] = await exchange(url, stray, request('OPTIONS', uri='sip:example.com'))
    assert parse(reply).cseq == (2, 'OPTIONS')       # the only reply is to the OPTIONS
    _, msg = await seen.get()
    assert msg.method == 'OPTIONS' and seen.empty()
    assert 'no known transaction' in caplog.text


async def test_d8_a_note_to_self_through_a_proxy_reaches_both_dialogs(relay):
    """A MESSAGE to our own AOR comes back through the relay with the Call-ID of the
    dialog that sent it: the incoming one goes to the route, and the 200 still reaches
    the sending dialog (aiosip keys dialogs by Call-ID alone)."""
    _, url = relay
    app = Application()
    inbox: asyncio.Queue = asyncio.Queue()

    async def on_message(dialog, msg):
        dialog.reply(msg, 200)
        await inbox.put(msg.payload)

    app.router.add_route('MESSAGE', on_message)
    try:
        me = 'sip:self@example.com'
        registration = await app.start_dialog(me, me, remote_addr=url)
        assert (await asyncio.wait_for(registration.register(expires=60), 5)).status_code == 200
        chat = await app.start_dialog(me, me, remote_addr=url)
        response = await asyncio.wait_for(
            chat.send_message('MESSAGE', content_type='text/plain', payload='to myself'), 5)
        assert response.status_code == 200
        assert await asyncio.wait_for(inbox.get(), 5) == 'to myself'
    finally:
        await app.close()


async def test_d8_in_dialog_request_for_unknown_dialog_gets_481(echo_server):
    url, seen, _ = echo_server
    [reply] = await exchange(url, request('MESSAGE', to='<sip:bob@example.com>;tag=gone'))
    assert parse(reply).status == 481 and seen.empty()


async def test_d9_d12_reply_goes_back_on_the_arrival_connection_with_copied_headers(echo_server):
    """D9: no connection to the `.invalid` Contact is attempted; D12: Vias, CSeq, tags copied."""
    url, seen, _ = echo_server
    frame = request('MESSAGE', extra=('Via: SIP/2.0/WSS proxy.example.com;branch=z9hG4bKp',),
                    contact='<sip:w@w.invalid;transport=ws>')
    [reply] = await exchange(url, frame)
    response = parse(reply)
    assert response.get_all('Via') == ['SIP/2.0/WS w.invalid;branch=z9hG4bKww-1',
                                       'SIP/2.0/WSS proxy.example.com;branch=z9hG4bKp']
    assert response.cseq == (2, 'MESSAGE') and response.get('Call-ID') == 'w-1'
    assert response.get('From') == '<sip:w@example.com>;tag=wt'
    assert response.get('To').startswith('<sip:bob@example.com>;tag=')


async def test_d11_cseq_number_and_d10_request_uri_are_kept(echo_server):
    url, seen, _ = echo_server
    await exchange(url, request('MESSAGE', uri='sip:bob@10.0.0.7:5060;transport=ws'))
    _, msg = await seen.get()
    assert msg.cseq == 2 and msg.request_uri == 'sip:bob@10.0.0.7:5060;transport=ws'


async def test_d19_failing_route_is_logged_and_answered_500(caplog):
    app = Application()

    async def broken(dialog, msg):
        raise RuntimeError('handler bug')

    app.router.add_route('MESSAGE', broken)
    listener = await app.listen('ws://127.0.0.1:0/')
    try:
        with caplog.at_level(logging.ERROR, logger='aiosip_ws'):
            [reply] = await exchange(listener.bound_url, request())
        assert parse(reply).status == 500
        assert 'handler bug' in caplog.text
    finally:
        await app.close()


async def test_d21_responses_carry_no_max_forwards_and_our_server_header(echo_server):
    url, _, _ = echo_server
    [reply] = await exchange(url, request())
    response = parse(reply)
    assert response.get('Max-Forwards') is None
    assert 'aiosip/0.1.0' not in reply


@pytest.fixture
async def raw_server():
    """A raw WebSocket SIP peer that answers every request with a scripted response."""
    frames: asyncio.Queue = asyncio.Queue()
    script: list = []

    async def peer(ws):
        async for frame in ws:
            await frames.put(frame)
            msg = parse(frame)
            if msg.is_request and msg.method != 'ACK':
                for response in (script.pop(0) if script else [(200, [])]):
                    status, headers = response
                    await ws.send(serialize(make_response(msg, status, to_tag='rt',
                                                          headers=headers)).decode())

    async with serve(peer, '127.0.0.1', 0, subprotocols=['sip']) as server:
        yield 'ws://127.0.0.1:%d/' % server.sockets[0].getsockname()[1], frames, script


async def test_d6_d17_via_and_contact_on_the_wire(raw_server):
    """D6: no `%(protocol)s` or `:None`; D17: Contact keeps `;transport=ws;ob`."""
    url, frames, _ = raw_server
    app = Application()
    try:
        dialog = await app.start_dialog('sip:alice@example.com', 'sip:alice@example.com',
                                        remote_addr=url)
        contact = '<sip:alice@%s;transport=ws;ob>' % dialog.protocol.via_host
        response = await asyncio.wait_for(dialog.register(
            headers=CIMultiDict(Contact=contact), expires=30), 5)
        assert response.status_code == 200
        wire = await frames.get()
        assert wire.startswith('REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS ')
        assert '%(protocol)s' not in wire and ':None' not in wire
        assert parse(wire).get('Contact') == contact
        # the default Contact has the .invalid host and transport=ws (RFC 7118 B.1, §5.2)
        dialog2 = await app.start_dialog('sip:alice@example.com', 'sip:bob@example.com',
                                         remote_addr=url)
        await asyncio.wait_for(dialog2.send_message('OPTIONS'), 5)
        wire = parse(await frames.get())
        assert wire.get('Contact') == '<sip:alice@%s;transport=ws>' % dialog.protocol.via_host
    finally:
        await app.close()


async def test_d4_repeated_contacts_in_a_response_reach_aiosip(raw_server):
    """D4: a 200 OK listing two bindings, as separate headers."""
    url, _, script = raw_server
    script.append([(200, [('Contact', '<sip:a@1.invalid;transport=ws>;expires=60'),
                          ('Contact', '<sip:a@2.invalid;transport=ws;ob>;expires=30')])])
    app = Application()
    try:
        dialog = await app.start_dialog('sip:a@example.com', 'sip:a@example.com', remote_addr=url)
        response = await asyncio.wait_for(dialog.register(), 5)
        assert response.headers.getall('Contact') == [
            '<sip:a@1.invalid;transport=ws>;expires=60', '<sip:a@2.invalid;transport=ws;ob>;expires=30']
    finally:
        await app.close()


async def test_d13_session_progress_does_not_end_the_invite(raw_server):
    """D13: a 183 is provisional: the INVITE future gets the 200 that follows."""
    url, frames, script = raw_server
    script.append([(183, []), (200, [('Contact', '<sip:callee@127.0.0.1;transport=ws>')])])
    app = Application()
    try:
        dialog = await app.start_dialog('sip:a@example.com', 'sip:b@example.com', remote_addr=url)
        response = await asyncio.wait_for(dialog.send_message('INVITE', payload='v=0\r\n',
                                                              content_type='application/sdp'), 5)
        assert response.status_code == 200
        assert dialog.remote_target == 'sip:callee@127.0.0.1;transport=ws'
    finally:
        await app.close()


async def test_d5_bytes_payload_is_sent(raw_server):
    """D5: aiosip cannot take bytes payloads (payload.encode()); aiosip-ws can."""
    url, frames, _ = raw_server
    app = Application()
    try:
        dialog = await app.start_dialog('sip:a@example.com', 'sip:b@example.com', remote_addr=url)
        await asyncio.wait_for(dialog.send_message('MESSAGE', payload=b'\xff\x00bin'), 5)
        frame = await frames.get()
        assert isinstance(frame, bytes) and frame.endswith(b'\r\n\r\n\xff\x00bin')
        assert b'Content-Length: 5\r\n' in frame
    finally:
        await app.close()


async def test_d15_d20_close_leaves_no_connection_or_task(echo_server):
    url, _, server_app = echo_server
    app = Application()
    dialog = await app.start_dialog('sip:a@example.com', 'sip:a@example.com', remote_addr=url)
    await asyncio.wait_for(dialog.register(), 5)
    conn = dialog.protocol
    await app.close()
    assert not app.connections and not conn.is_open and conn.close_code == 1001
    assert 'aiosip' in repr(type(app).__mro__)         # still an aiosip.Application
    assert isinstance(app, aiosip.Application)


async def test_non_2xx_final_response_to_invite_is_acked(raw_server):
    """RFC 3261 17.1.1.3 (aiosip does not do it): the ACK of a 486 keeps the INVITE's
    branch, From, Call-ID and CSeq number, and takes the response's To tag."""
    url, frames, script = raw_server
    script.append([(486, [])])
    app = Application()
    try:
        dialog = await app.start_dialog('sip:a@example.com', 'sip:b@example.com', remote_addr=url)
        response = await asyncio.wait_for(dialog.send_message('INVITE', payload='v=0\r\n',
                                                              content_type='application/sdp'), 5)
        assert response.status_code == 486
        invite, ack = parse(await frames.get()), parse(await asyncio.wait_for(frames.get(), 5))
        assert ack.method == 'ACK' and ack.uri == invite.uri
        assert ack.vias[0].branch == invite.vias[0].branch and ack.cseq == (invite.cseq[0], 'ACK')
        assert ack.get('From') == invite.get('From') and ack.get('To').endswith(';tag=rt')
    finally:
        await app.close()


async def test_d13_d15_a_request_handler_answers_in_dialog_requests_itself():
    """D13: with ``Dialog.request_handler`` set, in-dialog requests (a re-INVITE, its
    ACK, BYE) reach it as codec messages and aiosip sends no automatic 200 (which would
    answer a re-INVITE without its SDP); ``lost_handler`` hears of the closed connection;
    D15: ``Application.end_dialog`` forgets the dialog, so a later BYE gets 481."""
    app = Application()
    handled: asyncio.Queue = asyncio.Queue()
    lost: asyncio.Queue = asyncio.Queue()
    dialogs = []

    async def on_invite(dialog, msg):
        dialogs.append(dialog)
        dialog.request_handler = handled.put_nowait
        dialog.lost_handler = lost.put_nowait
        dialog.reply(msg, 200, content_type='application/sdp', payload='v=0\r\n')

    app.router.add_route('INVITE', on_invite)
    listener = await app.listen('ws://127.0.0.1:0/')
    contact = '<sip:w@w.invalid;transport=ws>'
    try:
        async with connect(listener.bound_url, subprotocols=['sip'], proxy=None) as ws:
            await ws.send(request('INVITE', call_id='h-1', contact=contact))
            answer = parse(await asyncio.wait_for(ws.recv(), 5))
            assert answer.status == 200
            to = answer.get('To')
            await ws.send(request('INVITE', call_id='h-1', to=to, contact=contact, body='v=0\r\n',
                                  extra=('CSeq: 3 INVITE',)).replace('CSeq: 2 INVITE\r\n', ''))
            reinvite = await asyncio.wait_for(handled.get(), 5)
            assert reinvite.method == 'INVITE' and reinvite.cseq == (3, 'INVITE')
            with pytest.raises(asyncio.TimeoutError):                 # no automatic 200
                await asyncio.wait_for(ws.recv(), 0.3)
            ws_dialog = dialogs[0]
            await ws.send(serialize(make_response(parse(request('INVITE', call_id='h-1')), 200,
                                                  to_tag='x')).decode())   # stray: dropped
            app.end_dialog(ws_dialog)
            await ws.send(request('BYE', call_id='h-1', to=to))
            assert parse(await asyncio.wait_for(ws.recv(), 5)).status == 481
            assert handled.empty()
        # the dialog was ended before the connection closed: its lost_handler is not called
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(lost.get(), 0.3)

        dialogs.clear()
        async with connect(listener.bound_url, subprotocols=['sip'], proxy=None) as ws:
            await ws.send(request('INVITE', call_id='h-2', contact=contact))
            assert parse(await asyncio.wait_for(ws.recv(), 5)).status == 200
        assert await asyncio.wait_for(lost.get(), 5) is None            # a clean close
    finally:
        await app.close()
