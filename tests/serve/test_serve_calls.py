"""Calls through `aiosip-ws serve`: INVITE relayed and record-routed, 100 Trying from serve,
provisional responses, in-dialog ACK and BYE routed by connection, non-2xx ACKed hop by
hop, CANCEL followed; forking to every binding of an AOR (RFC 3261 §16.6-16.7)."""
from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect

from aiosip_ws import Application
from aiosip_ws.core.codec import make_response, serialize
from aiosip_ws.serve.relay import RelayServer
from tests.support.sip import (
    SDP,
    answer,
    answered_here_cancelled_there,
    invite,
    message,
    quiet,
    recv,
    register_device,
    register_raw,
)


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
        trying = await recv(caller)                     # RFC 3261 §16.2: at once, no To tag
        assert trying.status == 100 and 'tag=' not in trying.get('To')
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
        assert (await recv(caller)).status == 100
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


# -- forking (RFC 3261 §16.6-16.7) ----------------------------------------------------------




async def test_a_message_reaches_every_device_and_the_first_200_wins(relay):
    """Two bindings of bob: both get the MESSAGE at once; the first 200 goes back, the
    second is absorbed; a non-INVITE is never CANCELled; a downstream 100 is not relayed
    and serve sends none for a non-INVITE."""
    _, url = relay
    async with connect(url, subprotocols=['sip'], proxy=None) as caller, \
            connect(url, subprotocols=['sip'], proxy=None) as laptop, \
            connect(url, subprotocols=['sip'], proxy=None) as phone:
        caller_host = await register_raw(caller, 'alice')
        await register_device(laptop, 'bob', 'laptop')
        await register_device(phone, 'bob', 'phone')
        await caller.send(message(caller_host))
        to_laptop, to_phone = await recv(laptop), await recv(phone)
        assert to_laptop.body == to_phone.body == b'to every device'
        assert to_laptop.vias[0].branch != to_phone.vias[0].branch
        await answer(phone, to_phone, 100, 'p')
        await answer(phone, to_phone, 200, 'p')
        final = await recv(caller)
        assert final.status == 200 and final.get('To').endswith('tag=p')
        await answer(laptop, to_laptop, 200, 'l')
        await quiet(caller)
        await quiet(laptop)
        await quiet(phone)


async def test_an_invite_rings_every_device_and_the_others_are_cancelled(relay):
    """Both devices ring (their 180s relayed); the one that answers gets the call; the
    other gets a CANCEL with Reason cause=200 (RFC 3326) and its 487 is ACKed by serve,
    not relayed; the caller's ACK reaches the answering device."""
    _, url = relay
    async with connect(url, subprotocols=['sip'], proxy=None) as caller, \
            connect(url, subprotocols=['sip'], proxy=None) as laptop, \
            connect(url, subprotocols=['sip'], proxy=None) as phone:
        caller_host = await register_raw(caller, 'alice')
        await register_device(laptop, 'bob', 'laptop')
        phone_host = await register_device(phone, 'bob', 'phone')
        await caller.send(invite(caller_host))
        assert (await recv(caller)).status == 100
        to_laptop, to_phone = await recv(laptop), await recv(phone)
        await answer(laptop, to_laptop, 180, 'l')
        await answer(phone, to_phone, 180, 'p')
        ringing = {(await recv(caller)).get('To'), (await recv(caller)).get('To')}
        assert {r.rsplit('tag=', 1)[1] for r in ringing} == {'l', 'p'}
        await answered_here_cancelled_there(caller, phone, to_phone, phone_host, laptop, to_laptop)
        await caller.send('ACK sip:bob@%s;transport=ws SIP/2.0\r\nVia: SIP/2.0/WS %s;'
                          'branch=z9hG4bKack\r\nFrom: <sip:alice@example.com>;tag=a1\r\n'
                          'To: <sip:bob@example.com>;tag=p\r\nCall-ID: call-1\r\n'
                          'CSeq: 10 ACK\r\nMax-Forwards: 70\r\n\r\n' % (phone_host, caller_host))
        assert (await recv(phone)).method == 'ACK'
        await quiet(caller)


async def test_higher_q_first_then_the_next_group(relay):
    """q=1.0 is tried alone first; its 486 sends the INVITE on to the q=0.5 device, whose
    200 is the answer (§16.6: sequential between q groups)."""
    _, url = relay
    async with connect(url, subprotocols=['sip'], proxy=None) as caller, \
            connect(url, subprotocols=['sip'], proxy=None) as desk, \
            connect(url, subprotocols=['sip'], proxy=None) as mobile:
        caller_host = await register_raw(caller, 'alice')
        await register_device(mobile, 'bob', 'mobile', q='0.5')
        await register_device(desk, 'bob', 'desk', q='1.0')
        await caller.send(invite(caller_host))
        assert (await recv(caller)).status == 100
        first = await recv(desk)
        await quiet(mobile)                                    # not yet
        await answer(desk, first, 486, 'd')
        assert (await recv(desk)).method == 'ACK'
        second = await recv(mobile)
        assert second.method == 'INVITE'
        await answer(mobile, second, 200, 'm')
        assert (await recv(caller)).status == 200


async def test_the_best_final_response_wins_and_challenges_are_merged(relay):
    """No 2xx: the lowest class wins (486 over 503; a 503 would become 500); two 401s
    give one 401 carrying both challenges (§16.7 steps 6-7); a 6xx ends the fork at once
    and CANCELs the other INVITE branches."""
    _, url = relay
    async with connect(url, subprotocols=['sip'], proxy=None) as caller, \
            connect(url, subprotocols=['sip'], proxy=None) as one, \
            connect(url, subprotocols=['sip'], proxy=None) as two:
        caller_host = await register_raw(caller, 'alice')
        await register_device(one, 'bob', 'one')
        await register_device(two, 'bob', 'two')

        await caller.send(message(caller_host))
        a, b = await recv(one), await recv(two)
        await answer(one, a, 503, 'o')
        await answer(two, b, 486, 't')
        assert (await recv(caller)).status == 486

        await caller.send(message(caller_host).replace('z9hG4bKm1', 'z9hG4bKm2')
                          .replace('CSeq: 1 ', 'CSeq: 2 '))
        a, b = await recv(one), await recv(two)
        await answer(one, a, 401, 'o', headers=[('WWW-Authenticate', 'Digest realm="one"')])
        await answer(two, b, 401, 't', headers=[('WWW-Authenticate', 'Digest realm="two"')])
        merged = await recv(caller)
        assert merged.status == 401
        assert sorted(merged.get_all('WWW-Authenticate')) == ['Digest realm="one"',
                                                              'Digest realm="two"']

        await caller.send(invite(caller_host, branch='z9hG4bKinv6'))
        assert (await recv(caller)).status == 100
        a, b = await recv(one), await recv(two)
        await answer(one, a, 180, 'o')
        assert (await recv(caller)).status == 180
        await answer(two, b, 603, 't')
        declined = await recv(caller)
        assert declined.status == 603
        assert (await recv(two)).method == 'ACK'
        cancel = await recv(one)
        assert cancel.method == 'CANCEL' and 'cause=603' in cancel.get('Reason')


async def test_timer_c_cancels_a_branch_that_rings_for_ever():
    """A branch that rings and never answers is CANCELled when Timer C fires, and the
    caller gets 408 (§16.8); PUBLISH gets 489 Bad Event."""
    server = RelayServer(timer_c=0.5)
    [listener] = await server.start('ws://127.0.0.1:0/')
    url = listener.bound_url
    try:
        async with connect(url, subprotocols=['sip'], proxy=None) as caller, \
                connect(url, subprotocols=['sip'], proxy=None) as callee:
            caller_host = await register_raw(caller, 'alice')
            await register_raw(callee, 'bob')
            await caller.send(invite(caller_host))
            assert (await recv(caller)).status == 100
            forwarded = await recv(callee)
            await answer(callee, forwarded, 180, 'b')
            assert (await recv(caller)).status == 180
            cancel = await recv(callee)
            assert cancel.method == 'CANCEL'
            assert (await recv(caller)).status == 408
            await caller.send(message(caller_host).replace('MESSAGE', 'PUBLISH'))
            published = await recv(caller)
            assert published.status == 489
    finally:
        await server.close()
