"""Framing SIP on a byte stream by Content-Length (RFC 3261 §18.3, aiosip_ws.core.stream)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiosip_ws.core import framing
from aiosip_ws.core.framing import KeepAlivePing, KeepAlivePong
from aiosip_ws.core.stream import Framed, FramingFailed, StreamFramer
from aiosip_ws.errors import ConfigurationError


def message(body=b'', *, length=None, name='Content-Length'):
    head = (b'MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bKs\r\n'
            b'Max-Forwards: 70\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n'
            b'Call-ID: s\r\nCSeq: 1 MESSAGE\r\n')
    if length is not False:
        head += ('%s: %s\r\n' % (name, len(body) if length is None else length)).encode()
    return head + b'\r\n' + body


def framed(events):
    return [event.data for event in events if isinstance(event, Framed)]


def test_messages_end_where_content_length_says_even_with_blank_lines_in_the_body():
    body = b'line one\r\n\r\nline three\r\n\r\n'
    stream = message(body) + message(b'second', name='l') + message()
    framer = StreamFramer()
    assert framed(framer.feed(stream)) == [message(body), message(b'second', name='l'), message()]
    assert framer.buffered == 0
    parsed = framing.receive(message(body))
    assert isinstance(parsed, framing.MessageReceived) and parsed.message.body == body


@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=40))
def test_any_split_of_the_stream_gives_the_same_messages(cuts):
    stream = b'\r\n\r\n' + message(b'x' * 300) + b'\r\n' + message(b'\r\n\r\n') + b'\r\n\r\n'
    framer = StreamFramer()
    events, at = [], 0
    for cut in cuts:
        events += framer.feed(stream[at:at + cut])
        at += cut
    events += framer.feed(stream[at:])
    kinds = [type(e).__name__ for e in events]
    assert framed(events) == [message(b'x' * 300), message(b'\r\n\r\n')]
    assert kinds == ['KeepAlivePing', 'Framed', 'Framed', 'KeepAlivePing'] or kinds == [
        'KeepAlivePing', 'Framed', 'KeepAlivePong', 'Framed', 'KeepAlivePing']


def test_keep_alives_between_messages():
    framer = StreamFramer()
    assert framer.feed(b'\r\n\r\n') == [KeepAlivePing()]
    assert framer.feed(b'\r\n') == []                     # a pong, or half a ping
    assert framer.feed(b'\r\n') == [KeepAlivePing()]       # half a ping
    assert framer.feed(b'\r\n') == []
    events = framer.feed(message())
    assert events == [KeepAlivePong(), Framed(message())]


def test_a_message_without_content_length_has_no_body():
    framer = StreamFramer()
    assert framed(framer.feed(message(length=False) + message(b'ok'))) == [
        message(length=False), message(b'ok')]


@pytest.mark.parametrize('stream, status, reason', [
    (message(b'abc', length='three'), 400, 'cannot frame'),
    (message(b'abc', length='-3'), 400, 'cannot frame'),
    (message(b'abc') .replace(b'Content-Length: 3', b'Content-Length: 3\r\nl: 4'), 400,
     'cannot frame'),
    (message(length=70000), 513, 'over the limit'),
    (b'MESSAGE sip:b@x SIP/2.0\r\nSubject: ' + b'x' * 70000, 513, 'longer than'),
])
def test_a_stream_that_cannot_be_framed_fails_once_and_for_all(stream, status, reason):
    framer = StreamFramer()
    events = framer.feed(message() + stream)
    assert isinstance(events[0], Framed) and isinstance(events[-1], FramingFailed)
    failure = events[-1]
    assert failure.status == status and reason in str(failure.error)
    assert framer.failed and framer.feed(message()) == [] and framer.buffered == 0
    if status == 400 or 'over the limit' in reason:
        assert failure.head.startswith(b'MESSAGE sip:')    # enough to answer the request


def test_the_limit_is_checked():
    with pytest.raises(ConfigurationError):
        StreamFramer(max_size=10)
    body = b'x' * 100
    framer = StreamFramer(max_size=len(message(body)))
    assert framed(framer.feed(message(body))) == [message(body)]
    assert isinstance(framer.feed(message(body + b'!'))[-1], FramingFailed)
