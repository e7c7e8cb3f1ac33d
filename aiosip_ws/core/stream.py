"""SIP over a byte stream (TCP, TLS): where one message ends, sans I/O (RFC 3261 §18.3).

On a stream the Content-Length says where a message's body ends and the next message
begins, so it MUST be there (§18.3, §20.14); a message without one is taken as having no
body.  CR/LF between messages are RFC 5626 §4.4.1 keep-alives: a double CRLF is a ping
(to answer with one CRLF), a lone CRLF a pong (reported once the next bytes show it is
not the first half of a ping).

:class:`StreamFramer` takes bytes as they arrive and gives back events: a whole message
(:class:`Framed`, still unparsed: :func:`aiosip_ws.core.framing.receive` parses it and says
how to answer a broken one, exactly as for a WebSocket message), a keep-alive, or
:class:`FramingFailed` when the stream cannot be read on: headers longer than the limit, a
Content-Length that is not a number or is over the limit.  After a failure the framer
yields nothing more: the owner answers what it can (400, or 513 for a message too large)
and closes the connection, because it no longer knows where any message starts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigurationError, SIPParseError
from .framing import KeepAlivePing, KeepAlivePong

__all__ = ['StreamFramer', 'Framed', 'FramingFailed', 'StreamEvent', 'MAX_MESSAGE']

#: the largest message taken by default (headers and body), bytes
MAX_MESSAGE = 65536

_CONTENT_LENGTH = re.compile(rb'^(?:content-length|l)[ \t]*:[ \t]*(.*?)[ \t]*$',
                             re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Framed:
    """One whole message, as it came (headers and exactly Content-Length bytes of body)."""

    data: bytes


@dataclass(frozen=True)
class FramingFailed:
    """The stream cannot be framed on.  ``status`` is what a request gets (400, 513);
    ``head`` holds the headers read so far, for building that response."""

    error: SIPParseError
    status: int
    head: bytes


StreamEvent = Framed | KeepAlivePing | KeepAlivePong | FramingFailed


class StreamFramer:
    """Frames SIP messages out of a byte stream."""

    def __init__(self, max_size: int = MAX_MESSAGE) -> None:
        if max_size < 256:
            raise ConfigurationError('max_size must be at least 256 bytes, got %d' % max_size)
        self.max_size = max_size
        self._buffer = bytearray()
        self._failed = False

    @property
    def failed(self) -> bool:
        return self._failed

    @property
    def buffered(self) -> int:
        """Bytes received and not yet part of a whole message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[StreamEvent]:
        """Take ``data`` (any split of the stream) and return what it completes."""
        if self._failed:
            return []
        self._buffer += data
        events: list[StreamEvent] = []
        buffer = self._buffer
        while buffer:
            if buffer[0] in (0x0D, 0x0A):                # keep-alives between messages
                if buffer.startswith(b'\r\n\r\n'):
                    del buffer[:4]
                    events.append(KeepAlivePing())
                elif len(buffer) < 4 and b'\r\n\r\n'.startswith(bytes(buffer)):
                    break              # a ping still arriving, or a pong: the next bytes say
                elif buffer.startswith(b'\r\n'):
                    del buffer[:2]
                    events.append(KeepAlivePong())
                else:
                    del buffer[:1]                          # a stray CR or LF
                continue
            end = buffer.find(b'\r\n\r\n')
            if end < 0:
                if len(buffer) > self.max_size:
                    return events + [self._fail('the headers are longer than %d bytes'
                                                % self.max_size, 513, bytes(buffer[:2048]))]
                break
            head = bytes(buffer[:end])
            values = _CONTENT_LENGTH.findall(head)
            length = 0
            if values:
                text = values[-1].decode('latin-1')
                if len({v.strip() for v in values}) > 1 or not text.isdigit():
                    return events + [self._fail('a Content-Length of %r cannot frame a stream'
                                                % text[:20], 400, head)]
                length = int(text)
            total = end + 4 + length
            if total > self.max_size:
                return events + [self._fail('a message of %d bytes is over the limit of %d'
                                            % (total, self.max_size), 513, head)]
            if len(buffer) < total:
                break
            events.append(Framed(bytes(buffer[:total])))
            del buffer[:total]
        return events

    def _fail(self, reason: str, status: int, head: bytes) -> FramingFailed:
        self._failed = True
        self._buffer.clear()
        return FramingFailed(SIPParseError(reason, status=status), status, head)
