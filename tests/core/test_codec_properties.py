"""Property-based tests of the pure codec and framing (hypothesis).

(a) any valid :class:`SIPMessage` survives ``serialize`` then ``parse`` (RFC 3261
    §20.14: Content-Length is recomputed; RFC 7118 §5: it may also be left out);
(b) ``parse`` of arbitrary bytes, arbitrary text and mutations of valid messages
    raises nothing but :class:`SIPParseError`, and what it accepts re-serialises
    to the same message;
(c) ``framing.receive`` never raises, whatever a WebSocket peer sends.
"""
from __future__ import annotations

import functools
import os
import re
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aiosip_ws.core import framing
from aiosip_ws.core.codec import COMPACT_FORMS, SIPMessage, canonical_name, parse, serialize
from aiosip_ws.errors import SIPParseError
from tests.support import RFC4475_DIR

#: Few enough examples for the file to run in a few seconds; a deadline generous enough
#: for a slow, shared CI machine (it only catches pathological slowness, e.g. backtracking).
EXAMPLES = int(os.environ.get('CODEC_PROPERTY_EXAMPLES', '100'))
PROPERTY = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=2),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: for the cheap properties (most random input fails on the first line)
MANY = settings(PROPERTY, max_examples=EXAMPLES * 4)

TORTURE_VALID = RFC4475_DIR / 'valid'     # seeds for the mutations

# ---------------------------------------------------------------------------- strategies
TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
methods = st.one_of(st.sampled_from(['INVITE', 'ACK', 'BYE', 'CANCEL', 'OPTIONS', 'REGISTER',
                                     'MESSAGE', 'SUBSCRIBE', 'NOTIFY', 'REFER', 'INFO']), tokens)

#: the headers the parser checks: generated on purpose, never at random
CHECKED = {'via', 'from', 'to', 'call-id', 'cseq', 'max-forwards', 'content-length',
           'content-type'}
COMPACT = {full.lower(): short for short, full in COMPACT_FORMS.items()}


def spellings(name: str) -> st.SearchStrategy[str]:
    """``name`` as it may appear: canonical, any case, or its compact form."""
    options = [st.just(name), st.just(name.lower()), st.just(name.upper())]
    if name.lower() in COMPACT:
        short = COMPACT[name.lower()]
        options += [st.just(short), st.just(short.upper())]
    return st.one_of(options)


# Header values: anything but CR and LF (and lone surrogates, which bytes never decode
# to), without the SP/HTAB the parser strips from both ends.
value_chars = st.characters(codec='utf-8', exclude_characters='\r\n')
values = st.text(value_chars, max_size=40).map(lambda v: v.strip(' \t'))

labels = st.text('abcdefghijklmnopqrstuvwxyz0123456789', min_size=1, max_size=8)
hosts = st.one_of(
    st.lists(labels, min_size=1, max_size=4).map('.'.join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: '%d.%d.%d.%d' % t),
    st.just('[2001:db8::1]'),
)
ports = st.one_of(st.none(), st.integers(1, 65535))
params = st.lists(st.tuples(tokens, st.one_of(st.none(), tokens)), max_size=3).map(
    lambda ps: ''.join(';%s' % k if v is None else ';%s=%s' % (k, v) for k, v in ps))
# user part: unreserved, escapes and the user-unreserved marks, "?" and ";" included
# (RFC 4475 3.1.1.2, 3.1.1.9); never "@"
users = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/%", min_size=1, max_size=12)


@st.composite
def sip_uris(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(['sip', 'sips', 'SIP']))
    user = draw(st.one_of(st.none(), users))
    port = draw(ports)
    uri = '%s:%s%s' % (scheme, '' if user is None else user + '@', draw(hosts))
    uri += '' if port is None else ':%d' % port
    return uri + draw(params)


# any other scheme: opaque, any URI character (no CTL, SP, <, > or ")
other_uris = st.tuples(
    st.sampled_from(['tel', 'urn', 'http', 'x-custom+1.0']),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/:%@[]#", min_size=1, max_size=20),
).map(lambda t: '%s:%s' % t)
request_uris = st.one_of(sip_uris(), other_uris)


@st.composite
def vias(draw: st.DrawFn) -> str:
    """One Via header value: one or more comma-joined entries (RFC 3261 20.42)."""
    entries = []
    for _ in range(draw(st.integers(1, 3))):
        port = draw(ports)
        entries.append('SIP/2.0/%s %s%s;branch=z9hG4bK%s%s' % (
            draw(st.sampled_from(['WS', 'WSS', 'ws', 'UDP', 'TCP', 'TLS', 'SCTP'])),
            draw(hosts), '' if port is None else ':%d' % port, draw(tokens), draw(params)))
    return ', '.join(entries)


@st.composite
def sip_messages(draw: st.DrawFn) -> SIPMessage:
    """A random but valid SIPMessage, headers in a random order and spelling."""
    is_request = draw(st.booleans())
    method = draw(methods)
    cseq_method = method if is_request else draw(methods)
    headers: list[tuple[str, str]] = [(draw(spellings('Via')), draw(vias()))
                                      for _ in range(draw(st.integers(1, 3)))]
    headers += [
        (draw(spellings('From')), draw(values)),
        (draw(spellings('To')), draw(values)),
        (draw(spellings('Call-ID')), draw(values)),
        (draw(spellings('CSeq')), '%d %s' % (draw(st.integers(0, 2 ** 31 - 1)), cseq_method)),
    ]
    if draw(st.booleans()):
        headers.append((draw(spellings('Max-Forwards')), str(draw(st.integers(0, 255)))))
    if draw(st.booleans()):
        headers.append((draw(spellings('Content-Type')), draw(values)))
    extra_names = tokens.filter(lambda n: canonical_name(n).lower() not in CHECKED)
    headers += draw(st.lists(st.tuples(extra_names, values), max_size=6))
    if draw(st.booleans()):                  # any Content-Length given is replaced (RFC 3261 §20.14)
        headers.append((draw(spellings('Content-Length')), str(draw(st.integers(0, 99)))))
    headers = draw(st.permutations(headers))
    body = draw(st.one_of(st.binary(max_size=300), st.sampled_from([
        b'', b'\r\n', b'\r\n\r\n', b'v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n',
        b'OPTIONS sip:x SIP/2.0\r\n\r\n', b'SIP/2.0 200 OK\r\n\r\n'])))
    if is_request:
        return SIPMessage(method=method, uri=draw(request_uris), headers=headers, body=body,
                          version=draw(st.sampled_from(['SIP/2.0', 'sip/2.0'])))
    reason = draw(st.text(value_chars, max_size=30))
    return SIPMessage(status=draw(st.integers(100, 699)), reason=reason, headers=headers, body=body)


def expected(msg: SIPMessage, *, content_length: bool) -> SIPMessage:
    """What parsing ``msg``'s wire form gives: names expanded and canonical, one
    Content-Length (the body's length, written last) or none."""
    headers = [(canonical_name(name), value) for name, value in msg.headers
               if canonical_name(name) != 'Content-Length']
    if content_length:
        headers.append(('Content-Length', str(len(msg.body))))
    return SIPMessage(method=msg.method, uri=msg.uri, status=msg.status, reason=msg.reason,
                      headers=headers, body=msg.body, version=msg.version)


def without_content_length(wire: bytes) -> bytes:
    head, _, body = wire.partition(b'\r\n\r\n')
    lines = head.split(b'\r\n')
    assert lines[-1].startswith(b'Content-Length: ')
    return b'\r\n'.join(lines[:-1]) + b'\r\n\r\n' + body


#: the test's own idea of "this starts a SIP message": a start line after optional CRLFs
START_LINE = re.compile(rb'(?:\r\n)*(?:[A-Za-z]+ [^\s]+ SIP/[0-9]|SIP/[0-9]\.[0-9] [0-9]{3})')


def looks_like_a_second_message(data: bytes) -> bool:
    return START_LINE.match(data) is not None


# ---------------------------------------------------------------------------- (a) round trip
@PROPERTY
@given(sip_messages())
def test_serialize_then_parse_gives_the_same_message(msg):
    """RFC 3261 §20.14: serialize writes one correct Content-Length; parse gives the message back,
    header order, repeated and comma-joined headers, compact forms and body bytes kept."""
    wire = serialize(msg)
    assert wire.count(b'\r\nContent-Length: ') == 1
    parsed = parse(wire)
    assert parsed.top_branch == parsed.top_via.branch
    assert parse(wire) == expected(msg, content_length=True)
    assert parse(wire.decode('utf-8', 'surrogateescape')) == parse(wire)


@PROPERTY
@given(sip_messages())
def test_without_content_length_the_body_runs_to_the_end(msg):
    """RFC 7118 §5 (RFC7118-5-c): without Content-Length the body is the rest of the WebSocket
    message, unless it is untyped and is a SIP message itself (RFC7118-5-b)."""
    wire = without_content_length(serialize(msg))
    typed = any(canonical_name(name) == 'Content-Type' for name, _ in msg.headers)
    if not typed and looks_like_a_second_message(msg.body):
        with pytest.raises(SIPParseError, match='two SIP messages'):
            parse(wire)
    else:
        assert parse(wire) == expected(msg, content_length=False)


@PROPERTY
@given(sip_messages(), st.one_of(st.binary(max_size=50), st.sampled_from(
    [b'OPTIONS sip:x SIP/2.0\r\n\r\n', b'\r\nSIP/2.0 200 OK\r\n\r\n', b'\r\n', b'junk'])))
def test_bytes_beyond_content_length_are_discarded(msg, extra):
    """RFC 3261 §18.3 (RFC3261-18.3-a): with Content-Length, what follows the body is not part of the message,
    and is refused when it starts another SIP message (RFC7118-5-b)."""
    wire = serialize(msg) + extra
    if looks_like_a_second_message(extra):
        with pytest.raises(SIPParseError, match='two SIP messages'):
            parse(wire)
    else:
        assert parse(wire) == expected(msg, content_length=True)


# ---------------------------------------------------------------------------- (b) robustness
def check_parse(data: bytes | str) -> None:
    """Only SIPParseError; what parses re-serialises to the same message."""
    try:
        msg = parse(data)
    except SIPParseError as exc:
        assert exc.status in (400, 505) and exc.reason
        assert exc.is_request in (True, False, None)
        assert exc.partial is None or isinstance(exc.partial, SIPMessage)
        return
    assert isinstance(msg, SIPMessage) and msg.cseq
    # the single-pass lookup finds what parsing the whole top Via finds
    assert (msg.top_branch or None) == (msg.top_via.branch or None)
    again = parse(serialize(msg))
    assert again == expected(msg, content_length=True)


#: a request with every mandatory header but CSeq, for the @example cases below
HEAD = (b'INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/WS h.invalid;branch=z9hG4bK1\r\n'
        b'From: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: c\r\n')


@MANY
@given(st.binary(max_size=2000))
@example(b'')
@example(b'\r\n\r\n')
@example(b'SIP/2.0 200 OK\r\n\r\n')
@example(HEAD + b'CSeq: \xc2\xb2 INVITE\r\n\r\n')                 # int('²') fails
@example(HEAD + b'CSeq: 1 INVITE\r\nContent-Length: \xc2\xb2\r\n\r\n')
@example(HEAD + b'CSeq: 1 INVITE\r\nContent-Length: ' + b'9' * 5000 + b'\r\n\r\n')
@example(HEAD + b'CSeq: ' + b'0' * 5000 + b'1 INVITE\r\n\r\n')   # int() refuses 4300+ digits
@example(HEAD.replace(b'WS h.invalid', b'WS h.invalid:' + b'9' * 5000) + b'CSeq: 1 INVITE\r\n\r\n')
@example(HEAD + b'CSeq: 1 INVITE\r\nSubject: a\nInjected: yes\r\n\r\n')
@example(b'INVITE\n sip:a@b SIP/2.0\r\n' + HEAD.split(b'\r\n', 1)[1] + b'CSeq: 1 INVITE\r\n\r\n')
def test_parse_of_arbitrary_bytes_raises_only_sip_parse_error(data):
    check_parse(data)


@MANY
@given(st.text(st.characters(exclude_categories=()), max_size=1000))
@example('\ud800')
@example(HEAD.decode() + 'CSeq: 1 INVITE\r\nSubject: \udcff\ud800\r\n\r\n')   # lone surrogates
@example(HEAD.decode() + 'CSeq: \u0663 INVITE\r\n\r\n')                       # Arabic-Indic 3
def test_parse_of_arbitrary_text_raises_only_sip_parse_error(text):
    check_parse(text)


@functools.lru_cache(maxsize=1)
def seed_messages() -> list[bytes]:
    seeds = sorted(path.read_bytes() for path in TORTURE_VALID.glob('*.dat'))
    seeds.append(b'REGISTER sip:example.com SIP/2.0\r\nv: SIP/2.0/WSS a.invalid;branch=z9hG4bK1\r\n'
                 b'f: <sip:a@example.com>;tag=1\r\nt: <sip:a@example.com>\r\ni: x\r\n'
                 b'CSeq: 1 REGISTER\r\nm: <sip:a@a.invalid;transport=ws>;+sip.instance="<urn:x>"\r\n'
                 b'l: 0\r\n\r\n')
    return seeds


INTERESTING = [b'\r\n', b'\r', b'\n', b'\r\n\r\n', b'\r\n ', b' ', b'\t', b':', b';', b',', b'<',
               b'>', b'"', b'\\', b'\x00', b'\xff', b'?', b'@', b'/', b'=', b'SIP/2.0 ',
               b'Content-Length: 99\r\n', b'l: 0\r\n', b'CSeq: 1 ACK\r\n', b'Via: ;\r\n',
               b'9' * 30, b'\xc2\xb2']


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid message (an RFC 4475 one or a generated one) with a few edits."""
    if draw(st.booleans()):
        data = bytearray(draw(st.sampled_from(seed_messages())))
    else:
        data = bytearray(serialize(draw(sip_messages())))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(['insert', 'delete', 'replace', 'duplicate', 'truncate']))
        if op == 'insert':
            data[at:at] = draw(st.one_of(st.sampled_from(INTERESTING), st.binary(max_size=8)))
        elif op == 'delete':
            del data[at:at + draw(st.integers(1, 20))]
        elif op == 'replace' and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == 'duplicate':
            data[at:at] = data[at:at + draw(st.integers(1, 80))]
        else:
            del data[at:]
    return bytes(data)


@PROPERTY
@given(mutated())
def test_parse_of_mutated_messages_raises_only_sip_parse_error(data):
    check_parse(data)
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError:
        return
    check_parse(text)


# ---------------------------------------------------------------------------- (c) framing
def check_receive(data: bytes | str) -> None:
    event = framing.receive(data, server_header='prop')
    assert isinstance(event, (framing.KeepAlivePing, framing.KeepAlivePong,
                              framing.MessageReceived, framing.MessageRejected))
    if isinstance(event, (framing.MessageReceived, framing.MessageRejected)):
        assert event.binary == isinstance(data, bytes)
    if isinstance(event, framing.MessageRejected) and event.response is not None:
        assert event.response.status in (400, 416, 505)
        out = framing.encode(event.response)             # the error response can be sent
        raw = out.encode() if isinstance(out, str) else out
        assert raw.startswith(b'SIP/2.0 %d ' % event.response.status)
        assert raw.count(b'\r\n\r\n') >= 1


@PROPERTY
@given(st.one_of(st.binary(max_size=1500), st.text(st.characters(exclude_categories=()),
                                                    max_size=800), mutated(),
                 mutated().map(lambda b: b.decode('utf-8', 'replace'))))
@example('')
@example(b'')
@example('\r\n\r\n')
@example(b'\n\r')
@example('\r\n\r\nOPTIONS')
def test_framing_receive_never_raises(data):
    """RFC 7118 §6 and §5: every WebSocket message becomes exactly one event, never an exception."""
    check_receive(data)
