"""The pure SIP codec (aiosip_ws.core.codec): parsing and writing, RFC 3261 7 and 18.3, RFC 7118 5."""
from __future__ import annotations

import pytest

from aiosip_ws.core.codec import SIPMessage, Via, make_response, parse, serialize
from aiosip_ws.errors import SIPParseError

SDP = (b'v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n'
       b'm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n')


def request(*headers: str, body: bytes = b'', start: str = 'MESSAGE sip:bob@example.com SIP/2.0') -> bytes:
    base = ['Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK56sdasks',
            'From: <sip:alice@example.com>;tag=1928301774', 'To: <sip:bob@example.com>',
            'Call-ID: a84b4c76e66710', 'CSeq: 314159 MESSAGE', 'Max-Forwards: 70']
    return ('\r\n'.join([start, *(headers or base)]) + '\r\n\r\n').encode() + body


def test_body_runs_to_the_end_without_content_length():
    """RFC 7118 §5 (RFC7118-5-c): the WebSocket message is the SIP message; no Content-Length needed."""
    msg = parse(request(body=b'x' * 50))
    assert msg.body == b'x' * 50


def test_bytes_beyond_content_length_are_discarded():
    """RFC 3261 §18.3 (RFC3261-18.3-a), for message-oriented transports."""
    base = request(body=b'0123456789' * 5).replace(b'\r\n\r\n', b'\r\nContent-Length: 10\r\n\r\n', 1)
    assert parse(base).body == b'0123456789'


def test_body_shorter_than_content_length_is_an_error_with_status_400():
    """RFC 3261 §18.3 (RFC3261-18.3-a): a request gets 400, and parsing never waits for more bytes."""
    data = request(body=b'short').replace(b'\r\n\r\n', b'\r\nContent-Length: 100\r\n\r\n', 1)
    with pytest.raises(SIPParseError) as info:
        parse(data)
    assert info.value.status == 400 and info.value.is_request is True
    assert 'shorter than Content-Length' in info.value.reason


def test_two_messages_in_one_websocket_message_are_refused():
    """RFC 7118 §5 (RFC7118-5-b): one SIP message per WebSocket message."""
    one = request(start='OPTIONS sip:example.com SIP/2.0').replace(b'MESSAGE', b'OPTIONS')
    one = one.replace(b'\r\n\r\n', b'\r\nContent-Length: 0\r\n\r\n', 1)
    with pytest.raises(SIPParseError, match='two SIP messages'):
        parse(one + one)


def test_multiline_sdp_body_survives_byte_for_byte():
    """D1: aiosip 0.2.0 loses the CRLFs inside bodies; the codec keeps every byte."""
    msg = parse(request(body=SDP))
    assert msg.body == SDP
    assert serialize(msg).endswith(b'\r\n\r\n' + SDP)


def test_compact_forms_and_odd_spacing_parse():
    """D2, D3: compact names and `Name:value` / `Name : value` / tabs all parse."""
    data = request('v:SIP/2.0/WS a.invalid;branch=z9hG4bK1', 'f : <sip:alice@example.com>;tag=1',
                   't:\t<sip:bob@example.com>', 'i:  abc@def', 'CSeq :1 MESSAGE', 'm: <sip:x@y.invalid>',
                   'l: 2', 'c:text/plain', 'k: outbound, path', body=b'hi')
    msg = parse(data)
    assert msg.get('Via') == 'SIP/2.0/WS a.invalid;branch=z9hG4bK1'
    assert msg.get('From') == '<sip:alice@example.com>;tag=1'
    assert msg.get('To') == '<sip:bob@example.com>'
    assert msg.get('Call-ID') == 'abc@def'
    assert msg.cseq == (1, 'MESSAGE')
    assert msg.get('Content-Type') == 'text/plain' and msg.get('Supported') == 'outbound, path'
    assert msg.body == b'hi'


def test_repeated_and_comma_joined_headers_keep_their_order():
    """D4: repeated headers are separate entries, comma-joined Vias split, order kept."""
    data = request('Via: SIP/2.0/WSS proxy.example.com:443;branch=z9hG4bKa, SIP/2.0/UDP p2;branch=z9hG4bKb',
                   'Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKc',
                   'From: <sip:alice@example.com>;tag=1', 'To: <sip:bob@example.com>',
                   'Call-ID: x', 'CSeq: 1 MESSAGE',
                   'Contact: <sip:a@1.invalid;transport=ws>;expires=60', 'Contact: <sip:b@2.invalid>')
    msg = parse(data)
    assert [v.host for v in msg.vias] == ['proxy.example.com', 'p2', 'df7jal23ls0d.invalid']
    assert [v.branch for v in msg.vias] == ['z9hG4bKa', 'z9hG4bKb', 'z9hG4bKc']
    assert len(msg.get_all('Contact')) == 2
    out = serialize(msg)
    assert out.index(b'z9hG4bKa') < out.index(b'z9hG4bKc')


def test_folded_header_lines_are_unfolded():
    data = request('Via: SIP/2.0/WS a.invalid;branch=z9hG4bK1', 'From: <sip:alice@example.com>',
                   '  ;tag=1', 'To: <sip:bob@example.com>', 'Subject: I know you\'re there,',
                   '\tpick up the phone', 'Call-ID: x', 'CSeq: 1 MESSAGE')
    msg = parse(data)
    assert msg.get('From') == '<sip:alice@example.com> ;tag=1'
    assert msg.get('Subject') == "I know you're there, pick up the phone"


def test_kamailio_via_with_two_spaces_parses():
    """RFC 7118 §5.1: Kamailio writes `SIP/2.0/WS  127.0.0.1:8088` (two spaces); transports any case."""
    via = Via.parse('SIP/2.0/WS  127.0.0.1:8088;branch=z9hG4bK.k;rport')
    assert (via.transport, via.host, via.port, via.branch) == ('WS', '127.0.0.1', 8088, 'z9hG4bK.k')
    assert Via.parse('SIP / 2.0 / wss abc.invalid;branch=z9hG4bK1').transport == 'WSS'
    assert Via.parse('SIP/2.0/WSS [2001:db8::1]:443;branch=z9hG4bK1').host == '[2001:db8::1]'


def test_serialize_writes_exactly_one_correct_content_length_in_bytes():
    """RFC 3261 §20.14: Content-Length is the byte length (multi-byte UTF-8 counted in bytes)."""
    body = 'héllo wörld ☎'.encode()
    msg = SIPMessage(method='MESSAGE', uri='sip:bob@example.com',
                     headers=[('Via', 'SIP/2.0/WS a.invalid;branch=z9hG4bK1'), ('Content-Length', '3'),
                              ('l', '99')], body=body)
    out = serialize(msg)
    assert out.count(b'Content-Length') == 1
    assert b'Content-Length: %d\r\n' % len(body) in out and len(body) != len(body.decode())


def test_bad_version_gets_505_and_missing_headers_400():
    with pytest.raises(SIPParseError) as info:
        parse(request(start='MESSAGE sip:bob@example.com SIP/7.0'))
    assert info.value.status == 505
    with pytest.raises(SIPParseError, match='missing mandatory header.*Call-ID'):
        parse(request('Via: SIP/2.0/WS a.invalid;branch=z9hG4bK1', 'From: <sip:a@b>;tag=1',
                      'To: <sip:b@c>', 'CSeq: 1 MESSAGE'))


def test_cseq_method_must_match_the_request_method():
    with pytest.raises(SIPParseError, match='does not match'):
        parse(request(start='OPTIONS sip:bob@example.com SIP/2.0'))


@pytest.mark.parametrize('data', [b'', b'garbage', b'INVITE sip:x SIP/2.0\r\nVia: x',
                                  b'SIP/2.0 99 Low\r\n\r\n', b'\x00\x01\x02\r\n\r\n',
                                  b'MESSAGE  sip:x SIP/2.0\r\n\r\n'])
def test_malformed_input_raises_only_the_codec_error(data):
    with pytest.raises(SIPParseError):
        parse(data)


def test_response_without_reason_phrase_parses():
    msg = parse(b'SIP/2.0 200\r\nVia: SIP/2.0/WS a.invalid;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n'
                b'To: <sip:a@b>;tag=2\r\nCall-ID: 1\r\nCSeq: 1 REGISTER\r\n\r\n')
    assert (msg.status, msg.reason, msg.is_request) == (200, '', False)


def test_make_response_copies_vias_and_adds_to_tag():
    msg = parse(request('Via: SIP/2.0/WSS p;branch=z9hG4bKa', 'Via: SIP/2.0/WS c.invalid;branch=z9hG4bKb',
                        'From: <sip:alice@example.com>;tag=1', 'To: <sip:bob@example.com>',
                        'Call-ID: x', 'CSeq: 7 MESSAGE'))
    resp = make_response(msg, 404, to_tag='abc')
    assert resp.get_all('Via') == ['SIP/2.0/WSS p;branch=z9hG4bKa', 'SIP/2.0/WS c.invalid;branch=z9hG4bKb']
    assert resp.get('To') == '<sip:bob@example.com>;tag=abc' and resp.reason == 'Not Found'
    assert resp.cseq == (7, 'MESSAGE')


def test_non_utf8_header_bytes_round_trip():
    data = request(body=b'\xff\xfe\x00binary')
    data = data.replace(b'Max-Forwards: 70', b'Subject: caf\xe9')
    msg = parse(data)
    assert serialize(msg).endswith(b'\xff\xfe\x00binary')
    assert b'Subject: caf\xe9\r\n' in serialize(msg)


def test_via_parameter_names_are_case_insensitive():
    """RFC 3261 §7.3.1: parameter names compare case-insensitively, also on Via."""
    via = Via.parse('SIP/2.0/WS abc.invalid;BRANCH=z9hG4bKx1;Received=10.0.0.1;RPort')
    assert via.branch == 'z9hG4bKx1'
    assert via.param('received') == via.param('RECEIVED') == '10.0.0.1'
    assert str(via) == 'SIP/2.0/WS abc.invalid;BRANCH=z9hG4bKx1;Received=10.0.0.1;RPort'
