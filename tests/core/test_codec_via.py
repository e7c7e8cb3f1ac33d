"""The received mark of a request's top Via (RFC 3261 §18.2.1, RFC 3581 §4)."""
from __future__ import annotations

from aiosip_ws.core.codec import mark_received, parse


def request(via: str) -> bytes:
    return ('OPTIONS sip:a@b SIP/2.0\r\nVia: %s\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch='
            'z9hG4bKz\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 '
            'OPTIONS\r\nMax-Forwards: 70\r\n\r\n' % via).encode()


def top(via: str, host: str = '127.0.0.1', port: int = 5062) -> str:
    message = parse(request(via))
    mark_received(message, host, port)
    return message.get_all('Via')[0]


def test_a_via_from_where_it_says_without_rport_is_left_as_it_came():
    via = 'SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKa'
    message = parse(request(via))
    before = message.headers[1][1]
    mark_received(message, '127.0.0.1', 5062)
    assert message.headers[1][1] is before


def test_received_rport_and_a_clients_own_marks():
    assert top('SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKa') == \
        'SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKa;received=127.0.0.1'
    assert top('SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKa;rport') == \
        'SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKa;received=127.0.0.1;rport=5062'
    assert top('SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKa;received=6.6.6.6') == \
        'SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKa'            # a client's own received: dropped
    assert top('SIP/2.0/UDP [::1]:5062;branch=z9hG4bKa', host='::1') == \
        'SIP/2.0/UDP [::1]:5062;branch=z9hG4bKa'
