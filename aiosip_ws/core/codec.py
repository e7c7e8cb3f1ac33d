"""SIP message codec for message-oriented transports (RFC 3261 7, 18.3; RFC 7118 5).

Pure and I/O-free, like h11: bytes in, :class:`SIPMessage` out, and back.  It
knows nothing of aiosip or asyncio; :mod:`aiosip_ws.adapter` turns its
messages into aiosip objects.

Framing rule (RFC 7118 §5, RFC 3261 §18.3): the WebSocket message
*is* the SIP message.  The body is everything after the first blank line, so
Content-Length may be absent.  When it is present, RFC 3261 18.3's rules for
message-oriented transports apply: bytes beyond it are discarded, and a body
shorter than it is an error (a request gets 400, a response is dropped).
Content-Length never makes the receiver wait for more data.  Bytes beyond
Content-Length that begin a second SIP message are refused: one SIP message
per WebSocket message (RFC 7118 §5).

What the parser accepts that aiosip 0.2.0's does not: compact header names,
``Name:value`` and ``Name : value`` with any whitespace, repeated headers,
folded (continuation) lines, comma-joined Via/Contact/Route values, Kamailio's
``SIP/2.0/WS  host`` (two spaces), bodies with CRLFs or arbitrary bytes.

What it refuses, each with the status a request gets (RFC 4475's torture
messages, ``tests/test_torture.py``): a Request-Line that is not exactly
``Method SP Request-URI SP SIP-Version`` (extra SP, ``<uri>``, a SIP URI with
``?headers``), bare CR or LF in the headers, headers not ended by a blank line,
a malformed Via, two From/To/Call-ID/CSeq/Max-Forwards, conflicting or
non-numeric Content-Length, a CSeq number over 2**31 - 1 or a CSeq method
other than the request's; an unknown SIP version gets 505.  For a broken
request :class:`SIPParseError` carries what could be parsed (``partial``), so
that a 400 can still be routed back.  URI schemes, header semantics and
everything else the application understands are left to the layers above.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from ..errors import SIPParseError
from .grammar import (
    DEFAULT_MAX_FORWARDS,
    SCHEME_CLASS,
    TOKEN_BYTES_RE,
    TOKEN_CLASS,
    TOKEN_RE,
    parse_content_length,
    parse_cseq_number,
    parse_max_forwards,
)
from .sipuri import (
    PARSE_CACHE_SIZE,
    NameAddr,
    SipURI,
    format_params,
    param_value,
    parse_params,
    split_header_values,
)

__all__ = ['SIPMessage', 'Via', 'parse', 'serialize', 'COMPACT_FORMS', 'MULTI_VALUE_HEADERS',
           'MANDATORY_HEADERS', 'mark_received']

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

# \Z, not $: "$" also matches before a final "\n".
_TOKEN = TOKEN_BYTES_RE
_STATUS_LINE = re.compile(r'SIP/([0-9]+\.[0-9]+) ([0-9]{3})(?: (.*))?\Z', re.DOTALL)
#: scheme ":" then no CTL, SP, DEL, "<", ">" or '"' (RFC 3261 25.1, RFC 3986 3.1)
_URI_TEXT = SCHEME_CLASS + r':[^\x00-\x20\x7f<>"]+'
_REQUEST_URI = re.compile(_URI_TEXT + r'\Z')
_SECOND_MESSAGE = re.compile(rb'(?:\r\n)*(?:[A-Za-z]+ \S+ SIP/\d|SIP/\d\.\d \d{3})')
_VIA = re.compile(r'\s*SIP\s*/\s*(\d+\.\d+)\s*/\s*(' + TOKEN_CLASS + r'+)\s+'
                  r'(\[[0-9A-Fa-f:.]+\]|[^\s;:]+)(?:\s*:\s*(\d{1,5}))?\s*(.*)\Z',
                  re.DOTALL | re.ASCII)
#: the branch parameter of a Via entry (its first one: see SIPMessage.top_branch)
_BRANCH = re.compile(r';\s*[Bb][Rr][Aa][Nn][Cc][Hh]\s*=([^;,]*)')
#: Headers the parser checks (counted, and Via / Content-Length / CSeq values read).
_CHECKED = frozenset({'Via', 'From', 'To', 'Call-ID', 'CSeq', 'Max-Forwards', 'Content-Length',
                      'Content-Type'})
#: Headers that may appear once only (RFC 3261 7.3.1, RFC 4475 3.3.8); Content-Length
#: may repeat with one value (lenient), different values are refused.
_SINGLE_VALUED = ('From', 'To', 'Call-ID', 'CSeq', 'Max-Forwards')


def canonical_name(name: str) -> str:
    """Expand a compact header name and give a well-known one its usual spelling."""
    known = _CANONICAL_OF.get(name)
    if known is not None:
        return known
    full = COMPACT_FORMS.get(name.lower()) if len(name) == 1 else None
    result = full or _CANONICAL.get(name.lower(), name)
    if len(_CANONICAL_OF) < _NAMES_MAX:
        _CANONICAL_OF[name] = result
    return result


def _lookup(name: str) -> tuple[str, str, int]:
    """What a header lookup compares (see :meth:`SIPMessage.get`): the canonical name,
    its lower case and its length, remembered per name asked for."""
    wanted = canonical_name(name)
    found = (wanted, wanted.lower(), len(wanted))
    if len(_LOOKUP) < _NAMES_MAX:
        _LOOKUP[name] = found
    return found


#: name as asked for -> _lookup(name), for SIPMessage.get and get_all
_LOOKUP: dict[str, tuple[str, str, int]] = {}
#: name as asked for -> canonical_name(name): the code asks for a few dozen names
_CANONICAL_OF: dict[str, str] = {}


@dataclass(frozen=True)
class Via:
    """One Via entry: ``SIP/2.0/WSS host:port;branch=...;rport``."""

    transport: str
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]
    version: str = '2.0'

    @classmethod
    def parse(cls, value: str) -> Via:
        """Parse one Via entry.  Remembered as :meth:`SipURI.parse` is: a proxy asks for a
        request's top Via several times (the received mark, the server and client
        transaction keys, the CANCEL key) and a Via is immutable."""
        if cls is Via:
            return _cached_via(value)
        return cls._parse(value)

    @classmethod
    def _parse(cls, value: str) -> Via:
        m = _VIA.match(value)
        if not m:
            raise SIPParseError('bad Via header %s' % _excerpt(value))
        rest = m.group(5).strip()
        if rest and not rest.startswith(';'):
            raise SIPParseError('bad Via parameters %s' % _excerpt(value))
        return cls(transport=m.group(2).upper(), host=m.group(3),
                   port=int(m.group(4)) if m.group(4) else None,
                   params=parse_params(rest), version=m.group(1))

    def param(self, name: str) -> str | None:
        """A Via parameter's value; names compare case-insensitively (RFC 3261 §7.3.1)."""
        return param_value(self.params, name)

    @property
    def branch(self) -> str | None:
        return self.param('branch')

    def __str__(self) -> str:
        sent_by = self.host if self.port is None else '%s:%d' % (self.host, self.port)
        return 'SIP/%s/%s %s%s' % (self.version, self.transport, sent_by, format_params(self.params))


#: Via text -> Via, the last PARSE_CACHE_SIZE parsed (oldest out first; errors never kept)
_VIAS: dict[str, Via] = {}
#: CSeq text -> (number, method), the same way: a proxy asks for the CSeq of the messages
#: it builds from a parsed one (a response, a relayed copy) as much as of that one
_CSEQS: dict[str, tuple[int, str]] = {}
_Parsed = TypeVar('_Parsed')


def _cached_via(value: str) -> Via:
    via = _VIAS.get(value)
    if via is None:
        via = Via._parse(value)
        _remember(_VIAS, value, via)
    return via


def _remember(table: dict[str, _Parsed], text: str, parsed: _Parsed) -> None:
    """Keep ``parsed`` for ``text`` in ``table`` (at most PARSE_CACHE_SIZE, oldest out)."""
    if len(table) >= PARSE_CACHE_SIZE:
        del table[next(iter(table))]
    table[text] = parsed


def mark_received(request: SIPMessage, host: str, port: int) -> None:
    """What a server does to the top Via of a request from ``host``:``port`` (RFC 3261
    §18.2.1, RFC 3581 §4): ``received=HOST`` when the sent-by host differs from it, and,
    when the client asked with an empty ``rport``, ``rport=PORT`` (and ``received``
    always).  Responses then go back where the request came from, through NAT."""
    for index, (name, value) in enumerate(request.headers):
        if name != 'Via':
            continue
        parts = split_header_values(value) if ',' in value else [value]
        via = Via.parse(parts[0])
        if via.host.strip('[]').lower() == host.lower() and not any(
                k.lower() in ('received', 'rport') for k, _ in via.params):
            return                # sent from where it says, no rport asked: nothing to add
        kept = [(k, v) for k, v in via.params if k.lower() not in ('received', 'rport')]
        wants_rport = any(k.lower() == 'rport' for k, _ in via.params)
        if wants_rport or via.host.strip('[]').lower() != host.lower():
            kept.append(('received', host))
        if wants_rport:
            kept.append(('rport', str(port)))
        marked_via = Via(via.transport, via.host, via.port, tuple(kept), via.version)
        marked = str(marked_via)
        _remember(_VIAS, marked, marked_via)        # the transaction layer asks for it next
        request.headers[index] = (name, ', '.join([marked, *parts[1:]]))
        return


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

    # Header names compare case-insensitively (RFC 3261 §7.3.5).  The parser writes
    # every well-known name in its canonical spelling, so a lookup first compares the
    # canonical name as it is, and lowers only names of the same length.

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (any case, compact form allowed)."""
        wanted, lower, size = _LOOKUP.get(name) or _lookup(name)
        for key, value in self.headers:
            if key == wanted or (len(key) == size and key.lower() == lower):
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``; comma-joined Via/Contact/Route values are split."""
        wanted, lower, size = _LOOKUP.get(name) or _lookup(name)
        values = [value for key, value in self.headers
                  if key == wanted or (len(key) == size and key.lower() == lower)]
        if lower in MULTI_VALUE_HEADERS:
            items: list[str] = []
            for value in values:
                if ',' in value:
                    items.extend(split_header_values(value))
                else:
                    value = value.strip()
                    if value:
                        items.append(value)
            return items
        return values

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` header by one with ``value`` (kept at the first one's place)."""
        wanted, lower, size = _LOOKUP.get(name) or _lookup(name)
        out: list[tuple[str, str]] = []
        placed = False
        for key, old in self.headers:
            if key == wanted or (len(key) == size and key.lower() == lower):
                if not placed:
                    out.append((key, value))
                    placed = True
            else:
                out.append((key, old))
        if not placed:
            out.append((wanted, value))
        self.headers = out

    def remove(self, name: str) -> None:
        wanted, lower, size = _LOOKUP.get(name) or _lookup(name)
        self.headers = [(k, v) for k, v in self.headers
                        if not (k == wanted or (len(k) == size and k.lower() == lower))]

    @property
    def cseq(self) -> tuple[int, str]:
        """``(number, method)`` from the CSeq header."""
        value = self.get('CSeq')
        if value is None:
            raise SIPParseError('missing CSeq header')
        parsed = _CSEQS.get(value)
        if parsed is None:
            parsed = _parse_cseq(value)
            _remember(_CSEQS, value, parsed)
        return parsed

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(value) for value in self.get_all('Via')]

    @property
    def top_via(self) -> Via | None:
        """The first Via entry (parsed alone: responses are matched by it)."""
        for key, value in self.headers:
            if key == 'Via':
                if ',' in value:
                    value = split_header_values(value)[0]
                return Via.parse(value)
        return None

    @property
    def top_branch(self) -> str | None:
        """The ``branch`` of the first Via, found without parsing the Via: what a
        transaction layer matches a response on (RFC 3261 §17.1.3).  Parsed messages had
        every Via checked; for a hand-built one with a malformed first Via, use
        :attr:`top_via`, which raises."""
        for key, value in self.headers:
            if key == 'Via':
                m = _BRANCH.search(value)
                lower = value.lower()
                if m is None and 'branch' not in lower:
                    return None
                if m is not None and lower.count('branch') == 1 and '"' not in value \
                        and ',' not in value[:m.start()]:
                    return m.group(1).strip()
                top = self.top_via                     # anything odd: the whole Via parsed
                return top.branch if top is not None else None
        return None

    # Typed accessors: they raise SIPParseError, which the caller answers with 400.  Each
    # header text is parsed once: NameAddr.parse and SipURI.parse remember what they
    # parsed (their results are immutable), so asking twice costs a lookup.

    def to_addr(self) -> NameAddr:
        """The To header, parsed."""
        return NameAddr.parse(self.get('To') or '')

    def from_addr(self) -> NameAddr:
        """The From header, parsed."""
        return NameAddr.parse(self.get('From') or '')

    def contacts(self) -> list[NameAddr]:
        """Every Contact, parsed (``Contact: *`` is one with ``star`` set)."""
        return [NameAddr.parse(value) for value in self.get_all('Contact')]

    def first_name_addr(self, name: str) -> NameAddr | None:
        """The first entry of header ``name`` (Contact, Route, Record-Route...), parsed;
        None when there is none or it cannot be parsed."""
        value = self.get(name)
        if value is None:
            return None
        if ',' in value:
            values = split_header_values(value)
            if not values:
                return None
            value = values[0]
        try:
            return NameAddr.parse(value)
        except SIPParseError:
            return None

    def request_uri(self) -> SipURI:
        """The Request-URI, parsed (any scheme: ``scheme`` tells)."""
        return NameAddr.parse(self.uri or '').uri

    def max_forwards(self) -> int:
        """Max-Forwards (RFC 3261 §8.1.1.6: 70 when absent)."""
        value = self.get('Max-Forwards')
        if value is None:
            return DEFAULT_MAX_FORWARDS
        return parse_max_forwards(value)

    def start_line(self) -> str:
        if self.is_request:
            return '%s %s %s' % (self.method, self.uri, self.version)
        return '%s %03d %s' % (self.version, self.status or 0, self.reason)


def _parse_cseq(value: str) -> tuple[int, str]:
    parts = value.split()
    if len(parts) != 2 or not TOKEN_RE.match(parts[1]):
        raise SIPParseError('bad CSeq header %s' % _excerpt(value))
    try:
        return parse_cseq_number(parts[0]), parts[1]
    except SIPParseError as exc:
        raise SIPParseError('bad CSeq header %s: %s' % (_excerpt(value), exc.reason)) from None


def _unfold(lines: Iterable[str]) -> Iterator[str]:
    """Join continuation lines (starting with SP or HTAB) onto the header above.

    LWS around the fold becomes one SP (RFC 3261 7.3.1).  Parts are joined once per
    header, so a header folded over thousands of lines costs linear time.
    """
    parts: list[str] = []
    for line in lines:
        if line[:1] in (' ', '\t'):
            if not parts:
                raise SIPParseError('continuation line before the first header')
            parts[-1] = parts[-1].rstrip(' \t')
            parts.append(line.strip(' \t'))
            continue
        if parts:
            yield ' '.join(parts)
        parts = [line]
    if parts:
        yield ' '.join(parts)


def _excerpt(data: bytes | str | None, limit: int = 60, *, quote: bool = True) -> str:
    """``data`` for an error message: repr'd (so no CR/LF/NUL leaks into logs or a reason
    phrase) and cut short (a peer controls it, up to max_size bytes)."""
    text = _decode(data) if isinstance(data, bytes) else str(data)
    short = text if len(text) <= limit else text[:limit] + '...'
    return repr(short) if quote or short != text or not short.isprintable() else short


def _decode(data: bytes) -> str:
    # Header bytes that are not UTF-8 are kept, not lost: surrogateescape
    # round-trips them through serialize() unchanged.
    return data.decode('utf-8', 'surrogateescape')


#: A well-formed Request-Line in one match (RFC 3261 §7.1); anything else goes through
#: :func:`_request_line_error`, which says what is wrong.
_REQUEST_LINE = re.compile(r'(%s+) (%s) ([Ss][Ii][Pp]/[0-9]+\.[0-9]+)\Z' % (TOKEN_CLASS, _URI_TEXT))


def _request_line(line: str, msg: SIPMessage) -> str | None:
    """Fill ``msg`` from ``Method SP Request-URI SP SIP-Version``; the error, or None."""
    m = _REQUEST_LINE.match(line)
    if m is None:
        return _request_line_error(line)
    uri = m.group(2)
    if '?' in uri:
        scheme = uri[:uri.index(':')].lower()
        if scheme in ('sip', 'sips') and '?' in uri[uri.rfind('@') + 1:]:
            # RFC 3261 19.1.1 (headers are not allowed in a Request-URI), RFC 4475
            # 3.1.2.11; "?" is legal in the user part, so only what follows the last "@".
            return 'headers in the Request-URI %s' % _excerpt(uri)
    msg.method, msg.uri, msg.version = m.groups()
    return None


def _request_line_error(line: str) -> str:
    parts = line.split(' ')
    if len(parts) != 3 or not all(parts):
        # RFC 4475 3.1.2.8-3.1.2.10: LWS in the URI, several SP, SP at the end
        return 'bad request line %s' % _excerpt(line)
    method, uri, version = parts
    if not TOKEN_RE.match(method):
        return 'bad method %s' % _excerpt(method)
    if not _REQUEST_URI.match(uri):
        # RFC 4475 3.1.2.7: no <>; RFC 3261 25.1: a URI holds no CTL, SP, <, > or "
        return 'bad Request-URI %s' % _excerpt(uri)
    return 'bad SIP version %s' % _excerpt(version)


def _parse_headers(lines: Iterable[str], msg: SIPMessage) -> None:
    """Append ``Name: value`` lines to ``msg.headers``, names expanded and canonical."""
    append = msg.headers.append
    names = _NAMES
    for line in lines:
        raw_name, colon, value = line.partition(':')
        name = names.get(raw_name) if colon else None
        if name is None:
            stripped = raw_name.rstrip(' \t')
            if not colon or not TOKEN_RE.match(stripped):
                raise SIPParseError('bad header line %s' % _excerpt(line))
            name = canonical_name(stripped)
            if len(names) < _NAMES_MAX:
                names[raw_name] = name
        append((name, value.strip(' \t')))


#: raw header name (as it came, before ":") -> canonical name: most messages use a few
#: dozen spellings, and this skips the token check and the lookups for them.  Bounded,
#: so that a peer inventing names cannot grow it.
_NAMES: dict[str, str] = {}
_NAMES_MAX = 2048


def _salvage(lines: list[bytes]) -> SIPMessage:
    """What a broken request's error response can use: its method and the header lines
    before the first bad one (lines with a bare CR or LF are left out: never echo them)."""
    msg = SIPMessage()
    method = lines[0].split(b' ', 1)[0]
    if _TOKEN.match(method):
        msg.method = method.decode()
    good: list[str] = []
    for line in lines[1:]:
        if not line:
            break
        if b'\r' in line or b'\n' in line:
            continue
        good.append(_decode(line))
    with contextlib.suppress(SIPParseError):
        _parse_headers(_unfold(good), msg)
    return msg


def parse(data: bytes | str, *, strict_mandatory: bool = True) -> SIPMessage:
    """Parse one WebSocket message into one :class:`SIPMessage`.

    Raises :class:`SIPParseError` (with the status a request should get and
    whatever could be parsed in ``partial``) for anything malformed; never
    another exception, whatever ``data`` holds.

    The head is decoded once and split once; each header line costs one partition and
    one lookup of its name.  Values are kept as the text they came as: what they mean
    (a URI, a parameter) is parsed by whoever asks, when asked.  Only what a transport
    must get right is checked here: the start line, every Via, the single-valued
    headers, CSeq against the method, and Content-Length against the body.
    """
    if isinstance(data, str):
        try:
            data = data.encode('utf-8', 'surrogateescape')
        except UnicodeEncodeError:
            # only a str built by hand can hold lone surrogates; a text frame cannot
            raise SIPParseError('text with unpaired surrogates is not UTF-8',
                                is_request=None) from None
    # RFC 3261 7.5: CRLFs before the start line are ignored.
    if data.startswith(CRLF):
        start = 0
        while data.startswith(CRLF, start):
            start += 2
        data = data[start:]
    if not data:
        raise SIPParseError('empty message', is_request=None)
    is_request = not data.startswith(b'SIP/')
    head_end = data.find(b'\r\n\r\n')
    if head_end < 0:
        # RFC 3261 7: the headers end with an empty line, even when the frame ends there
        raise SIPParseError('no blank line (CRLF CRLF) after the headers', is_request=is_request,
                            partial=_salvage(data.split(CRLF)) if is_request else None)
    head = data[:head_end]
    crlfs = head.count(CRLF)
    if head.count(b'\n') != crlfs or head.count(b'\r') != crlfs:
        # A bare CR or LF ends a line for some parsers and not for others: refused, so
        # that nothing relayed from here can smuggle in a header (RFC 3261 7.3.1).
        raise SIPParseError('bare CR or LF in the start line or headers', is_request=is_request,
                            partial=_salvage(head.split(CRLF)) if is_request else None)
    lines = (head.decode('utf-8', 'surrogateescape') if not head.isascii()
             else head.decode('ascii')).split('\r\n')
    msg = SIPMessage()
    if is_request:
        error = _request_line(lines[0], msg)
        if error is not None:
            raise SIPParseError(error, is_request=True, partial=_salvage(head.split(CRLF)))
    else:
        m = _STATUS_LINE.match(lines[0])
        if not m:
            raise SIPParseError('bad status line %s' % _excerpt(lines[0]), is_request=False)
        code = int(m.group(2))
        if not 100 <= code <= 699:
            raise SIPParseError('status code %d out of range' % code, is_request=False)
        msg.status, msg.reason = code, m.group(3) or ''
        msg.version = 'SIP/' + m.group(1)
    del lines[0]
    try:
        _parse_headers(_unfold(lines) if b'\r\n ' in head or b'\r\n\t' in head else lines, msg)
        if msg.version != 'SIP/2.0' and msg.version.upper() != 'SIP/2.0':
            version = _excerpt(msg.version, quote=False)
            raise SIPParseError('SIP version %s is not supported' % version,
                                status=505)
        _check_headers(msg, data[head_end + 4:], is_request, strict_mandatory)
    except SIPParseError as exc:
        exc.is_request, exc.partial = is_request, msg
        raise
    return msg


def _check_headers(msg: SIPMessage, body: bytes, is_request: bool, strict: bool) -> None:
    """Everything about the headers a transport needs right, in one pass; sets ``msg.body``."""
    counts: dict[str, int] = {}
    lengths: list[str] = []
    cseq: str | None = None
    checked = _CHECKED
    for name, value in msg.headers:
        if name in checked:
            if name in counts:
                counts[name] += 1
            else:
                counts[name] = 1
            if name == 'Via':
                _check_via(value)
            elif name == 'Content-Length':
                lengths.append(value)
            elif name == 'CSeq' and cseq is None:
                cseq = value
    repeated = [name for name in _SINGLE_VALUED if counts.get(name, 0) > 1]
    if repeated:
        # RFC 4475 3.3.8: one value only (RFC 3261 7.3.1); which one to believe?
        raise SIPParseError('more than one %s header' % ', '.join(repeated))
    msg.body = _frame_body(body, lengths, 'Content-Type' in counts)
    if strict:
        missing = [name for name in MANDATORY_HEADERS if name not in counts]
        if missing:
            raise SIPParseError('missing mandatory header%s %s' % (
                's' if len(missing) > 1 else '', ', '.join(missing)))
    if cseq is not None:
        parsed = _CSEQS.get(cseq)
        if parsed is None:
            number, _, cseq_method = cseq.partition(' ')
            if cseq_method == msg.method and number.isdigit() and number.isascii() \
                    and len(number) < 10:
                parsed = (int(number), cseq_method)
            else:                               # the whole check, and what is wrong
                parsed = _parse_cseq(cseq)
            _remember(_CSEQS, cseq, parsed)
        cseq_method = parsed[1]
        if is_request and cseq_method != msg.method:
            raise SIPParseError('CSeq method %s does not match request method %s' % (
                _excerpt(cseq_method, quote=False), _excerpt(msg.method, quote=False)))


def _check_via(value: str) -> None:
    """Every Via entry must be ``SIP/2.0/transport sent-by *(;param)`` (RFC 3261 20.42):
    responses are routed and transactions matched on it."""
    for item in (split_header_values(value) if ',' in value else (value,)):
        m = _VIA.match(item)
        if not m or not (m.group(5) == '' or m.group(5).startswith(';')):
            raise SIPParseError('bad Via header %s' % _excerpt(item))


def _frame_body(body: bytes, lengths: list[str], typed: bool) -> bytes:
    if not lengths:
        if body and not typed and _SECOND_MESSAGE.match(body):
            # A body needs a Content-Type (RFC 3261 7.4.1): this is a second message.
            raise SIPParseError('two SIP messages in one WebSocket message')   # RFC 7118 §5
        return body                                  # RFC 7118 §5: body runs to the end
    declared = lengths[0]
    for other in lengths[1:]:
        if other != declared:
            raise SIPParseError('conflicting Content-Length headers')      # RFC 4475 3.3.9
    if declared.isdigit() and declared.isascii() and len(declared) < 10:
        length = int(declared)
    else:
        try:
            length = parse_content_length(declared, limit=len(body) + 1)
        except SIPParseError:
            raise SIPParseError('bad Content-Length %s' % _excerpt(declared)) from None  # RFC 4475 3.1.2.3
    if length > len(body):                           # RFC 3261 §18.3, RFC 4475 3.1.2.2
        raise SIPParseError('body is %d bytes, shorter than Content-Length %s'
                            % (len(body), _excerpt(declared, quote=False)))
    extra = body[length:]
    if extra and _SECOND_MESSAGE.match(extra):      # RFC 7118 §5
        raise SIPParseError('two SIP messages in one WebSocket message')
    return body[:length]                             # RFC 3261 §18.3: the rest is discarded


def serialize(msg: SIPMessage) -> bytes:
    """Write ``msg`` in wire form with exactly one, correct Content-Length (RFC 3261 §20.14)."""
    out = [msg.start_line()]
    for name, value in msg.headers:
        if len(name) in (1, 14) and name.lower() in ('content-length', 'l'):
            continue
        out.append(name + ': ' + value)
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
_COPIED_ONCE = frozenset({'from', 'to', 'call-id', 'cseq'})
#: the same, as the parser spells them -> lower case
_COPIED_CANONICAL = {canonical_name(name): name for name in _COPIED_TO_RESPONSE}
_KNOWN_NAMES = frozenset(_CANONICAL.values()) | frozenset(COMPACT_FORMS.values())


def make_response(request: SIPMessage, status: int, reason: str | None = None, *,
                  to_tag: str | None = None,
                  headers: Iterable[tuple[str, str]] = (), body: bytes = b'') -> SIPMessage:
    """A response to ``request`` built as RFC 3261 8.2.6.2 says.

    Every Via is copied in order, with From, Call-ID, CSeq and (for 2xx/18x) the
    Record-Route; ``to_tag`` is added to To unless the request's To already
    has a tag.  ``request`` may be a partially parsed message (for a 400).
    """
    copied: list[tuple[str, str]] = []
    once: set[str] = set()
    for name, value in request.headers:
        lname = _COPIED_CANONICAL.get(name)
        if lname is None:
            if name in _KNOWN_NAMES:              # spelt as the parser does, and not copied
                continue
            lname = name.lower()                  # any other spelling
            if lname not in _COPIED_TO_RESPONSE:
                continue
        if lname == 'record-route' and not (status < 300 and status > 100):
            continue
        if lname in _COPIED_ONCE:
            if lname in once:      # a 400 to a request with two To (RFC 4475 3.3.8): one
                continue
            once.add(lname)
        if lname == 'to' and to_tag and status > 100 and ';tag=' not in value.replace(' ', '').lower():
            value = '%s;tag=%s' % (value, to_tag)
        copied.append((name, value))
    copied.extend(headers)
    return SIPMessage(status=status, reason=reason or REASONS.get(status, ''), headers=copied,
                      body=body)


def invite_companion(method: str, invite: SIPMessage, *, uri: str,
                     to: str | None = None) -> SIPMessage:
    """The CANCEL of an INVITE (RFC 3261 9.1) or the ACK of its non-2xx response (17.1.1.3).

    Both keep the INVITE's Request-URI, top Via, From, Call-ID and CSeq number;
    the ACK's To is the response's (with its tag).  ``invite`` may be the INVITE or
    the response to it (a response repeats all of these but the Request-URI).
    """
    vias = invite.get_all('Via')
    return SIPMessage(method=method, uri=uri, headers=[
        ('Via', vias[0] if vias else ''), ('Max-Forwards', str(DEFAULT_MAX_FORWARDS)),
        ('From', invite.get('From') or ''), ('To', to if to is not None else invite.get('To') or ''),
        ('Call-ID', invite.get('Call-ID') or ''), ('CSeq', '%d %s' % (invite.cseq[0], method))])


def unsupported_option_tags(message: SIPMessage, supported: Iterable[str]) -> list[str]:
    """Option tags in ``Require`` that are not in ``supported`` (RFC 3261 §8.2.2.3: 420).

    ACK and CANCEL never get a 420 and yield none.
    """
    if message.method in ('ACK', 'CANCEL') or message.get('Require') is None:
        return []
    allowed = {tag.lower() for tag in supported}
    return [tag for value in message.get_all('Require')
            for tag in (t.strip() for t in value.split(',')) if tag and tag.lower() not in allowed]
