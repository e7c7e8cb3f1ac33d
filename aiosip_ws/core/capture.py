"""What a capture (HEP export, a live trace, a pcap) needs of a SIP message's bytes.

Captures see the bytes a transport received or sent (see
:mod:`aiosip_ws.transport.tap`), never a parsed message: a malformed message is captured
as it came.  This module reads them without parsing the whole message:
:func:`summary` (the start line's method or status, the Call-ID) and :func:`redact`, the
copy that leaves the process.  By default it keeps out:

* the Digest ``response`` of ``Authorization`` and ``Proxy-Authorization`` headers and the
  token of a ``Bearer`` credential (replaced by ``[redacted]``);
* ``Cookie`` header values;
* the body of a ``MESSAGE`` request (an instant message: what people wrote), removed with
  its ``Content-Length`` set to 0.

Everything else stays as it was on the wire, SDP included.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ['Summary', 'summary', 'user_host', 'call_id_of', 'redact', 'REDACTED']

REDACTED = b'[redacted]'

_HEAD_END = b'\r\n\r\n'
_CALL_ID = re.compile(rb'\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)', re.IGNORECASE)
_STATUS = re.compile(rb'SIP/2\.0[ \t]+(\d{3})')
_CSEQ = re.compile(rb'\r\ncseq[ \t]*:[ \t]*\d+[ \t]+([A-Za-z]+)', re.IGNORECASE)
#: the user@host of a sip:/sips: URI (parameters, port and headers left out)
_USER_HOST = re.compile(rb'sips?:([^@\s;>:?]+@[^\s;>:?]+)', re.IGNORECASE)
_PARTY = re.compile(rb'\r\n(?:from|to|f|t)[ \t]*:[^\r\n]*?sips?:([^@\s;>:?]+@[^\s;>:?]+)',
                    re.IGNORECASE)
_AUTH_LINE = re.compile(rb'\r\n((?:proxy-)?authorization)([ \t]*:)([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)',
                        re.IGNORECASE)
_RESPONSE = re.compile(rb'(\bresponse[ \t]*=[ \t]*)("[^"]*"|[^ \t,]+)', re.IGNORECASE)
_BEARER = re.compile(rb'(\bBearer[ \t]+)([^ \t,]+)', re.IGNORECASE)
_COOKIE = re.compile(rb'\r\n(cookie[ \t]*:)[^\r\n]*(?:\r\n[ \t][^\r\n]*)*', re.IGNORECASE)
_SECRET_HEADER = re.compile(rb'\r\n(?:(?:proxy-)?authorization|cookie)[ \t]*:', re.IGNORECASE)
_LENGTH = re.compile(rb'\r\n(content-length|l)([ \t]*:[ \t]*)\d+', re.IGNORECASE)


@dataclass(frozen=True)
class Summary:
    """A message's method (a request) or status (a response), its Call-ID ('' when it
    has none that can be read), its CSeq method (what a response answers) and the
    ``user@host`` of its Request-URI, From and To (lower case)."""

    method: str | None
    status: int | None
    call_id: str
    cseq_method: str | None = None
    parties: frozenset[str] = frozenset()


def summary(data: bytes) -> Summary:
    """What ``data`` (one SIP message) is: see :class:`Summary`; never raises."""
    head = data[:data.find(_HEAD_END)] if _HEAD_END in data else data
    first = head[:head.find(b'\r\n')] if b'\r\n' in head else head
    method: str | None = None
    status: int | None = None
    m = _STATUS.match(first)
    if m is not None:
        status = int(m.group(1))
    else:
        word = first.split(b' ', 1)[0]
        if word.isalpha() and word.isascii():
            method = word.decode('ascii').upper()
    call_id = _call_id(head, len(head))
    cseq = _CSEQ.search(head)
    parties = {m.group(1).decode('utf-8', 'replace').lower() for m in _PARTY.finditer(head)}
    if method is not None:
        uri = _USER_HOST.search(first)
        if uri is not None:
            parties.add(uri.group(1).decode('utf-8', 'replace').lower())
    return Summary(method, status, call_id,
                   cseq.group(1).decode('ascii').upper() if cseq else method,
                   frozenset(parties))


def user_host(aor: str) -> str:
    """An AOR as :attr:`Summary.parties` holds it: ``sip:Alice@Example.com;x`` and
    ``alice@example.com`` are both ``alice@example.com``."""
    text = aor.strip().lower()
    for prefix in ('sip:', 'sips:'):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text.split(';', 1)[0]


def call_id_of(data: bytes) -> str:
    """The Call-ID of ``data`` (one SIP message), '' when it has none that can be read:
    what :func:`summary` gives, for less (one search of the head)."""
    end = data.find(_HEAD_END)
    return _call_id(data, end if end >= 0 else len(data))


def _call_id(data: bytes, end: int) -> str:
    found = _CALL_ID.search(data, 0, end)
    return found.group(1).strip().decode('utf-8', 'replace') if found else ''


def redact(data: bytes, *, secrets: bool = False, bodies: bool = False) -> bytes:
    """``data`` as it may leave the process (see the module): ``secrets`` keeps the
    credentials and cookies, ``bodies`` the bodies of MESSAGE requests."""
    end = data.find(_HEAD_END)
    message = not bodies and data[:8].upper() == b'MESSAGE '
    if not message and (secrets or _SECRET_HEADER.search(data, 0, end if end >= 0
                                                           else len(data)) is None):
        return data                                 # the common case: one search
    head, body = (data, b'') if end < 0 else (data[:end], data[end:])
    changed = False
    if not secrets:
        if _AUTH_LINE.search(head) is not None:
            head = _AUTH_LINE.sub(_hide_credentials, head)
            changed = True
        if _COOKIE.search(head) is not None:
            head = _COOKIE.sub(lambda m: b'\r\n' + m.group(1) + b' ' + REDACTED, head)
            changed = True
    if message and len(body) > 4:
        head = _LENGTH.sub(lambda m: b'\r\n' + m.group(1) + m.group(2) + b'0', head)
        body = _HEAD_END
        changed = True
    return head + body if changed else data


def _hide_credentials(m: re.Match[bytes]) -> bytes:
    value = _RESPONSE.sub(lambda r: r.group(1) + b'"' + REDACTED + b'"', m.group(3))
    value = _BEARER.sub(lambda r: r.group(1) + REDACTED, value)
    return b'\r\n' + m.group(1) + m.group(2) + value

