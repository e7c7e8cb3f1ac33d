"""Each leg's media profile and the ng flags serve is to send (aiosip_ws.core.mediaflags):
the profile from SDP, the flags per direction, Kamailio's flag strings read into the ng
dictionary, and DTLS=passive towards a browser refused.  The flags against the real
rtpengine: tests/interop/test_rtpengine.py."""
from __future__ import annotations

import pytest

from aiosip_ws.core.mediaflags import (
    PLAIN,
    WEBRTC,
    check_flags,
    leg_flags,
    parse_kamailio_flags,
    sdp_profile,
)
from aiosip_ws.errors import ConfigurationError
from tests.support.sdp import BROWSER_OFFER, PHONE_ANSWER


def test_the_profile_of_a_leg_comes_from_its_sdp():
    assert sdp_profile(BROWSER_OFFER) == WEBRTC
    assert sdp_profile(PHONE_ANSWER.encode()) == PLAIN
    assert sdp_profile('v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n') == WEBRTC   # no ICE yet
    assert sdp_profile('v=0\r\nm=audio 4000 RTP/AVP 0\r\na=fingerprint:sha-256 AA\r\n') \
        == WEBRTC
    assert sdp_profile(None) is None and sdp_profile(b'') is None                # late offer
    assert sdp_profile('v=0\r\ns=-\r\n') is None                                 # no media


def test_the_flags_towards_each_leg():
    assert leg_flags(PLAIN, offer=False) == {
        'ICE': 'remove', 'transport-protocol': 'RTP/AVP', 'rtcp-mux': ['demux'],
        'replace': ['origin', 'session-connection']}
    assert leg_flags(PLAIN, offer=True, source=WEBRTC)['DTLS-reverse'] == 'passive'
    assert 'DTLS-reverse' not in leg_flags(PLAIN, offer=True, source=PLAIN)
    assert leg_flags(WEBRTC, offer=False) == {
        'ICE': 'force', 'transport-protocol': 'UDP/TLS/RTP/SAVPF', 'SDES': ['off'],
        'replace': ['origin', 'session-connection']}
    offer = leg_flags(WEBRTC, offer=True, source=PLAIN)
    assert offer['rtcp-mux'] == ['offer'] and offer['flags'] == ['generate-mid']
    assert 'DTLS' not in offer and 'DTLS' not in leg_flags(WEBRTC, offer=False)
    with pytest.raises(ConfigurationError, match='webrtc or plain'):
        leg_flags('sctp', offer=True)


def test_kamailio_flag_strings_read_as_ng():
    """The strings that give audio through Kamailio 5.6 + rtpengine 10.5 are the flags
    serve chooses itself."""
    assert parse_kamailio_flags(
        'ICE=remove RTP/AVP rtcp-mux-demux replace-origin replace-session-connection') \
        == leg_flags(PLAIN, offer=False)
    assert parse_kamailio_flags(
        'ICE=force UDP/TLS/RTP/SAVPF SDES-off rtcp-mux-offer generate-mid replace-origin '
        'replace-session-connection') == leg_flags(WEBRTC, offer=True)
    assert parse_kamailio_flags('codec-strip-all codec-offer-PCMU codec-offer-PCMA '
                                'direction=pub direction=priv trust-address '
                                'DTLS-reverse=passive') == {
        'codec': {'strip': ['all'], 'offer': ['PCMU', 'PCMA']},
        'direction': ['pub', 'priv'], 'flags': ['trust-address'],
        'DTLS-reverse': 'passive'}
    assert parse_kamailio_flags('') == {}
    for bad in ('ICE=', '=force'):
        with pytest.raises(ConfigurationError, match='KEY=VALUE'):
            parse_kamailio_flags(bad)


def test_dtls_passive_towards_a_browser_is_refused():
    with pytest.raises(ConfigurationError, match='must not say DTLS=passive'):
        check_flags(parse_kamailio_flags('ICE=force DTLS=passive'), WEBRTC)
    plain = parse_kamailio_flags('DTLS=passive')
    assert check_flags(plain, PLAIN) is plain
