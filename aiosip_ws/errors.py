"""The exceptions aiosip-ws raises.

Every exception derives from :class:`AiosipWSError`, so one ``except`` clause can
catch them all; each also derives from the closest built-in exception so that
code written for plain Python keeps working (``ValueError`` for bad input,
``TimeoutError`` for timeouts, ``ConnectionError`` for transport failures).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
    'InvalidURIError',
    'DigestError',
    'FlowTokenError',
    'RegistrationError',
    'ProxyHeaderError',
    'AllTargetsFailed',
    'MediaError',
    'MediaRelayError',
    'MediaRelayTimeout',
    'HepError',
    'RoutingError',
    'CredentialsPending',
    'CredentialsUnavailable',
    'CallFailed',
    'Interrupted',
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


class InvalidURIError(ConfigurationError, SIPParseError):
    """A URI or address given by the user (``remote_addr``, ``--to``, an option) is not valid.

    It is both a :class:`ConfigurationError` (the caller must fix what it passed)
    and a :class:`SIPParseError` (it failed the SIP URI grammar), so ``except``
    clauses written for either keep working.
    """


class FlowTokenError(SIPParseError):
    """An RFC 5626 flow token this edge did not make (its HMAC does not match): the request
    routed by it gets 403."""


class DigestError(AiosipWSError, ValueError):
    """A challenge cannot be answered (unknown algorithm or qop, broken header)."""


class TransportError(AiosipWSError, ConnectionError):
    """The WebSocket transport failed (RFC 3261 8.1.3.1: treat like a 503)."""


class HandshakeError(TransportError):
    """The WebSocket opening handshake did not produce a usable SIP connection."""

    #: seconds the server asked us to wait (its Retry-After), when it gave one
    retry_after: float | None = None


class HandshakeRefused(AiosipWSError):
    """Raised by a handshake authentication hook (``ServerOptions.authenticate``) to refuse
    a WebSocket handshake with an HTTP ``status`` (401 or 403, say) before any SIP."""

    def __init__(self, status: int = 403, reason: str = 'Forbidden') -> None:
        super().__init__('handshake refused: HTTP %d %s' % (status, reason))
        self.status = status
        self.reason = reason


class ProxyHeaderError(AiosipWSError, ValueError):
    """A connection to a PROXY protocol listener does not start with a valid PROXY header
    (``ServerOptions.proxy_protocol``); the message says what is wrong."""


class ConnectionLost(TransportError):
    """The WebSocket connection closed while a transaction was still waiting."""


class TransactionTimeout(AiosipWSError, TimeoutError):
    """No final response arrived within Timer B/F (64*T1, RFC 3261 17.1)."""


class DiscoveryError(TransportError):
    """RFC 3263 / RFC 7118 DNS discovery found no usable WebSocket target."""


class AllTargetsFailed(DiscoveryError):
    """Every target was tried and none connected; ``attempts`` holds (target, error) pairs."""

    def __init__(self, attempts: Sequence[tuple[Any, BaseException]]) -> None:
        self.attempts = list(attempts)
        details = '; '.join('%s: %s: %s' % (t.describe(), type(e).__name__, e)
                            for t, e in self.attempts)
        super().__init__('could not connect to any of %d target(s): %s'
                         % (len(self.attempts), details))


class RegistrationError(AiosipWSError):
    """The registrar refused the REGISTER (the final response is in ``response``)."""

    def __init__(self, message: str, response: Any = None) -> None:
        super().__init__(message)
        self.response = response


class MediaError(AiosipWSError):
    """A call's media cannot be set up: the ``[media]`` extra (aiortc) is missing, the
    peer's SDP cannot be answered, or a media file cannot be read or written."""


class MediaRelayError(AiosipWSError):
    """rtpengine (the media relay serve drives over its ng protocol) refused a command
    (``result: error``, its ``error-reason`` in the message), did not answer in time, or
    answered something that is not an ng reply."""


class MediaRelayTimeout(MediaRelayError, TimeoutError):
    """No rtpengine answered an ng command within its timeout (retransmitted meanwhile)."""


class HepError(AiosipWSError, ValueError):
    """A HEP packet that cannot be built (a message too large, an address that is not an
    IP literal) or read (not HEP3, a cut or malformed chunk)."""


class RoutingError(AiosipWSError, ValueError):
    """What a routing app (``aiosip-ws serve --app``) asked of serve cannot be done: a
    header that stays serve's, a Reply serve cannot send, an app that cannot be loaded.
    The message names what to change."""


class CredentialsUnavailable(AiosipWSError):
    """A routing app's credentials() could not be asked (over ``--credentials-rate``) or
    failed: serve answers 503 with Retry-After."""


class CredentialsPending(AiosipWSError):
    """The user ``name`` is not in the credentials cache yet: its lookup by ``store``
    (``await store.wait(name)``) comes first, then the request is checked again."""

    def __init__(self, store: Any, name: str) -> None:
        super().__init__('looking up the user %s' % name)
        self.store, self.name = store, name


class CallFailed(AiosipWSError):
    """An outgoing call ended without being answered; ``status`` and ``reason`` are the
    final response's (``status`` is None for a timeout or a lost connection)."""

    def __init__(self, message: str, status: int | None = None, reason: str = '') -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class Interrupted(AiosipWSError):
    """A command-line tool was stopped by SIGINT or SIGTERM before it finished."""
