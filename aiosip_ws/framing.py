"""The SIP <-> WebSocket message mapping of RFC 7118, sans I/O.

One WebSocket message carries exactly one SIP message (RFC 7118 5), in a text
frame when the whole message is valid UTF-8 and in a binary frame otherwise
(RFC 7118 4.2).  Messages made only of CR and LF are RFC 5626 keep-alives: a
double CRLF is a ping to answer with one CRLF, anything else a pong (RFC 7118 6,
checklist R-6.2, X-5626-2); neither reaches the SIP layer.

:func:`receive` turns an incoming WebSocket message into one event, and
:func:`encode` turns an outgoing :class:`~aiosip_ws.codec.SIPMessage` into the
``str`` (text frame) or ``bytes`` (binary frame) to hand to the WebSocket
library.  Nothing here does I/O; :mod:`aiosip_ws.transport` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from . import codec
from .codec import SIPMessage
from .errors import SIPParseError

__all__ = ['CRLF_PING', 'CRLF_PONG', 'KeepAlivePing', 'KeepAlivePong', 'MessageReceived',
           'MessageRejected', 'Event', 'receive', 'encode', 'SUBPROTOCOL']

#: The WebSocket subprotocol RFC 7118 registers (section 10, R-10.1).
SUBPROTOCOL = 'sip'
#: RFC 5626 keep-alive ping and pong, as RFC 7118 6 carries them.
CRLF_PING = '\r\n\r\n'
CRLF_PONG = '\r\n'


@dataclass(frozen=True)
class KeepAlivePing:
    """A CRLF ping arrived: answer :data:`CRLF_PONG` on the same connection."""


@dataclass(frozen=True)
class KeepAlivePong:
    """A CRLF pong (or any other CR/LF-only message) arrived."""


@dataclass(frozen=True)
class MessageReceived:
    message: SIPMessage
    binary: bool


@dataclass(frozen=True)
class MessageRejected:
    """The message could not be parsed.

    ``response`` is the error response to send back (a request that got far
    enough to be answered), or None when the message must only be dropped and
    logged (a broken response, or a request without the headers a response needs).
    """

    error: SIPParseError
    response: SIPMessage | None
    binary: bool


Event = Union[KeepAlivePing, KeepAlivePong, MessageReceived, MessageRejected]

_KEEPALIVE_CHARS = frozenset('\r\n')
_KEEPALIVE_BYTES = frozenset(b'\r\n')


def receive(data: str | bytes, *, server_header: str | None = None) -> Event:
    """Classify and parse one incoming WebSocket message."""
    binary = isinstance(data, bytes)
    if data and set(data) <= (_KEEPALIVE_BYTES if binary else _KEEPALIVE_CHARS):
        ping = (b'\r\n\r\n' in data) if binary else ('\r\n\r\n' in data)   # type: ignore[operator]
        return KeepAlivePing() if ping else KeepAlivePong()
    try:
        return MessageReceived(codec.parse(data), binary)
    except SIPParseError as error:
        return MessageRejected(error, error_response(error, server_header), binary)


def error_response(error: SIPParseError, server_header: str | None = None) -> SIPMessage | None:
    """The response a broken request gets, if one can be built (RFC 3261 8.2, 16.3)."""
    partial = error.partial
    if not error.is_request or not isinstance(partial, SIPMessage) or partial.method == 'ACK':
        return None
    present = {name.lower() for name, _ in partial.headers}
    # A response is routed by Via and matched by Call-ID/CSeq: without them it
    # would reach nobody, so such a request is dropped instead.
    if not {'via', 'call-id', 'cseq', 'from', 'to'} <= present:
        return None
    extra = [('Server', server_header)] if server_header else []
    reason = '%s (%s)' % (codec.REASONS.get(error.status, 'Bad Request'), error.reason)
    return codec.make_response(partial, error.status, _printable(reason), headers=extra)


def _printable(text: str) -> str:
    return ''.join(ch if ch.isprintable() else '?' for ch in text)[:200]


def encode(message: SIPMessage) -> str | bytes:
    """Serialise ``message`` for one WebSocket message: text if valid UTF-8, else binary."""
    data = codec.serialize(message)
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError:
        return data
