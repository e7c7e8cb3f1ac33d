"""The ng client against Debian's rtpengine-daemon (10.5) on 127.0.0.1: ping and
statistics; with the flags serve chooses (aiosip_ws.core.mediaflags), an offer from a
WebRTC leg rewritten for a plain RTP phone and the phone's answer rewritten back for the
browser, and the other direction; delete, after which rtpengine holds no session; a
command rtpengine refuses raises with its reason; a relay that is gone times out."""
from __future__ import annotations

import asyncio

import pytest

from aiosip_ws.core.mediaflags import PLAIN, WEBRTC, leg_flags, sdp_profile
from aiosip_ws.errors import MediaRelayError, MediaRelayTimeout
from aiosip_ws.transport.rtpengine import open_ng
from tests.interop.conftest import rtpengine_available
from tests.support.rtpengine import rtpengine
from tests.support.sdp import BROWSER_OFFER, PHONE_ANSWER, PHONE_OFFER

pytestmark = pytest.mark.interop

#: serve's own flags (aiosip_ws.core.mediaflags): an offer from a browser towards a phone
#: and the phone's answer back towards the browser
TO_PLAIN = leg_flags(PLAIN, offer=True, source=WEBRTC)
TO_WEBRTC = leg_flags(WEBRTC, offer=False)


async def own_sessions(client) -> int:
    return int((await client.statistics())['currentstatistics']['sessionsown'])


async def test_a_webrtc_offer_and_a_plain_answer_through_rtpengine(ng_url):
    client = await open_ng(ng_url, timeout=3)
    try:
        await client.ping()
        assert await own_sessions(client) == 0
        offer = await client.command(dict(TO_PLAIN, command='offer', **{
            'call-id': 'call-1', 'from-tag': 'a1', 'sdp': BROWSER_OFFER}))
        sdp = offer['sdp']
        assert sdp_profile(sdp) == PLAIN
        assert 'm=audio ' in sdp and ' RTP/AVP ' in sdp and 'SAVPF' not in sdp
        assert 'a=candidate' not in sdp and 'a=fingerprint' not in sdp
        assert 'a=rtcp-mux' not in sdp and 'c=IN IP4 127.0.0.1' in sdp
        assert 'a=rtpmap:0 PCMU/8000' in sdp                  # codecs pass through
        answer = await client.command(dict(TO_WEBRTC, command='answer', **{
            'call-id': 'call-1', 'from-tag': 'a1', 'to-tag': 'b1', 'sdp': PHONE_ANSWER}))
        sdp = answer['sdp']
        # DTLS-reverse=passive on the offer: rtpengine waits for the browser's ClientHello
        assert sdp_profile(sdp) == WEBRTC and 'a=setup:passive' in sdp
        assert 'UDP/TLS/RTP/SAVPF' in sdp and 'a=fingerprint:' in sdp
        assert 'a=ice-ufrag:' in sdp and 'a=candidate:' in sdp and 'a=crypto' not in sdp
        assert await own_sessions(client) == 1
        await client.command({'command': 'delete', 'call-id': 'call-1', 'from-tag': 'a1'})
        for _ in range(20):                      # --delete-delay=0: gone within 2 s
            if await own_sessions(client) == 0:
                break
            await asyncio.sleep(0.1)
        assert await own_sessions(client) == 0
        with pytest.raises(MediaRelayError, match='refused answer: Unknown call-[iI][dD]'):
            await client.command(dict(TO_WEBRTC, command='answer', **{
                'call-id': 'no-such-call', 'from-tag': 'a1', 'to-tag': 'b1',
                'sdp': PHONE_ANSWER}))
    finally:
        client.close()
        await client.wait_closed()


async def test_a_phone_calling_a_browser_through_rtpengine(ng_url):
    """The other direction: a plain offer made WebRTC for the browser (ICE, DTLS, rtcp-mux
    offered, a=mid generated), the browser's answer made plain for the phone."""
    client = await open_ng(ng_url, timeout=3)
    try:
        offer = await client.command(dict(leg_flags(WEBRTC, offer=True, source=PLAIN),
                                          command='offer', **{'call-id': 'call-2',
                                                              'from-tag': 'b2',
                                                              'sdp': PHONE_OFFER}))
        sdp = offer['sdp']
        assert sdp_profile(sdp) == WEBRTC and 'a=rtcp-mux' in sdp and 'a=mid:' in sdp
        assert 'a=ice-ufrag:' in sdp and 'a=fingerprint:' in sdp and 'a=crypto' not in sdp
        assert 'a=rtpmap:0 PCMU/8000' in sdp
        browser_answer = BROWSER_OFFER.replace('a=setup:actpass', 'a=setup:active')
        answer = await client.command(dict(leg_flags(PLAIN, offer=False), command='answer',
                                           **{'call-id': 'call-2', 'from-tag': 'b2',
                                              'to-tag': 'a2', 'sdp': browser_answer}))
        sdp = answer['sdp']
        assert sdp_profile(sdp) == PLAIN and 'a=rtcp-mux' not in sdp
        await client.command({'command': 'delete', 'call-id': 'call-2', 'from-tag': 'b2'})
        for _ in range(20):
            if await own_sessions(client) == 0:
                break
            await asyncio.sleep(0.1)
        assert await own_sessions(client) == 0
    finally:
        client.close()
        await client.wait_closed()


async def test_a_relay_that_is_gone_times_out(tmp_path):
    rtpengine_available()
    with rtpengine(tmp_path) as url:
        client = await open_ng(url, timeout=0.6, retransmit=0.2)
        await client.ping()
    try:                                                   # rtpengine stopped
        with pytest.raises(MediaRelayTimeout, match='no reply to ping within 0.6 s'):
            await client.ping()
    finally:
        client.close()
        await client.wait_closed()
