"""SIP message codec for message-oriented transports (RFC 3261 7, 18.3; RFC 7118 5).

Pure and I/O-free, like h11: bytes in, :class:`SIPMessage` out, and back.  It
knows nothing of aiosip or asyncio; :mod:`aiosip_ws.adapter` turns its
messages into aiosip objects.

Framing rule (RFC 7118 5, checklist R-5.0.3/R-5.0.4): the WebSocket message
*is* the SIP message.  The body is everything after the first blank line, so
Content-Length may be absent.  When it is present, RFC 3261 18.3's rules for
message-oriented transports apply: bytes beyond it are discarded, and a body
shorter than it is an error (a request gets 400, a response is dropped).
Content-Length never makes the receiver wait for more data.  Bytes beyond
Content-Length that begin a second SIP message are refused: one SIP message
per WebSocket message (R-5.0.2).

What the parser accepts that aiosip 0.2.0's does not: compact header names,
``Name:value`` and ``Name : value`` with any whitespace, repeated headers,
folded (continuation) lines, comma-joined Via/Contact/Route values, Kamailio's
``SIP/2.0/WS  host`` (two spaces), bodies with CRLFs or arbitrary bytes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from .errors import SIPParseError
from .sipuri import parse_params, split_header_values

__all__ = ['SIPMessage', 'Via', 'parse', 'serialize', 'COMPACT_FORMS', 'MULTI_VALUE_HEADERS',
           'MANDATORY_HEADERS']

CRLF = b'\r\n'

#: RFC 3261 7.3.3 and the IANA registry: compact form -> full header name.
COMPACT_FORMS = {
    'a': 'Accept-Contact', 'b': 'Referred-By', 'c': 'Content-Type', 'd': 'Request-Disposition',
    'e': 'Content-Encoding', 'f': 'From', 'i': 'Call-ID', 'j': 'Reject-Contact', 'k': 'Supported',
    'l': 'Content-Length', 'm': 'Contact', 'n': 'Identity-Info', 'o': 'Event', 'r': 'Refer-To',
    's': 'Subject', 't': 'To', 'u': 'Allow-Events', 'v': 'Via', 'x': 'Session-Expires',
    'y': 'Identity',
}

#: How the codec spells well-known header names on output (and after expanding compact forms).
_CANONICAL = {name.lower(): name for name in (
    'Via', 'From', 'To', 'Call-ID', 'CSeq', 'Contact', 'Max-Forwards', 'Content-Length',
    'Content-Type', 'Route', 'Record-Route', 'Path', 'Expires', 'Supported', 'Require',
    'Allow', 'User-Agent', 'Server', 'WWW-Authenticate', 'Authorization',
    'Proxy-Authenticate', 'Proxy-Authorization', 'Event', 'Subject', 'Allow-Events',
)} | {'call-id': 'Call-ID', 'cseq': 'CSeq', 'www-authenticate': 'WWW-Authenticate'}

#: Headers whose comma-separated values are separate entries (RFC 3261 7.3.1).
MULTI_VALUE_HEADERS = frozenset({'via', 'contact', 'route', 'record-route', 'path'})

#: Headers every request and response must carry (RFC 3261 8.1.1, 8.2.6.2).
MANDATORY_HEADERS = ('Via', 'From', 'To', 'Call-ID', 'CSeq')

_TOKEN = re.compile(rb"^[A-Za-z0-9\-.!%*_+`'~]+$")
_TOKEN_STR = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_STATUS_LINE = re.compile(rb'^SIP/(\d+\.\d+) (\d{3})(?: (.*))?$', re.DOTALL)
_SECOND_MESSAGE = re.compile(rb'^(?:\r\n)*(?:[A-Za-z]+ \S+ SIP/\d|SIP/\d\.\d \d{3})')
_VIA = re.compile(r'^\s*SIP\s*/\s*(\d+\.\d+)\s*/\s*([A-Za-z0-9\-.!%*_+`\'~]+)\s+'
                  r'(\[[0-9A-Fa-f:.]+\]|[^\s;:]+)(?:\s*:\s*(\d+))?\s*(.*)$', re.DOTALL)


def canonical_name(name: str) -> str:
    """Expand a compact header name and give a well-known one its usual spelling."""
    if len(name) == 1:
        full = COMPACT_FORMS.get(name.lower())
        if full:
            return full
    return _CANONICAL.get(name.lower(), name)


@dataclass(frozen=True)
class Via:
    """One Via entry: ``SIP/2.0/WSS host:port;branch=...;rport``."""

    transport: str
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]
    version: str = '2.0'

    @classmethod
    def parse(cls, value: str) -> 'Via':
        m = _VIA.match(value)
        if not m:
            raise SIPParseError('bad Via header %r' % value)
        rest = m.group(5).strip()
        if rest and not rest.startswith(';'):
            raise SIPParseError('bad Via parameters %r' % value)
        return cls(transport=m.group(2).upper(), host=m.group(3),
                   port=int(m.group(4)) if m.group(4) else None,
                   params=parse_params(rest), version=m.group(1))

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key.lower() == name:
                return value
        return None

    @property
    def branch(self) -> str | None:
        return self.param('branch')

    def __str__(self) -> str:
        sent_by = self.host if self.port is None else '%s:%d' % (self.host, self.port)
        params = ''.join(';%s' % k if v is None else ';%s=%s' % (k, v) for k, v in self.params)
        return 'SIP/%s/%s %s%s' % (self.version, self.transport, sent_by, params)


@dataclass
class SIPMessage:
    """One SIP request or response, headers kept in wire order.

    For a request ``method`` and ``uri`` are set; for a response ``status``
    and ``reason``.  ``headers`` is a list of ``(name, value)`` pairs, names
    already expanded from compact form; ``body`` is the raw body bytes.
    """

    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str = ''
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b''
    version: str = 'SIP/2.0'

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (any case, compact form allowed)."""
        wanted = canonical_name(name).lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``; comma-joined Via/Contact/Route values are split."""
        wanted = canonical_name(name).lower()
        values = [value for key, value in self.headers if key.lower() == wanted]
        if wanted in MULTI_VALUE_HEADERS:
            return [item for value in values for item in split_header_values(value)]
        return values

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` header by one with ``value`` (kept at the first one's place)."""
        wanted = canonical_name(name).lower()
        out: list[tuple[str, str]] = []
        placed = False
        for key, old in self.headers:
            if key.lower() == wanted:
                if not placed:
                    out.append((key, value))
                    placed = True
            else:
                out.append((key, old))
        if not placed:
            out.append((canonical_name(name), value))
        self.headers = out

    def remove(self, name: str) -> None:
        wanted = canonical_name(name).lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != wanted]

    @property
    def cseq(self) -> tuple[int, str]:
        """``(number, method)`` from the CSeq header."""
        value = self.get('CSeq')
        if value is None:
            raise SIPParseError('missing CSeq header')
        return _parse_cseq(value)

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(value) for value in self.get_all('Via')]

    def start_line(self) -> str:
        if self.is_request:
            return '%s %s %s' % (self.method, self.uri, self.version)
        return '%s %03d %s' % (self.version, self.status or 0, self.reason)


def _parse_cseq(value: str) -> tuple[int, str]:
    parts = value.split()
    if len(parts) != 2 or not parts[0].isdigit() or not _TOKEN_STR.match(parts[1]):
        raise SIPParseError('bad CSeq header %r' % value)
    number = int(parts[0])
    if number >= 2 ** 31:
        raise SIPParseError('CSeq number %s is larger than 2**31 - 1' % parts[0])
    return number, parts[1]


def _unfold(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Join continuation lines (starting with SP or HTAB) onto the header above."""
    pending: bytes | None = None
    for line in lines:
        if line[:1] in (b' ', b'\t'):
            if pending is None:
                raise SIPParseError('continuation line before the first header')
            pending = pending.rstrip() + b' ' + line.strip()
            continue
        if pending is not None:
            yield pending
        pending = line
    if pending is not None:
        yield pending


def _decode(data: bytes) -> str:
    # Header bytes that are not UTF-8 are kept, not lost: surrogateescape
    # round-trips them through serialize() unchanged.
    return data.decode('utf-8', 'surrogateescape')


def parse(data: bytes | str, *, strict_mandatory: bool = True) -> SIPMessage:
    """Parse one WebSocket message into one :class:`SIPMessage`.

    Raises :class:`SIPParseError` (with the status a request should get and
    whatever could be parsed in ``partial``) for anything malformed.
    """
    if isinstance(data, str):
        data = data.encode('utf-8', 'surrogateescape')
    # RFC 3261 7.5: CRLFs before the start line are ignored.
    start = 0
    while data.startswith(CRLF, start):
        start += 2
    if start:
        data = data[start:]
    if not data:
        raise SIPParseError('empty message', is_request=None)
    head_end = data.find(b'\r\n\r\n')
    if head_end < 0:
        is_request = not data.startswith(b'SIP/')
        raise SIPParseError('no blank line (CRLF CRLF) after the headers', is_request=is_request)
    head, body = data[:head_end], data[head_end + 4:]
    lines = head.split(CRLF)
    first = lines[0]
    msg = SIPMessage()
    if first.startswith(b'SIP/'):
        m = _STATUS_LINE.match(first)
        if not m:
            raise SIPParseError('bad status line %r' % _decode(first), is_request=False)
        code = int(m.group(2))
        if not 100 <= code <= 699:
            raise SIPParseError('status code %d out of range' % code, is_request=False)
        msg.status, msg.reason = code, _decode(m.group(3) or b'')
        msg.version = 'SIP/' + m.group(1).decode()
        is_request = False
    else:
        parts = first.split(b' ')
        is_request = True
        if len(parts) != 3 or not all(parts):
            raise SIPParseError('bad request line %r' % _decode(first), is_request=True)
        method, uri, version = parts
        if not _TOKEN.match(method):
            raise SIPParseError('bad method %r' % _decode(method), is_request=True)
        msg.method, msg.uri, msg.version = method.decode(), _decode(uri), _decode(version)
    try:
        for line in _unfold(lines[1:]):
            name, colon, value = line.partition(b':')
            name = name.rstrip(b' \t')
            if not colon or not _TOKEN.match(name):
                raise SIPParseError('bad header line %r' % _decode(line))
            msg.headers.append((canonical_name(name.decode()), _decode(value.strip(b' \t'))))
    except SIPParseError as exc:
        exc.is_request, exc.partial = is_request, msg
        raise
    if msg.version.upper() != 'SIP/2.0':
        raise SIPParseError('SIP version %s is not supported' % msg.version, status=505,
                            is_request=is_request, partial=msg)
    msg.body = _frame_body(msg, body, is_request)
    _check_mandatory(msg, is_request, strict_mandatory)
    return msg


def _frame_body(msg: SIPMessage, body: bytes, is_request: bool) -> bytes:
    lengths = {value.strip() for key, value in msg.headers if key == 'Content-Length'}
    if not lengths:
        return body                                  # R-5.0.4 (a): body runs to the end
    if len(lengths) > 1:
        raise SIPParseError('conflicting Content-Length headers', is_request=is_request, partial=msg)
    declared = lengths.pop()
    if not declared.isdigit():
        raise SIPParseError('bad Content-Length %r' % declared, is_request=is_request, partial=msg)
    length = int(declared)
    if length > len(body):                           # R-5.0.4 (c)
        raise SIPParseError('body is %d bytes, shorter than Content-Length %d'
                            % (len(body), length), is_request=is_request, partial=msg)
    extra = body[length:]
    if extra and _SECOND_MESSAGE.match(extra):
        raise SIPParseError('two SIP messages in one WebSocket message',
                            is_request=is_request, partial=msg)
    return body[:length]                             # R-5.0.4 (b): the rest is discarded


def _check_mandatory(msg: SIPMessage, is_request: bool, strict: bool) -> None:
    present = {key.lower() for key, _ in msg.headers}
    missing = [name for name in MANDATORY_HEADERS if name.lower() not in present]
    if missing and strict:
        raise SIPParseError('missing mandatory header%s %s' % ('s' if len(missing) > 1 else '',
                            ', '.join(missing)), is_request=is_request, partial=msg)
    if 'cseq' in present:
        try:
            _, cseq_method = msg.cseq
        except SIPParseError as exc:
            exc.is_request, exc.partial = is_request, msg
            raise
        if is_request and cseq_method != msg.method:
            raise SIPParseError('CSeq method %s does not match request method %s'
                                % (cseq_method, msg.method), is_request=True, partial=msg)


def serialize(msg: SIPMessage) -> bytes:
    """Write ``msg`` in wire form with exactly one, correct Content-Length (R-5.0.5)."""
    out = [msg.start_line()]
    for name, value in msg.headers:
        if name.lower() in ('content-length', 'l'):
            continue
        out.append('%s: %s' % (name, value))
    out.append('Content-Length: %d' % len(msg.body))
    return ('\r\n'.join(out) + '\r\n\r\n').encode('utf-8', 'surrogateescape') + msg.body


#: Reason phrases for the status codes aiosip-ws generates itself (RFC 3261 21).
REASONS = {
    100: 'Trying', 180: 'Ringing', 200: 'OK', 202: 'Accepted', 400: 'Bad Request',
    401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed',
    407: 'Proxy Authentication Required', 408: 'Request Timeout', 415: 'Unsupported Media Type',
    416: 'Unsupported URI Scheme', 420: 'Bad Extension', 423: 'Interval Too Brief',
    430: 'Flow Failed', 480: 'Temporarily Unavailable', 481: 'Call/Transaction Does Not Exist',
    482: 'Loop Detected', 483: 'Too Many Hops', 500: 'Server Internal Error',
    501: 'Not Implemented', 503: 'Service Unavailable', 504: 'Server Time-out',
    505: 'Version Not Supported', 513: 'Message Too Large',
}

#: Headers a response copies from its request (RFC 3261 8.2.6.2).
_COPIED_TO_RESPONSE = ('via', 'from', 'to', 'call-id', 'cseq', 'record-route')


def make_response(request: SIPMessage, status: int, reason: str | None = None, *,
                  to_tag: str | None = None,
                  headers: Iterable[tuple[str, str]] = (), body: bytes = b'') -> SIPMessage:
    """A response to ``request`` built as RFC 3261 8.2.6.2 says.

    Every Via is copied in order, with From, Call-ID, CSeq and (for 2xx/18x) the
    Record-Route; ``to_tag`` is added to To unless the request's To already
    has a tag.  ``request`` may be a partially parsed message (for a 400).
    """
    copied: list[tuple[str, str]] = []
    for name, value in request.headers:
        lname = name.lower()
        if lname not in _COPIED_TO_RESPONSE:
            continue
        if lname == 'record-route' and not (status < 300 and status > 100):
            continue
        if lname == 'to' and to_tag and status > 100 and ';tag=' not in value.replace(' ', '').lower():
            value = '%s;tag=%s' % (value, to_tag)
        copied.append((name, value))
    copied.extend(headers)
    return SIPMessage(status=status, reason=reason or REASONS.get(status, ''), headers=copied,
                      body=body)
