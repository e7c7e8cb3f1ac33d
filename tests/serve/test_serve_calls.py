"""Calls through `aiosip-ws serve`: INVITE relayed and record-routed, provisional responses,
in-dialog ACK and BYE routed by connection, non-2xx ACKed hop by hop, CANCEL followed."""
from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect

from aiosip_ws import Application
from aiosip_ws.core.codec import SIPMessage, make_response, parse, serialize

SDP = ('v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n'
       'm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n')


async def register_raw(ws, user: str) -> str:
    """REGISTER a raw WebSocket client; returns its Contact host."""
    host = '%s-raw.invalid' % user
    await ws.send('REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKr%s\r\n'
                  'From: <sip:%s@example.com>;tag=r1\r\nTo: <sip:%s@example.com>\r\n'
                  'Call-ID: reg-%s\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n'
                  'Contact: <sip:%s@%s;transport=ws>\r\nExpires: 60\r\n\r\n'
                  % (host, user, user, user, user, user, host))
    assert parse(await asyncio.wait_for(ws.recv(), 5)).status == 200
    return host


async def recv(ws) -> SIPMessage:
    return parse(await asyncio.wait_for(ws.recv(), 5))


def invite(caller_host: str, branch: str = 'z9hG4bKinv1') -> str:
    return ('INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=%s\r\n'
            'From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n'
            'Call-ID: call-1\r\nCSeq: 10 INVITE\r\nMax-Forwards: 70\r\n'
            'Contact: <sip:alice@%s;transport=ws>\r\nContent-Type: application/sdp\r\n\r\n%s'
            % (caller_host, branch, caller_host, SDP))


async def test_call_between_two_aiosip_clients(relay):
    """INVITE with SDP relayed byte for byte and record-routed; 180 then 200 relayed; the
    caller's ACK and BYE reach the callee over its own connection and the 200 comes back
    (with every Via: aiosip's own automatic 200 to BYE copies only the first one, D4)."""
    _, url = relay
    alice, bob = Application(), Application()
    events: asyncio.Queue = asyncio.Queue()

    async def on_invite(dialog, msg):
        bob.dialog = dialog                              # keep the dialog: stay in the call
        await events.put(('INVITE', msg))
        dialog.register_callback('ACK', lambda d, m: events.put_nowait(('ACK', m)))
        dialog.register_callback('BYE', lambda d, m: events.put_nowait(('BYE', m)))
        dialog.reply(msg, 180)
        dialog.reply(msg, 200, content_type='application/sdp', payload=SDP.replace('- 1 1', '- 2 2'))

    bob.router.add_route('INVITE', on_invite)
    try:
        registration = await bob.start_dialog('sip:bob@example.com', 'sip:bob@example.com',
                                              remote_addr=url)
        assert (await asyncio.wait_for(registration.register(), 5)).status_code == 200
        call = await alice.start_dialog('sip:alice@example.com', 'sip:bob@example.com',
                                        remote_addr=url)
        response = await asyncio.wait_for(call.send_message(
            'INVITE', content_type='application/sdp', payload=SDP), 5)
        assert response.status_code == 200
        assert response.raw.body == SDP.replace('- 1 1', '- 2 2').encode()
        assert response.raw.get('Record-Route').endswith(';transport=ws;lr>')
        kind, received = await events.get()
        assert kind == 'INVITE' and received.raw.body == SDP.encode()
        assert len(received.raw.vias) == 2 and received.raw.get('Record-Route')

        call.send_message('ACK')
        kind, ack = await asyncio.wait_for(events.get(), 5)
        assert kind == 'ACK' and ack.raw.uri == call.remote_target
        bye = await asyncio.wait_for(call.send_message('BYE'), 5)
        assert bye.status_code == 200
        kind, received = await asyncio.wait_for(events.get(), 5)
        assert kind == 'BYE' and NameAddr_tag(received.raw.get('To'))
    finally:
        await alice.close()
        await bob.close()


def NameAddr_tag(value: str | None) -> str | None:  # noqa: N802 - reads like the class
    from aiosip_ws.core.sipuri import NameAddr
    return NameAddr.parse(value or '').tag


async def test_busy_callee_is_acked_by_the_server_and_ringing_relayed(relay):
    """180 relayed upstream as it comes; a 486 is relayed and ACKed hop by hop by the
    server (same branch as the INVITE it forwarded); the caller's ACK ends at the server."""
    _, url = relay
    async with connect(url, subprotocols=['sip'], proxy=None) as caller, \
            connect(url, subprotocols=['sip'], proxy=None) as callee:
        caller_host = await register_raw(caller, 'alice')
        await register_raw(callee, 'bob')
        await caller.send(invite(caller_host))
        forwarded = await recv(callee)
        assert forwarded.method == 'INVITE' and forwarded.uri == 'sip:bob@bob-raw.invalid;transport=ws'
        assert forwarded.get('Record-Route') and len(forwarded.vias) == 2
        await callee.send(serialize(make_response(forwarded, 180, to_tag='b1')).decode())
        ringing = await recv(caller)
        assert ringing.status == 180 and len(ringing.vias) == 1
        await callee.send(serialize(make_response(forwarded, 486, to_tag='b1')).decode())
        busy = await recv(caller)
        assert busy.status == 486 and busy.vias[0].branch == 'z9hG4bKinv1'
        ack = await recv(callee)
        assert ack.method == 'ACK' and ack.vias[0].branch == forwarded.vias[0].branch
        assert ack.cseq == (10, 'ACK') and ack.get('To').endswith('tag=b1')
        await caller.send('ACK sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKinv1'
                          '\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b1'
                          '\r\nCall-ID: call-1\r\nCSeq: 10 ACK\r\nMax-Forwards: 70\r\n\r\n' % caller_host)
        await callee.send('\r\n\r\n')                   # nothing else reaches the callee
        assert await asyncio.wait_for(callee.recv(), 5) == '\r\n'


async def test_cancel_is_answered_and_followed_downstream(relay):
    """RFC 3261 16.10: 200 to the CANCEL at once, CANCEL sent on to the callee with the
    forwarded INVITE's branch; the callee's 487 reaches the caller and is ACKed downstream."""
    _, url = relay
    async with connect(url, subprotocols=['sip'], proxy=None) as caller, \
            connect(url, subprotocols=['sip'], proxy=None) as callee:
        caller_host = await register_raw(caller, 'alice')
        await register_raw(callee, 'bob')
        await caller.send(invite(caller_host, branch='z9hG4bKc1'))
        forwarded = await recv(callee)
        await callee.send(serialize(make_response(forwarded, 180, to_tag='b2')).decode())
        assert (await recv(caller)).status == 180
        await caller.send('CANCEL sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKc1'
                          '\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n'
                          'Call-ID: call-1\r\nCSeq: 10 CANCEL\r\nMax-Forwards: 70\r\n\r\n' % caller_host)
        answered = await recv(caller)
        assert answered.status == 200 and answered.cseq == (10, 'CANCEL')
        cancel = await recv(callee)
        assert cancel.method == 'CANCEL' and cancel.vias[0].branch == forwarded.vias[0].branch
        assert cancel.uri == forwarded.uri and len(cancel.vias) == 1
        await callee.send(serialize(make_response(cancel, 200, to_tag='b2')).decode())
        await callee.send(serialize(make_response(forwarded, 487, to_tag='b2')).decode())
        terminated = await recv(caller)
        assert terminated.status == 487 and terminated.cseq == (10, 'INVITE')
        ack = await recv(callee)
        assert ack.method == 'ACK' and ack.cseq == (10, 'ACK')
        # a CANCEL for nothing gets 481
        await caller.send('CANCEL sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKzz'
                          '\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n'
                          'Call-ID: call-9\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\n\r\n' % caller_host)
        assert (await recv(caller)).status == 481
