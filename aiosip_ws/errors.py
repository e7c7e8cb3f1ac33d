"""The exceptions aiosip-ws raises.

Every exception derives from :class:`AiosipWSError`, so one ``except`` clause can
catch them all; each also derives from the closest built-in exception so that
code written for plain Python keeps working (``ValueError`` for bad input,
``TimeoutError`` for timeouts, ``ConnectionError`` for transport failures).
"""
from __future__ import annotations

__all__ = [
    'AiosipWSError',
    'ConfigurationError',
    'SIPParseError',
    'TransportError',
    'HandshakeError',
    'ConnectionLost',
    'TransactionTimeout',
    'DiscoveryError',
    'UnknownTransportError',
]


class AiosipWSError(Exception):
    """Base class of every error raised by aiosip-ws."""


class ConfigurationError(AiosipWSError, ValueError):
    """An option or URL given to aiosip-ws cannot be used; the message says which."""


class UnknownTransportError(ConfigurationError, LookupError):
    """No transport is registered under the requested name."""


class SIPParseError(AiosipWSError, ValueError):
    """A WebSocket message does not hold exactly one well-formed SIP message.

    ``status`` is the SIP status code a server should answer a request with
    (400 unless the RFCs call for another one, e.g. 505 for a bad version);
    ``is_request`` tells whether the broken message looked like a request, so
    that the caller knows whether a response is possible at all.
    """

    def __init__(self, reason: str, *, status: int = 400, is_request: bool | None = None,
                 partial: object = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.is_request = is_request
        #: whatever could be parsed before the error (a ``SIPMessage`` or None); a
        #: server uses it to build the error response (Via, From, To, Call-ID, CSeq).
        self.partial = partial


class TransportError(AiosipWSError, ConnectionError):
    """The WebSocket transport failed (RFC 3261 8.1.3.1: treat like a 503)."""


class HandshakeError(TransportError):
    """The WebSocket opening handshake did not produce a usable SIP connection."""


class ConnectionLost(TransportError):
    """The WebSocket connection closed while a transaction was still waiting."""


class TransactionTimeout(AiosipWSError, TimeoutError):
    """No final response arrived within Timer B/F (64*T1, RFC 3261 17.1)."""


class DiscoveryError(TransportError):
    """RFC 3263 / RFC 7118 DNS discovery found no usable WebSocket target."""
