"""The ng client against Debian's rtpengine-daemon (10.5) on 127.0.0.1: ping and
statistics; an offer from a WebRTC leg rewritten for a plain RTP phone and the phone's
answer rewritten back for the browser, with the flags serve is to send (ICE removed,
RTP/AVP, rtcp-mux demuxed one way; ICE forced, UDP/TLS/RTP/SAVPF, no SDES the other);
delete, after which rtpengine holds no session; a command rtpengine refuses raises with
its reason; a relay that is gone times out."""
from __future__ import annotations

import asyncio

import pytest

from aiosip_ws.errors import MediaRelayError, MediaRelayTimeout
from aiosip_ws.transport.rtpengine import open_ng
from tests.interop.conftest import _unavailable
from tests.support.rtpengine import rtpengine, rtpengine_binary

pytestmark = pytest.mark.interop

BROWSER_OFFER = (
    'v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n'
    'a=group:BUNDLE 0\r\na=msid-semantic: WMS\r\n'
    'm=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\nc=IN IP4 0.0.0.0\r\n'
    'a=rtcp:9 IN IP4 0.0.0.0\r\n'
    'a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host generation 0\r\n'
    'a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\n'
    'a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:'
    '1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\na=setup:actpass\r\na=mid:0\r\n'
    'a=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n'
    'a=rtpmap:8 PCMA/8000\r\n')
PHONE_ANSWER = ('v=0\r\no=bob 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n'
                'm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n')
TO_PLAIN = {'ICE': 'remove', 'transport-protocol': 'RTP/AVP', 'rtcp-mux': ['demux'],
            'replace': ['origin', 'session-connection']}
TO_WEBRTC = {'ICE': 'force', 'transport-protocol': 'UDP/TLS/RTP/SAVPF', 'SDES': ['off'],
             'replace': ['origin', 'session-connection']}


@pytest.fixture
def ng_url(tmp_path):
    try:
        rtpengine_binary()
    except RuntimeError as exc:
        _unavailable('rtpengine', exc)
    with rtpengine(tmp_path) as url:
        yield url


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
        assert 'm=audio ' in sdp and ' RTP/AVP ' in sdp and 'SAVPF' not in sdp
        assert 'a=candidate' not in sdp and 'a=fingerprint' not in sdp
        assert 'a=rtcp-mux' not in sdp and 'c=IN IP4 127.0.0.1' in sdp
        assert 'a=rtpmap:0 PCMU/8000' in sdp                  # codecs pass through
        answer = await client.command(dict(TO_WEBRTC, command='answer', **{
            'call-id': 'call-1', 'from-tag': 'a1', 'to-tag': 'b1', 'sdp': PHONE_ANSWER}))
        sdp = answer['sdp']
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


async def test_a_relay_that_is_gone_times_out(tmp_path):
    try:
        rtpengine_binary()
    except RuntimeError as exc:
        _unavailable('rtpengine', exc)
    with rtpengine(tmp_path) as url:
        client = await open_ng(url, timeout=0.6, retransmit=0.2)
        await client.ping()
    try:                                                   # rtpengine stopped
        with pytest.raises(MediaRelayTimeout, match='no reply to ping within 0.6 s'):
            await client.ping()
    finally:
        client.close()
        await client.wait_closed()
