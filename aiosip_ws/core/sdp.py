"""SDP as a SIP call needs it (RFC 4566, RFC 3264), and DTMF in SIP INFO bodies.

Sans-I/O helpers for :mod:`aiosip_ws.media`: the media direction of an offer or
answer (hold is ``sendonly``/``inactive``, or the RFC 2543 ``c=0.0.0.0`` some old
phones still send, RFC 3264 §8.4), the ICE candidates an SDP carries, and the
``application/dtmf-relay`` and ``application/dtmf`` bodies of SIP INFO that JsSIP
and most PBXs send for key presses.  The SDP itself is written by the WebRTC stack;
nothing here rewrites it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigurationError, SIPParseError

__all__ = ['DIRECTIONS', 'Candidate', 'candidates', 'direction', 'is_hold', 'reverse',
           'DTMF_DIGITS', 'DTMF_RELAY', 'DTMF', 'parse_dtmf', 'dtmf_relay_body']

#: the RFC 3264 §5.1 direction attributes
DIRECTIONS = ('sendrecv', 'sendonly', 'recvonly', 'inactive')
#: what a DTMF event may be (RFC 4733 §3.2 events 0-15)
DTMF_DIGITS = frozenset('0123456789*#ABCD')
#: Content-Type of the INFO bodies JsSIP sends by default (``Signal=5`` / ``Duration=100``)
DTMF_RELAY = 'application/dtmf-relay'
#: Content-Type of the one-digit INFO bodies some phones send
DTMF = 'application/dtmf'


def _lines(sdp: str | bytes) -> list[str]:
    text = sdp.decode('utf-8', 'replace') if isinstance(sdp, bytes) else sdp
    return [line.strip() for line in text.replace('\r\n', '\n').split('\n') if line.strip()]


def direction(sdp: str | bytes, media: str = 'audio') -> str:
    """The direction of the first ``media`` stream: its own attribute, else the session's,
    else ``sendrecv`` (RFC 3264 §5.1).  A connection address of 0.0.0.0 on a stream that
    would send means ``sendonly`` (the RFC 2543 hold, RFC 3264 §8.4)."""
    session: str | None = None
    own: str | None = None
    connection: str | None = None
    in_media = seen = False
    for line in _lines(sdp):
        if line.startswith('m='):
            if seen:
                break                              # only the first stream of that kind
            in_media = line[2:].split(' ', 1)[0] == media
            seen = in_media
            continue
        if line.startswith('a=') and line[2:] in DIRECTIONS:
            if in_media:
                own = line[2:]
            elif not seen:
                session = line[2:]
        elif line.startswith('c=') and (in_media or not seen):
            address = line.split()[-1].split('/')[0]
            if in_media or connection is None:
                connection = address
    if not seen:
        raise SIPParseError('the SDP has no %s stream (m=%s)' % (media, media))
    result = own or session or 'sendrecv'
    # an ICE offer may say 0.0.0.0 too: its candidates say where to send
    if connection == '0.0.0.0' and result == 'sendrecv' and not any(
            line.startswith('a=candidate:') for line in _lines(sdp)):
        result = 'sendonly'
    return result


def is_hold(value: str) -> bool:
    """Whether a stream with this direction puts the other side on hold (it does not send)."""
    return value in ('sendonly', 'inactive')


def reverse(value: str) -> str:
    """The direction an answer mirrors (RFC 3264 §6.1): sendonly <-> recvonly."""
    return {'sendonly': 'recvonly', 'recvonly': 'sendonly'}.get(value, value)


@dataclass(frozen=True)
class Candidate:
    """One ``a=candidate`` line (RFC 8839 §5.1): where a stream may be reached."""

    address: str
    port: int
    protocol: str
    type: str


def candidates(sdp: str | bytes) -> list[Candidate]:
    """Every ICE candidate in ``sdp``, in order (malformed lines are refused)."""
    found: list[Candidate] = []
    for line in _lines(sdp):
        if not line.startswith('a=candidate:'):
            continue
        fields = line.split()
        try:
            kind = fields[fields.index('typ') + 1]
            found.append(Candidate(fields[4], int(fields[5]), fields[2].lower(), kind))
        except (ValueError, IndexError):
            raise SIPParseError('bad ICE candidate line %r' % line) from None
    return found


def parse_dtmf(content_type: str | None, body: bytes) -> tuple[str, int | None]:
    """``(digit, duration in ms or None)`` from a SIP INFO body.

    ``application/dtmf-relay`` is ``Signal=5\\r\\nDuration=160`` (keys in any case);
    ``application/dtmf`` is the digit alone.  Raises :class:`SIPParseError` for another
    type or a body without a valid digit (the caller answers 415 or 400).
    """
    kind = (content_type or '').split(';', 1)[0].strip().lower()
    text = body.decode('ascii', 'replace')
    if kind == DTMF:
        digit, duration = text.strip(), None
    elif kind == DTMF_RELAY:
        fields: dict[str, str] = {}
        for line in text.replace('\r\n', '\n').split('\n'):
            key, sep, value = line.partition('=')
            if sep:
                fields[key.strip().lower()] = value.strip()
        digit = fields.get('signal', '')
        try:
            duration = int(fields['duration']) if 'duration' in fields else None
        except ValueError:
            raise SIPParseError('bad DTMF Duration %r' % fields['duration']) from None
    else:
        raise SIPParseError('%r is not a DTMF body type (%s or %s)' % (content_type, DTMF_RELAY,
                                                                       DTMF))
    digit = digit.upper()
    if digit == '10':                              # RFC 4733 event codes for * and #
        digit = '*'
    elif digit == '11':
        digit = '#'
    if digit not in DTMF_DIGITS:
        raise SIPParseError('%r is not a DTMF digit (one of 0-9 * # A-D)' % digit)
    return digit, duration


def dtmf_relay_body(digit: str, duration: int = 100) -> bytes:
    """The ``application/dtmf-relay`` body of one key press (what JsSIP sends)."""
    if digit.upper() not in DTMF_DIGITS or len(digit) != 1:
        raise ConfigurationError('%r is not a DTMF digit (one of 0-9 * # A-D)' % digit)
    if not 40 <= duration <= 6000:
        raise ConfigurationError('a DTMF duration of %d ms is outside 40-6000' % duration)
    return ('Signal=%s\r\nDuration=%d\r\n' % (digit.upper(), duration)).encode('ascii')
