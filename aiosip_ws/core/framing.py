"""The SIP <-> WebSocket message mapping of RFC 7118, sans I/O.

One WebSocket message carries exactly one SIP message (RFC 7118 5), in a text
frame when the whole message is valid UTF-8 and in a binary frame otherwise
(RFC 7118 4.2).  Messages made only of CR and LF are RFC 5626 keep-alives: a
double CRLF is a ping to answer with one CRLF, anything else a pong (RFC 7118 6,
RFC 5626 §4.4 and §5.4); neither reaches the SIP layer.

:func:`receive` turns an incoming WebSocket message into one event, and
:func:`encode` turns an outgoing :class:`~aiosip_ws.core.codec.SIPMessage` into the
``str`` (text frame) or ``bytes`` (binary frame) to hand to the WebSocket
library.  Nothing here does I/O; :mod:`aiosip_ws.transport` does.

A message the codec refuses becomes :class:`MessageRejected`, carrying the error
response a broken request can still get (400, or 505 for another SIP version),
addressed with the request's own Via and CSeq; a well-formed request whose
Request-URI scheme is not served (anything but ``sip``/``sips`` by default) is
refused with 416 here as well (RFC 3261 8.2.2.1, 16.3; RFC 4475 3.3.2).
:func:`receive` never raises, whatever the peer sends.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import SIPParseError
from . import codec
from .codec import SIPMessage

__all__ = ['CRLF_PING', 'CRLF_PONG', 'encode_frame', 'KeepAlivePing', 'KeepAlivePong', 'MessageReceived',
           'MessageRejected', 'Event', 'receive', 'encode', 'error_response', 'SUBPROTOCOL',
           'URI_SCHEMES']

#: The WebSocket subprotocol RFC 7118 registers (section 10).
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
    """The message could not be parsed, or is a request no SIP element here can serve.

    ``response`` is the error response to send back (a request that got far
    enough to be answered), or None when the message must only be dropped and
    logged (a broken response, an ACK, or a request without the Via and CSeq a
    response needs).
    """

    error: SIPParseError
    response: SIPMessage | None
    binary: bool


Event = KeepAlivePing | KeepAlivePong | MessageReceived | MessageRejected

_KEEPALIVE_START = ('\r', '\n')
_KEEPALIVE_START_BYTES = (b'\r', b'\n')

#: Request-URI schemes served here; other requests get 416 (RFC 3261 8.2.2.1, 16.3).
URI_SCHEMES = frozenset({'sip', 'sips'})


def receive(data: str | bytes, *, server_header: str | None = None,
            uri_schemes: frozenset[str] = URI_SCHEMES) -> Event:
    """Classify and parse one incoming WebSocket message; never raises.

    ``uri_schemes`` are the Request-URI schemes accepted (lower case); a request
    for another scheme is well formed but is answered 416 Unsupported URI Scheme
    without reaching the SIP layer (RFC 4475 3.3.2, 3.3.3).
    """
    binary = isinstance(data, bytes)
    # Only a message starting with CR or LF can be a keep-alive: the common case
    # costs one look at the first character, not a scan of the whole message.
    if isinstance(data, bytes):
        if data[:1] in _KEEPALIVE_START_BYTES and not data.strip(b'\r\n'):
            return KeepAlivePing() if b'\r\n\r\n' in data else KeepAlivePong()
    elif data[:1] in _KEEPALIVE_START and not data.strip('\r\n'):
        return KeepAlivePing() if '\r\n\r\n' in data else KeepAlivePong()
    try:
        message = codec.parse(data)
    except SIPParseError as error:
        return MessageRejected(error, error_response(error, server_header), binary)
    if message.method is not None:
        uri = message.uri or ''
        scheme = uri[:uri.find(':')].lower()
        if scheme not in uri_schemes:
            refused = SIPParseError('Request-URI scheme %r is not supported' % scheme[:20],
                                    status=416, is_request=True, partial=message)
            return MessageRejected(refused, error_response(refused, server_header), binary)
    return MessageReceived(message, binary)


def error_response(error: SIPParseError, server_header: str | None = None) -> SIPMessage | None:
    """The response a broken request gets, if one can be built (RFC 3261 8.2, 16.3).

    It needs the top Via (where the response goes, and its branch) and CSeq (the
    client matches the response to its transaction on those two, RFC 3261 17.1.3);
    From, To and Call-ID are copied when present (RFC 4475 3.3.1: a request
    without them "ideally" gets 400 too).  An ACK is never answered.
    """
    partial = error.partial
    if not error.is_request or not isinstance(partial, SIPMessage) or partial.method == 'ACK':
        return None
    cseq = partial.get('CSeq')
    if partial.get('Via') is None or cseq is None or cseq.split()[-1:] == ['ACK']:
        return None
    extra = [('Server', server_header)] if server_header else []
    reason = '%s (%s)' % (codec.REASONS.get(error.status, 'Bad Request'), error.reason)
    return codec.make_response(partial, error.status, _printable(reason), headers=extra)


def _printable(text: str) -> str:
    return ''.join(ch if ch.isprintable() else '?' for ch in text)[:200]


def encode(message: SIPMessage) -> str | bytes:
    """Serialise ``message`` for one WebSocket message: text (a str) if valid UTF-8, else
    binary (bytes)."""
    data, text = encode_frame(message)
    return data.decode() if text else data


def encode_frame(message: SIPMessage) -> tuple[bytes, bool]:
    """``message`` in wire form, and whether it goes in a text frame (valid UTF-8) rather
    than a binary one (RFC 7118 §5: either carries a SIP message)."""
    data = codec.serialize(message)
    if data.isascii():
        return data, True
    try:
        data.decode('utf-8')
    except UnicodeDecodeError:
        return data, False
    return data, True
