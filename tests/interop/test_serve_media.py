"""serve anchoring calls on Debian's rtpengine-daemon (10.5), in-process on 127.0.0.1:
alice is a browser on a WebSocket (WebRTC SDP), bob a phone on UDP (plain RTP/AVP SDP).

Each scenario checks what each party receives (the SDP of its own profile: ICE, DTLS and
rtcp-mux towards alice, none of them towards bob) and that rtpengine holds no session of
its own within 2 s of the call's end, whichever way it ended: BYE from either side,
CANCEL while ringing, 486, a late offer, early media in a 183, the caller's connection
lost, a 2xx never ACKed, Timer C; the relay gone before a call (503 with Retry-After)
and during one (a re-INVITE gets 500 with a Warning, BYE still passes), and a relay that
does not answer skipped for the next.  A re-INVITE
(hold), one without SDP (offer in the 2xx, answer in the ACK) and an UPDATE are new
offers and answers through rtpengine.  /metrics counts the ng commands."""
from __future__ import annotations

import asyncio
import contextlib

import pytest
from websockets.asyncio.client import connect

from aiosip_ws.core.codec import make_response, serialize
from aiosip_ws.core.mediaflags import PLAIN, WEBRTC, sdp_profile
from aiosip_ws.serve import media as media_module
from aiosip_ws.serve.media import MediaSettings
from aiosip_ws.serve.relay import RelayServer
from aiosip_ws.transport.rtpengine import open_ng
from tests.interop.conftest import rtpengine_available
from tests.support.net import free_port, http_get
from tests.support.rtpengine import rtpengine, stop_rtpengine
from tests.support.sdp import BROWSER_OFFER, PHONE_ANSWER, PHONE_OFFER
from tests.support.sip import UdpUA, recv, register_raw

pytestmark = pytest.mark.interop

#: the browser's answer to an offer (DTLS active: the browser starts DTLS)
BROWSER_ANSWER = BROWSER_OFFER.replace('a=setup:actpass', 'a=setup:active')


class Call:
    """serve with rtpengine, bob registered over UDP and alice over WebSocket."""

    def __init__(self, server, bob, alice, alice_host, ng):
        self.server, self.bob, self.alice, self.alice_host, self.ng = (server, bob, alice,
                                                                       alice_host, ng)

    def alice_invite(self, call_id, body=BROWSER_OFFER, branch='z9hG4bKai1'):
        return ('INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=%s\r\n'
                'From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n'
                'Call-ID: %s\r\nCSeq: 10 INVITE\r\nMax-Forwards: 70\r\n'
                'Contact: <sip:alice@%s;transport=ws>\r\n%s\r\n%s'
                % (self.alice_host, branch, call_id, self.alice_host,
                   'Content-Type: application/sdp\r\n' if body else '', body))

    def alice_in_dialog(self, method, call_id, to_tag, routes, *, cseq=10, body='',
                        branch='z9hG4bKad1'):
        return ('%s sip:bob@127.0.0.1:%d SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=%s\r\n'
                '%sFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=%s\r\n'
                'Call-ID: %s\r\nCSeq: %d %s\r\nMax-Forwards: 70\r\n%s\r\n%s'
                % (method, self.bob.addr[1], self.alice_host, branch,
                   ''.join('Route: %s\r\n' % r for r in reversed(routes)), to_tag, call_id,
                   cseq, method, 'Content-Type: application/sdp\r\n' if body else '', body))

    def bob_in_dialog(self, method, call_id, from_tag, routes, *, cseq=1, branch='z9hG4bKbd1'):
        return self.bob.request(method, 'sip:alice@%s;transport=ws' % self.alice_host,
                                to='<sip:alice@example.com>;tag=a1', call_id=call_id,
                                cseq=cseq, branch=branch,
                                extra=['Route: %s' % r for r in routes]).replace(
            'From: <sip:bob@example.com>;tag=b1', 'From: <sip:bob@example.com>;tag=%s'
            % from_tag)

    def bob_answer(self, invite, status, tag, body=''):
        headers = [('Contact', self.bob.contact)]
        if body:
            headers.append(('Content-Type', 'application/sdp'))
        return make_response(invite, status, to_tag=tag, headers=headers, body=body.encode())

    async def alice_answer(self, invite, status, tag, body=''):
        headers = [('Contact', '<sip:alice@%s;transport=ws>' % self.alice_host)]
        if body:
            headers.append(('Content-Type', 'application/sdp'))
        await self.alice.send(serialize(make_response(invite, status, to_tag=tag,
                                                      headers=headers,
                                                      body=body.encode())).decode())

    async def bye_reaches_bob(self):
        """The BYE alice sent reaches bob, whose 200 reaches alice."""
        bye = await self.bob.next()
        assert bye.method == 'BYE'
        self.bob.send(make_response(bye, 200))
        assert (await recv(self.alice)).status == 200

    async def bob_is_cancelled(self, invite, tag, *, timeout=3.0):
        """serve CANCELs bob's INVITE: bob answers the CANCEL 200 and the INVITE 487."""
        cancel = await self.bob.next(timeout=timeout)
        assert cancel.method == 'CANCEL'
        self.bob.send(make_response(cancel, 200))
        self.bob.send(self.bob_answer(invite, 487, tag))

    async def sessions(self) -> int:
        stats = await self.ng.statistics()
        return int(stats['currentstatistics']['sessionsown'])

    async def no_sessions(self, within=2.0):
        """rtpengine holds nothing of ours within ``within`` seconds, serve no call."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while await self.sessions() or self.server.media.calls:
            assert loop.time() < deadline, 'rtpengine still holds %d session(s); serve %r' % (
                await self.sessions(), self.server.media.calls)
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def anchored(ng_url, app=None, **settings):
    server = RelayServer(media=MediaSettings(rtpengine=[ng_url], **settings))
    if app is not None:
        server.use_app(app)
    ws_listener, udp = await server.start('ws://127.0.0.1:0/', 'udp://127.0.0.1:0')
    loop = asyncio.get_running_loop()
    transport, bob = await loop.create_datagram_endpoint(UdpUA, local_addr=('127.0.0.1', 0))
    bob.server = ('127.0.0.1', int(udp.bound_url.rsplit(':', 1)[1]))
    ng = await open_ng(ng_url, timeout=3)
    try:
        bob.send(bob.request('REGISTER', 'sip:example.com', to='<sip:bob@example.com>',
                             call_id='reg-bob', extra=('Expires: 60',)))
        assert (await bob.next()).status == 200
        async with connect(ws_listener.bound_url, subprotocols=['sip'], proxy=None) as alice:
            alice_host = await register_raw(alice, 'alice')
            yield Call(server, bob, alice, alice_host, ng)
    finally:
        ng.close()
        await ng.wait_closed()
        transport.close()
        await server.close()


def is_webrtc(body: bytes) -> bool:
    sdp = body.decode()
    return (sdp_profile(body) == WEBRTC and 'UDP/TLS/RTP/SAVPF' in sdp and 'a=fingerprint:' in sdp
            and 'a=ice-ufrag:' in sdp and 'a=rtcp-mux' in sdp and 'a=crypto' not in sdp)


def is_plain(body: bytes) -> bool:
    sdp = body.decode()
    return (sdp_profile(body) == PLAIN and ' RTP/AVP ' in sdp and 'a=candidate' not in sdp
            and 'a=fingerprint' not in sdp and 'a=rtcp-mux' not in sdp
            and 'c=IN IP4 127.0.0.1' in sdp)


async def test_a_browser_calls_a_phone_and_the_phone_hangs_up(ng_url):
    async with anchored(ng_url) as c:
        await c.alice.send(c.alice_invite('m-1'))
        assert (await recv(c.alice)).status == 100
        invite = await c.bob.next()
        assert is_plain(invite.body) and 'a=rtpmap:0 PCMU/8000' in invite.body.decode()
        assert await c.sessions() == 1
        c.bob.send(c.bob_answer(invite, 180, 'b1'))
        assert (await recv(c.alice)).status == 180
        c.bob.send(c.bob_answer(invite, 200, 'b1', PHONE_ANSWER))
        ok = await recv(c.alice)
        assert ok.status == 200 and is_webrtc(ok.body)
        # DTLS-reverse=passive on the offer: rtpengine waits for the browser's ClientHello
        assert 'a=setup:passive' in ok.body.decode()
        routes = ok.get_all('Record-Route')
        await c.alice.send(c.alice_in_dialog('ACK', 'm-1', 'b1', routes))
        assert (await c.bob.next()).method == 'ACK'
        assert c.server.media.calls['m-1'].state == 'confirmed'
        # alice puts bob on hold (a re-INVITE with sendonly): a new offer and answer, each
        # side's SDP still its own profile
        await c.alice.send(c.alice_in_dialog(
            'INVITE', 'm-1', 'b1', routes, cseq=11, branch='z9hG4bKre1',
            body=BROWSER_OFFER.replace('a=sendrecv', 'a=sendonly')))
        reinvite = await c.bob.next()
        while reinvite.method != 'INVITE':
            reinvite = await c.bob.next()
        assert is_plain(reinvite.body) and 'a=sendonly' in reinvite.body.decode()
        c.bob.send(c.bob_answer(reinvite, 200, 'b1',
                                PHONE_ANSWER.replace('a=sendrecv', 'a=recvonly')))
        held = await recv(c.alice)
        while held.status == 100:
            held = await recv(c.alice)
        assert held.status == 200 and is_webrtc(held.body) and 'a=recvonly' in held.body.decode()
        await c.alice.send(c.alice_in_dialog('ACK', 'm-1', 'b1', routes, cseq=11,
                                             branch='z9hG4bKra1'))
        assert (await c.bob.next()).method == 'ACK'
        assert await c.sessions() == 1
        # a re-INVITE without SDP (unhold): bob's 200 offers, alice's ACK answers
        await c.alice.send(c.alice_in_dialog('INVITE', 'm-1', 'b1', routes, cseq=12,
                                             branch='z9hG4bKre2'))
        reinvite = await c.bob.next()
        while reinvite.method != 'INVITE':
            reinvite = await c.bob.next()
        assert not reinvite.body
        c.bob.send(c.bob_answer(reinvite, 200, 'b1', PHONE_OFFER))
        offered = await recv(c.alice)
        while offered.status == 100:
            offered = await recv(c.alice)
        assert offered.status == 200 and is_webrtc(offered.body)
        await c.alice.send(c.alice_in_dialog('ACK', 'm-1', 'b1', routes, cseq=12,
                                             branch='z9hG4bKra2', body=BROWSER_ANSWER))
        ack = await c.bob.next()
        assert ack.method == 'ACK' and is_plain(ack.body)
        # an UPDATE from bob (RFC 3311): his offer made WebRTC, alice's answer plain
        update = c.bob_in_dialog('UPDATE', 'm-1', 'b1', routes, cseq=2,
                                 branch='z9hG4bKbu1').replace(
            '\r\n\r\n', '\r\nContent-Type: application/sdp\r\n\r\n' + PHONE_OFFER, 1)
        c.bob.send(update)
        to_alice = await recv(c.alice)
        assert to_alice.method == 'UPDATE' and is_webrtc(to_alice.body)
        await c.alice_answer(to_alice, 200, 'a1', BROWSER_ANSWER)
        updated = await c.bob.next()
        assert updated.status == 200 and is_plain(updated.body)
        assert await c.sessions() == 1
        c.bob.send(c.bob_in_dialog('BYE', 'm-1', 'b1', routes))
        bye = await recv(c.alice)
        assert bye.method == 'BYE'
        await c.alice.send(serialize(make_response(bye, 200)).decode())
        assert (await c.bob.next()).status == 200
        await c.no_sessions()
        status, _, metrics = await http_get(c.server.listeners[0].port, '/metrics')
        text = metrics.decode()
        for command, count in (('offer', 4), ('answer', 4), ('delete', 1)):
            assert 'aiosip_ws_rtpengine_commands_total{command="%s",outcome="ok"} %d.0' % (
                command, count) in text
        assert 'aiosip_ws_rtpengine_seconds_count{command="offer"} 4.0' in text
        assert 'aiosip_ws_media_calls 0.0' in text


async def test_a_phone_calls_a_browser_and_the_browser_hangs_up(ng_url):
    async with anchored(ng_url) as c:
        c.bob.send(c.bob.request('INVITE', 'sip:alice@example.com', to='<sip:alice@example.com>',
                                 call_id='m-2', branch='z9hG4bKbi2',
                                 extra=('Content-Type: application/sdp',), body=PHONE_OFFER))
        assert (await c.bob.next()).status == 100
        invite = await recv(c.alice)
        assert is_webrtc(invite.body) and 'a=mid:' in invite.body.decode()
        await c.alice_answer(invite, 200, 'a9', BROWSER_ANSWER)
        ok = await c.bob.next()
        assert ok.status == 200 and is_plain(ok.body)
        routes = ok.get_all('Record-Route')
        c.bob.send(c.bob.request('ACK', 'sip:alice@%s;transport=ws' % c.alice_host,
                                 to='<sip:alice@example.com>;tag=a9', call_id='m-2',
                                 branch='z9hG4bKba2',
                                 extra=['Route: %s' % r for r in reversed(routes)]))
        assert (await recv(c.alice)).method == 'ACK'
        assert await c.sessions() == 1
        bye = ('BYE sip:bob@127.0.0.1:%d SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKab2\r\n'
               '%sFrom: <sip:alice@example.com>;tag=a9\r\nTo: <sip:bob@example.com>;tag=b1\r\n'
               'Call-ID: m-2\r\nCSeq: 1 BYE\r\nMax-Forwards: 70\r\n\r\n'
               % (c.bob.addr[1], c.alice_host, ''.join('Route: %s\r\n' % r for r in routes)))
        await c.alice.send(bye)
        await c.bye_reaches_bob()
        await c.no_sessions()


async def test_cancel_while_ringing_and_a_busy_phone_leave_nothing(ng_url):
    async with anchored(ng_url) as c:
        await c.alice.send(c.alice_invite('m-3'))
        assert (await recv(c.alice)).status == 100
        invite = await c.bob.next()
        c.bob.send(c.bob_answer(invite, 180, 'b3'))
        assert (await recv(c.alice)).status == 180
        await c.alice.send(c.alice_invite('m-3').replace('INVITE', 'CANCEL').replace(
            'CSeq: 10 CANCEL', 'CSeq: 10 CANCEL').split('Content-Type')[0] + '\r\n')
        assert (await recv(c.alice)).status == 200
        await c.bob_is_cancelled(invite, 'b3')
        assert (await recv(c.alice)).status == 487
        assert (await c.bob.next()).method == 'ACK'           # serve's, of the 487
        await c.no_sessions()

        await c.alice.send(c.alice_invite('m-4', branch='z9hG4bKai4'))
        assert (await recv(c.alice)).status == 100
        invite = await c.bob.next()
        assert await c.sessions() == 1
        c.bob.send(c.bob_answer(invite, 486, 'b4'))
        assert (await recv(c.alice)).status == 486
        assert (await c.bob.next()).method == 'ACK'
        await c.no_sessions()


async def test_a_failure_routed_again_by_an_app_is_anchored_afresh(ng_url):
    """``--app``: bob's 486 goes to the app's on_failure, which rings bob again (a second
    fork of the same call: its media were deleted with the first, and offered anew); bob
    answers; alice gets WebRTC SDP, bob's leg is plain, and the BYE leaves nothing."""
    from aiosip_ws.serve.routing import App, Registered, Relay

    class Again(App):
        async def on_failure(self, request, response):
            return Relay(Registered('sip:bob@example.com')) if response.attempt == 1 else None

    async with anchored(ng_url, app=Again()) as c:
        await c.alice.send(c.alice_invite('m-r'))
        assert (await recv(c.alice)).status == 100
        invite = await c.bob.next()
        assert is_plain(invite.body)
        c.bob.send(c.bob_answer(invite, 486, 'r1'))
        assert (await c.bob.next()).method == 'ACK'
        again = await c.bob.next()
        assert again.method == 'INVITE' and is_plain(again.body)
        assert again.vias[0].branch != invite.vias[0].branch
        c.bob.send(c.bob_answer(again, 200, 'r2', PHONE_ANSWER))
        ok = await recv(c.alice)
        assert ok.status == 200 and is_webrtc(ok.body)
        await asyncio.sleep(0.3)                    # a delete of the first fork would land
        assert await c.sessions() == 1
        routes = ok.get_all('Record-Route')
        await c.alice.send(c.alice_in_dialog('ACK', 'm-r', 'r2', routes, body=''))
        assert (await c.bob.next()).method == 'ACK'
        await c.alice.send(c.alice_in_dialog('BYE', 'm-r', 'r2', routes, cseq=11,
                                             branch='z9hG4bKrb'))
        await c.bye_reaches_bob()
        await c.no_sessions()


async def test_a_late_offer_is_offered_by_the_2xx_and_answered_by_the_ack(ng_url):
    async with anchored(ng_url) as c:
        await c.alice.send(c.alice_invite('m-5', body=''))
        assert (await recv(c.alice)).status == 100
        invite = await c.bob.next()
        assert not invite.body
        c.bob.send(c.bob_answer(invite, 200, 'b5', PHONE_OFFER))
        ok = await recv(c.alice)
        assert ok.status == 200 and is_webrtc(ok.body)        # the offer, made WebRTC
        routes = ok.get_all('Record-Route')
        await c.alice.send(c.alice_in_dialog('ACK', 'm-5', 'b5', routes, body=BROWSER_ANSWER))
        ack = await c.bob.next()
        assert ack.method == 'ACK' and is_plain(ack.body)      # the answer, made plain
        assert await c.sessions() == 1
        await c.alice.send(c.alice_in_dialog('BYE', 'm-5', 'b5', routes, cseq=11))
        await c.bye_reaches_bob()
        await c.no_sessions()


async def test_early_media_in_a_183_then_the_200(ng_url):
    async with anchored(ng_url) as c:
        await c.alice.send(c.alice_invite('m-6'))
        assert (await recv(c.alice)).status == 100
        invite = await c.bob.next()
        c.bob.send(c.bob_answer(invite, 183, 'b6', PHONE_ANSWER))
        c.bob.send(c.bob_answer(invite, 200, 'b6', PHONE_ANSWER))    # right behind it
        early = await recv(c.alice)
        assert early.status == 183 and is_webrtc(early.body)     # in the order they came
        ok = await recv(c.alice)
        assert ok.status == 200 and is_webrtc(ok.body)
        # the same media: rtpengine's ports for alice did not change
        assert early.body.decode().split('m=audio ')[1].split()[0] == \
            ok.body.decode().split('m=audio ')[1].split()[0]
        # the caller's connection is lost in the call: its media goes
        await c.alice.close()
        await c.no_sessions()


async def test_a_2xx_never_acked_and_timer_c_release_the_media(ng_url, monkeypatch):
    monkeypatch.setattr(media_module, 'ACK_WAIT', 0.5)
    async with anchored(ng_url) as c:
        await c.alice.send(c.alice_invite('m-7'))
        assert (await recv(c.alice)).status == 100
        invite = await c.bob.next()
        c.bob.send(c.bob_answer(invite, 200, 'b7', PHONE_ANSWER))
        assert (await recv(c.alice)).status == 200
        await c.no_sessions(within=3)                    # no ACK within ACK_WAIT

        c.server.ctx.timer_c = 0.5
        await c.alice.send(c.alice_invite('m-8', branch='z9hG4bKai8'))
        assert (await recv(c.alice)).status == 100
        invite = await c.bob.next()
        c.bob.send(c.bob_answer(invite, 180, 'b8'))
        assert (await recv(c.alice)).status == 180
        await c.bob_is_cancelled(invite, 'b8')             # Timer C: serve CANCELs
        assert (await recv(c.alice)).status == 408                # §16.8: Timer C's answer
        await c.no_sessions()


async def test_a_relay_gone_before_a_call_and_during_one(tmp_path):
    rtpengine_available()
    with rtpengine(tmp_path) as url:
        async with anchored(url, timeout=0.6, retry=30) as c:
            await c.alice.send(c.alice_invite('m-9'))
            assert (await recv(c.alice)).status == 100
            invite = await c.bob.next()
            c.bob.send(c.bob_answer(invite, 200, 'b9', PHONE_ANSWER))
            ok = await recv(c.alice)
            routes = ok.get_all('Record-Route')
            await c.alice.send(c.alice_in_dialog('ACK', 'm-9', 'b9', routes))
            assert (await c.bob.next()).method == 'ACK'
            stop_rtpengine(url)                                            # the relay is gone
            # a re-INVITE whose offer rtpengine cannot take: 500 with a Warning, not relayed
            await c.alice.send(c.alice_in_dialog('INVITE', 'm-9', 'b9', routes, cseq=11,
                                                 body=BROWSER_OFFER, branch='z9hG4bKre9'))
            refused = await recv(c.alice)
            while refused.status == 100:
                refused = await recv(c.alice)
            assert refused.status == 500
            assert refused.get('Warning').endswith('"the media relay did not take the offer"')
            with pytest.raises(asyncio.TimeoutError):
                await c.bob.next(timeout=0.3)
            # during the call: BYE passes at once, the failed delete is a log line
            await c.alice.send(c.alice_in_dialog('BYE', 'm-9', 'b9', routes, cseq=12))
            await c.bye_reaches_bob()
            # before a call: 503 with Retry-After, the phone never rings
            await c.alice.send(c.alice_invite('m-10', branch='z9hG4bKai10'))
            assert (await recv(c.alice)).status == 100
            refused = await recv(c.alice)
            assert refused.status == 503 and refused.get('Retry-After')
            assert 'media relay' in refused.reason
            with pytest.raises(asyncio.TimeoutError):
                await c.bob.next(timeout=0.3)
            status, _, metrics = await http_get(c.server.listeners[0].port, '/metrics')
            assert 'aiosip_ws_rtpengine_commands_total{command="offer",outcome="timeout"} 1.0' \
                in metrics.decode()


async def test_calls_of_one_profile_pass_through_unless_always(ng_url):
    """Two browsers: ``auto`` leaves their SDP alone; ``always`` anchors it (WebRTC both
    ways)."""
    for mode, anchors in (('auto', False), ('always', True)):
        async with anchored(ng_url, mode=mode) as c, \
                connect(c.server.listeners[0].bound_url, subprotocols=['sip'],
                        proxy=None) as carol:
            await register_raw(carol, 'carol')
            await c.alice.send(c.alice_invite('p-%s' % mode).replace(
                'sip:bob@example.com', 'sip:carol@example.com'))
            assert (await recv(c.alice)).status == 100
            invite = await recv(carol)
            assert (invite.body == BROWSER_OFFER.encode()) is not anchors
            assert is_webrtc(invite.body)
            assert await c.sessions() == int(anchors)
            await carol.send(serialize(make_response(invite, 486, to_tag='c1')).decode())
            assert (await recv(c.alice)).status == 486
            await c.no_sessions()


async def test_a_relay_that_does_not_answer_is_skipped_for_the_next(ng_url):
    """Two relays, the first gone: the call's offer times out there and goes to the next;
    the next call skips the dead one at once (--rtpengine-retry)."""
    dead = 'udp://127.0.0.1:%d' % free_port(udp=True)
    async with anchored(ng_url, timeout=0.5, retry=30) as c:
        c.server.media.relays.clients.insert(0, (await open_ng(dead, timeout=0.5)))
        for n, call_id in enumerate(('f-1', 'f-2')):
            started = asyncio.get_running_loop().time()
            await c.alice.send(c.alice_invite(call_id, branch='z9hG4bKf%d' % n))
            assert (await recv(c.alice)).status == 100
            invite = await c.bob.next()
            assert is_plain(invite.body) and await c.sessions() == 1
            waited = asyncio.get_running_loop().time() - started
            assert (waited >= 0.5) if n == 0 else (waited < 0.4), waited
            c.bob.send(c.bob_answer(invite, 486, 'b%d' % n))
            assert (await recv(c.alice)).status == 486
            assert (await c.bob.next()).method == 'ACK'
            await c.no_sessions()


async def test_a_forked_call_offers_per_branch_and_deletes_the_loser_alone(ng_url):
    """bob on a phone (UDP) and in a browser (WebSocket): with ``always`` each branch gets
    an offer of its own (its via-branch, its profile); the phone answers after early
    media, the browser's branch is CANCELled and deleted alone (its via-branch and To
    tag), and the call keeps its media on rtpengine until BYE.  With ``auto`` only the
    phone's branch is anchored; when the browser answers, nothing stays anchored."""
    for mode in ('always', 'auto'):
        async with anchored(ng_url, mode=mode) as c, \
                connect(c.server.listeners[0].bound_url, subprotocols=['sip'],
                        proxy=None) as desk:
            await register_raw(desk, 'bob')
            call_id = 'fork-' + mode
            await c.alice.send(c.alice_invite(call_id))
            assert (await recv(c.alice)).status == 100
            to_phone, to_desk = await c.bob.next(), await recv(desk)
            assert is_plain(to_phone.body) and is_webrtc(to_desk.body)
            assert (to_desk.body == BROWSER_OFFER.encode()) is (mode == 'auto')
            query = await c.ng.command({'command': 'query', 'call-id': call_id})
            branches = {tag.get('via-branch') for tag in query['tags'].values()}
            assert to_phone.vias[0].branch in branches
            assert (to_desk.vias[0].branch in branches) is (mode == 'always')
            if mode == 'always':
                await desk.send(serialize(make_response(
                    to_desk, 183, to_tag='d1', headers=[('Content-Type', 'application/sdp')],
                    body=BROWSER_ANSWER.encode())).decode())
                assert is_webrtc((await recv(c.alice)).body)
                c.bob.send(c.bob_answer(to_phone, 200, 'p1', PHONE_ANSWER))
                ok = await recv(c.alice)
                assert ok.status == 200 and is_webrtc(ok.body)
                cancel = await recv(desk)
                assert cancel.method == 'CANCEL'
                await desk.send(serialize(make_response(cancel, 200)).decode())
                await desk.send(serialize(make_response(to_desk, 487, to_tag='d1')).decode())
                await asyncio.sleep(0.3)
                _, _, metrics = await http_get(c.server.listeners[0].port, '/metrics')
                assert ('aiosip_ws_rtpengine_commands_total{command="delete",outcome="ok"} '
                        '1.0') in metrics.decode()        # the desk's branch, rtpengine took it
                query = await c.ng.command({'command': 'query', 'call-id': call_id})
                assert query['tags']['a1']['subscribers'] == [
                    {'tag': 'p1', 'type': 'offer/answer'}]        # the call is the phone's
                assert await c.sessions() == 1
                routes = ok.get_all('Record-Route')
                await c.alice.send(c.alice_in_dialog('ACK', call_id, 'p1', routes))
                await c.alice.send(c.alice_in_dialog('BYE', call_id, 'p1', routes, cseq=11))
                while (got := await c.bob.next()).method != 'BYE':
                    pass
                c.bob.send(make_response(got, 200))
            else:
                await desk.send(serialize(make_response(
                    to_desk, 200, to_tag='d2', headers=[('Content-Type', 'application/sdp')],
                    body=BROWSER_ANSWER.encode())).decode())
                ok = await recv(c.alice)
                assert ok.status == 200 and ok.body == BROWSER_ANSWER.encode()
                await c.bob_is_cancelled(to_phone, 'p2')
            await c.no_sessions()


async def test_media_profile_overrides_and_kamailio_style_flags(ng_url):
    """``--media-profile`` says what a party speaks where serve would guess wrong: the
    UDP phone declared WebRTC (by AOR, then by CIDR) gets the browser's offer untouched
    (``auto``: both WebRTC).  With ``--rtpengine-flags-plain`` in Kamailio's syntax the
    operator's flags, not serve's, go towards the phone (``SDES-off`` is no plain flag of
    serve's; rtpengine still makes the SDP plain RTP)."""
    for rule in ('sip:bob@example.com=webrtc', '127.0.0.0/8=webrtc'):
        async with anchored(ng_url, profiles=[rule]) as c:
            await c.alice.send(c.alice_invite('o-' + rule[:3]))
            assert (await recv(c.alice)).status == 100
            invite = await c.bob.next()
            assert invite.body == BROWSER_OFFER.encode()            # passed through
            assert await c.sessions() == 0 and not c.server.media.calls
            c.bob.send(c.bob_answer(invite, 486, 'b'))
            assert (await recv(c.alice)).status == 486
    flags = 'ICE=remove RTP/AVP rtcp-mux-demux SDES-off replace-origin replace-session-connection'
    async with anchored(ng_url, flags_plain=flags) as c:
        sent = []
        relay = c.server.media.relays.clients[0]
        original = relay.command

        async def spy(command, **kwargs):
            sent.append(dict(command))
            return await original(command, **kwargs)
        relay.command = spy
        await c.alice.send(c.alice_invite('k-1'))
        assert (await recv(c.alice)).status == 100
        invite = await c.bob.next()
        assert is_plain(invite.body)
        offer = next(command for command in sent if command['command'] == 'offer')
        assert offer['SDES'] == ['off'] and offer['ICE'] == 'remove'
        assert 'DTLS-reverse' not in offer                    # serve's own flag: not sent
        c.bob.send(c.bob_answer(invite, 486, 'b'))
        assert (await recv(c.alice)).status == 486
        await c.no_sessions()
