"""The sans-I/O SIP <-> WebSocket mapping (aiosip_ws.core.framing), RFC 7118 4.2, 5 and 6."""
from __future__ import annotations

import pytest

from aiosip_ws.core import framing
from aiosip_ws.core.codec import SIPMessage

REQUEST = ('OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS a.invalid;branch=z9hG4bK1\r\n'
           'From: <sip:a@example.com>;tag=1\r\nTo: <sip:example.com>\r\nCall-ID: c1\r\n'
           'CSeq: 1 OPTIONS\r\n\r\n')


def test_constants_are_the_registered_values():
    """RFC 7118 §10 (RFC7118-10-a): subprotocol token `sip`."""
    assert framing.SUBPROTOCOL == 'sip'
    assert (framing.CRLF_PING, framing.CRLF_PONG) == ('\r\n\r\n', '\r\n')


@pytest.mark.parametrize('data', ['\r\n\r\n', b'\r\n\r\n', '\r\n\r\n\r\n\r\n'])
def test_double_crlf_is_a_ping(data):
    """RFC 7118 §6: `\\r\\n\\r\\n`, text or binary, is a keep-alive ping, never a SIP message."""
    assert isinstance(framing.receive(data), framing.KeepAlivePing)


@pytest.mark.parametrize('data', ['\r\n', b'\r\n', '\n', '\r'])
def test_single_crlf_is_a_pong(data):
    """RFC 5626 §4.4 (RFC5626-4.4-a): a CRLF pong (and any CR/LF-only message) is swallowed."""
    assert isinstance(framing.receive(data), framing.KeepAlivePong)


def test_text_and_binary_messages_parse_the_same():
    """RFC 7118 §4.2 (RFC7118-4.2-a): both frame types carry SIP."""
    text = framing.receive(REQUEST)
    binary = framing.receive(REQUEST.encode())
    assert isinstance(text, framing.MessageReceived) and isinstance(binary, framing.MessageReceived)
    assert text.message == binary.message and binary.binary and not text.binary


def test_utf8_message_goes_in_a_text_frame_and_other_bytes_in_a_binary_frame():
    """RFC 7118 §4.2 (RFC7118-4.2-b, RFC7118-4.2-c)."""
    msg = SIPMessage(method='MESSAGE', uri='sip:b@example.com', headers=[('Via', 'SIP/2.0/WS a.invalid')],
                     body='héllo'.encode())
    assert isinstance(framing.encode(msg), str)
    msg.body = b'\xff\xfe\x00'
    data = framing.encode(msg)
    assert isinstance(data, bytes) and data.endswith(b'\r\n\r\n\xff\xfe\x00')


def test_malformed_request_with_routing_headers_gets_a_400():
    broken = REQUEST.replace('CSeq: 1 OPTIONS', 'CSeq: 1 OPTIONS\r\nContent-Length: 99')
    event = framing.receive(broken, server_header='test')
    assert isinstance(event, framing.MessageRejected)
    assert event.response is not None and event.response.status == 400
    assert event.response.get('Via') == 'SIP/2.0/WS a.invalid;branch=z9hG4bK1'
    assert event.response.get('Server') == 'test'
    assert '\r' not in event.response.reason and 'Content-Length' in event.response.reason


def test_malformed_response_or_unroutable_request_is_only_dropped():
    """A broken response is dropped (RFC 3261 18.3); so is a request without Via."""
    response = 'SIP/2.0 200 OK\r\nVia: SIP/2.0/WS a.invalid\r\nContent-Length: 50\r\n\r\n'
    event = framing.receive(response)
    assert isinstance(event, framing.MessageRejected) and event.response is None
    no_via = REQUEST.replace('Via: SIP/2.0/WS a.invalid;branch=z9hG4bK1\r\n', '')
    event = framing.receive(no_via)
    assert isinstance(event, framing.MessageRejected) and event.response is None
