"""Configuration of WebSocket connections and listeners (see README.rst, "Configuration")."""
from __future__ import annotations

import ssl as _ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .errors import ConfigurationError

__all__ = ['ConnectionOptions', 'ClientOptions', 'ServerOptions', 'DEFAULT_MAX_SIZE']

#: Largest WebSocket message accepted by default (close code 1009 beyond it).  SIP
#: messages are rarely over a few KiB; WebRTC SDP with many candidates reaches ~10 KiB.
DEFAULT_MAX_SIZE = 64 * 1024


@dataclass
class ConnectionOptions:
    """Options both roles share."""

    #: largest incoming WebSocket message in bytes; bigger ones close the connection with 1009
    max_size: int = DEFAULT_MAX_SIZE
    #: seconds between WebSocket Ping frames (None: never ping)
    ping_interval: float | None = 20.0
    #: seconds to wait for the Pong before closing with 1011 (None: wait forever)
    ping_timeout: float | None = 20.0
    #: seconds to wait for the closing handshake
    close_timeout: float = 5.0
    #: seconds between RFC 5626 CRLF pings sent on the connection (None: never); each
    #: interval is drawn at random from [0.8 x, x] as RFC 5626 4.4.1 asks
    crlf_ping_interval: float | None = None
    #: seconds to wait for the CRLF pong before the flow counts as failed (RFC 5626: 10 s)
    crlf_pong_timeout: float = 10.0
    #: Timer B/F: seconds before a client transaction without a final response fails
    transaction_timeout: float = 32.0

    def validate(self) -> None:
        if self.max_size < 1024:
            raise ConfigurationError('max_size=%r is too small for SIP; use at least 1024 bytes'
                                     % self.max_size)
        for name in ('ping_interval', 'ping_timeout', 'crlf_ping_interval'):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigurationError('%s must be a positive number of seconds or None, not %r'
                                         % (name, value))
        for name in ('close_timeout', 'crlf_pong_timeout', 'transaction_timeout'):
            if getattr(self, name) <= 0:
                raise ConfigurationError('%s must be a positive number of seconds' % name)


@dataclass
class ClientOptions(ConnectionOptions):
    """Options for connections aiosip-ws opens (the SIP WebSocket Client role)."""

    #: TLS context for ``wss://`` (default: ``ssl.create_default_context()``)
    ssl: _ssl.SSLContext | None = None
    #: the ``Origin`` header to send (browsers always send one; None sends none)
    origin: str | None = None
    #: extra handshake headers, e.g. ``{'Authorization': 'Bearer ...', 'Cookie': 'sid=1'}``
    headers: Mapping[str, str] = field(default_factory=dict)
    #: seconds allowed for TCP + TLS + the WebSocket handshake
    open_timeout: float = 10.0
    #: HTTP proxy for the handshake (websockets' ``proxy``); None connects directly
    proxy: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.open_timeout <= 0:
            raise ConfigurationError('open_timeout must be a positive number of seconds')


@dataclass
class ServerOptions(ConnectionOptions):
    """Options for listeners (the SIP WebSocket Server role)."""

    #: TLS context for ``wss://`` listeners (required for them)
    ssl: _ssl.SSLContext | None = None
    #: Origins allowed to connect (None: any, or none).  Others get HTTP 403.  Put
    #: ``None`` in the list (or use ``allow_missing_origin``) to admit clients that send none.
    allowed_origins: Sequence[str] | None = None
    #: with ``allowed_origins``, also admit handshakes that carry no Origin (non-browsers)
    allow_missing_origin: bool = True
    #: seconds a client may take to finish the opening handshake
    open_timeout: float = 10.0
    #: ``Server`` header of the handshake response and of SIP responses (None: none)
    server_header: str | None = None
    #: most WebSocket connections at once on one listener; more get HTTP 503 (None: no cap)
    max_connections: int | None = None
    #: most connections at once from one source IP address; more get HTTP 503 (None: no cap)
    max_connections_per_ip: int | None = None

    def validate(self) -> None:
        super().validate()
        if self.open_timeout <= 0:
            raise ConfigurationError('open_timeout must be a positive number of seconds')
        for name in ('max_connections', 'max_connections_per_ip'):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigurationError('%s must be at least 1 (or None for no cap)' % name)
