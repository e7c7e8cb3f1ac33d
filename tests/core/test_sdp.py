"""SDP directions and candidates (RFC 3264, RFC 8839) and DTMF INFO bodies
(aiosip_ws.core.sdp)."""
from __future__ import annotations

import pytest

from aiosip_ws.core import sdp
from aiosip_ws.errors import ConfigurationError, SIPParseError

OFFER = (
    'v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n'
    'm=audio 50000 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 127.0.0.2\r\n{dir}'
    'a=mid:0\r\na=rtcp-mux\r\n'
    'a=candidate:1 1 udp 2130706431 127.0.0.2 50000 typ host\r\n'
    'a=candidate:2 1 UDP 1694498815 192.0.2.7 61000 typ srflx raddr 127.0.0.2 rport 50000\r\n'
    'a=setup:actpass\r\n')


@pytest.mark.parametrize('line, expected', [
    ('', 'sendrecv'), ('a=sendrecv\r\n', 'sendrecv'), ('a=sendonly\r\n', 'sendonly'),
    ('a=recvonly\r\n', 'recvonly'), ('a=inactive\r\n', 'inactive')])
def test_direction_of_the_audio_stream(line, expected):
    assert sdp.direction(OFFER.format(dir=line)) == expected
    assert sdp.is_hold(expected) is (expected in ('sendonly', 'inactive'))


def test_session_level_direction_applies_unless_the_stream_has_its_own():
    text = 'v=0\r\ns=-\r\na=inactive\r\nm=audio 1 RTP/AVP 0\r\nc=IN IP4 192.0.2.1\r\n'
    assert sdp.direction(text) == 'inactive'
    assert sdp.direction(text + 'a=sendonly\r\n') == 'sendonly'


def test_rfc2543_hold_by_connection_address_zero_is_sendonly():
    old = 'v=0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n'
    assert sdp.direction(old) == 'sendonly'
    # ICE offers may say 0.0.0.0 and carry candidates: not a hold
    assert sdp.direction(old + 'a=candidate:1 1 udp 1 127.0.0.2 4000 typ host\r\n') == 'sendrecv'


def test_only_the_first_stream_of_the_kind_counts_and_a_missing_one_is_an_error():
    two = OFFER.format(dir='a=sendonly\r\n') + 'm=audio 2 RTP/AVP 0\r\na=inactive\r\n'
    assert sdp.direction(two) == 'sendonly'
    video = 'v=0\r\ns=-\r\nm=video 1 RTP/AVP 96\r\n'
    with pytest.raises(SIPParseError, match='no audio stream'):
        sdp.direction(video)
    assert sdp.direction(video, media='video') == 'sendrecv'


def test_reverse_mirrors_send_and_receive():
    assert [sdp.reverse(d) for d in sdp.DIRECTIONS] == ['sendrecv', 'recvonly', 'sendonly',
                                                         'inactive']


def test_candidates_are_read_in_order():
    found = sdp.candidates(OFFER.format(dir='').encode())
    assert found == [sdp.Candidate('127.0.0.2', 50000, 'udp', 'host'),
                     sdp.Candidate('192.0.2.7', 61000, 'udp', 'srflx')]
    with pytest.raises(SIPParseError, match='bad ICE candidate'):
        sdp.candidates('a=candidate:1 1 udp 1 127.0.0.1 notaport typ host\r\n')


@pytest.mark.parametrize('content_type, body, expected', [
    ('application/dtmf-relay', b'Signal=5\r\nDuration=160\r\n', ('5', 160)),
    ('Application/DTMF-Relay; charset=x', b'signal= #\nduration=100', ('#', 100)),
    ('application/dtmf-relay', b'Signal=11\r\n', ('#', None)),
    ('application/dtmf-relay', b'Signal=10\r\nDuration=80\r\n', ('*', 80)),
    ('application/dtmf-relay', b'Signal=a\r\n', ('A', None)),
    ('application/dtmf', b'7', ('7', None)),
])
def test_dtmf_bodies(content_type, body, expected):
    assert sdp.parse_dtmf(content_type, body) == expected


@pytest.mark.parametrize('content_type, body, message', [
    ('application/dtmf-relay', b'Signal=X\r\n', 'not a DTMF digit'),
    ('application/dtmf-relay', b'Duration=100\r\n', 'not a DTMF digit'),
    ('application/dtmf-relay', b'Signal=1\r\nDuration=long\r\n', 'bad DTMF Duration'),
    ('text/plain', b'1', 'not a DTMF body type'),
    (None, b'1', 'not a DTMF body type'),
])
def test_bad_dtmf_bodies_are_refused(content_type, body, message):
    with pytest.raises(SIPParseError, match=message):
        sdp.parse_dtmf(content_type, body)


def test_dtmf_relay_body_round_trips_and_checks_its_input():
    body = sdp.dtmf_relay_body('#', 250)
    assert body == b'Signal=#\r\nDuration=250\r\n'
    assert sdp.parse_dtmf(sdp.DTMF_RELAY, body) == ('#', 250)
    for digit, duration in (('x', 100), ('12', 100), ('1', 10)):
        with pytest.raises(ConfigurationError):
            sdp.dtmf_relay_body(digit, duration)
