"""Configuration of WebSocket connections and listeners (see docs/library.rst, "Configuration reference")."""
from __future__ import annotations

import ipaddress
import ssl as _ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError

__all__ = ['ConnectionOptions', 'ClientOptions', 'ServerOptions', 'RelayLimits', 'DEFAULT_MAX_SIZE']

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
    #: most data (bytes; characters of text frames) waiting to be sent on one connection;
    #: a peer that stops reading is closed with 1008 once it is exceeded (None: no bound)
    max_send_queue: int | None = 1024 * 1024
    #: seconds what waits to be sent on a connection may go without a byte leaving; then
    #: the peer counts as gone (out of coverage, or not reading) and the connection is
    #: aborted, pings or not (None: wait as long as TCP does, some 15 minutes)
    send_timeout: float | None = 20.0

    def validate(self) -> None:
        if self.max_send_queue is not None and self.max_send_queue < self.max_size:
            raise ConfigurationError('max_send_queue=%r must hold at least one message of '
                                     'max_size=%r bytes' % (self.max_send_queue, self.max_size))
        if self.max_size < 1024:
            raise ConfigurationError('max_size=%r is too small for SIP; use at least 1024 bytes'
                                     % self.max_size)
        for name in ('ping_interval', 'ping_timeout', 'crlf_ping_interval', 'send_timeout'):
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
    #: a connection that has sent this many SIP messages that are refused unparsed (dropped,
    #: or answered 400/505/416) is closed with 1008, policy violation (None: never)
    max_bad_messages: int | None = 20
    #: plain HTTP on the listener: ``http_handler(path, headers, client_ip)`` sees every
    #: request without ``Upgrade: websocket`` and returns ``(status, content_type, body)``
    #: (or with a fourth item, more ``(name, value)`` headers), or None to leave it to the
    #: handshake checks (426).  Sync; it must not block.
    http_handler: Callable[[str, Any, str], tuple[Any, ...] | None] | None = None
    #: most handshakes accepted per second on one listener (a token bucket of
    #: ``handshake_burst``); more get HTTP 503 with Retry-After (None: no cap).  After a
    #: restart or a network blip every client reconnects at once: this spreads them out.
    max_handshakes_per_second: float | None = None
    handshake_burst: int = 200
    #: ``refuse_handshakes()`` returns why new handshakes get HTTP 503 now (draining), or None
    refuse_handshakes: Callable[[], str | None] | None = None
    #: handshake authentication: ``authenticate(request)`` (sync or async) sees each
    #: handshake that passed the other checks (a :class:`~aiosip_ws.transport.listener.
    #: HandshakeRequest`: path, query, cookies, headers, client address) and returns the
    #: identity the connection gets (``WSConnection.identity``; None: anonymous), or
    #: raises :class:`~aiosip_ws.errors.HandshakeRefused` (HTTP 401/403, no SIP at all)
    authenticate: Callable[[Any], Any] | None = None
    #: a second service on the listener's port, for handshakes offering its subprotocol
    #: (serve's admin WebSocket): ``admin.subprotocol``; ``admin.check(path, headers,
    #: client_ip)`` returns ``(status, reason)`` to refuse the handshake, or None; then
    #: ``await admin.serve(websocket, client)`` runs the connection.  Its handshakes skip
    #: the SIP checks (path, Origin, caps, ``authenticate``): ``check`` is all there is
    admin: Any = None
    #: reverse proxies (addresses or CIDR networks) whose ``X-Forwarded-For`` or
    #: ``Forwarded`` header names the client; from anyone else those headers are ignored.
    #: The client address found is the connection's ``remote_addr`` (per-IP caps, logs,
    #: the address the http_handler and authenticate hooks see)
    trusted_proxies: Sequence[str] = ()
    #: every connection starts with a HAProxy PROXY protocol header (v1 or v2, read before
    #: TLS) that names the client; only ``trusted_proxies`` may connect.  Needs asyncio's
    #: event loop (not uvloop)
    proxy_protocol: bool = False
    #: SO_REUSEPORT on the listening socket: several processes (``serve --workers``)
    #: listen on one port and the kernel spreads the connections over them
    reuse_port: bool = False
    #: the Retry-After of a 503 to a handshake: a whole number of seconds drawn from
    #: [retry_after, 2 x retry_after], so that refused clients come back spread out
    retry_after: int = 5

    def validate(self) -> None:
        super().validate()
        if self.open_timeout <= 0:
            raise ConfigurationError('open_timeout must be a positive number of seconds')
        if self.max_handshakes_per_second is not None and self.max_handshakes_per_second <= 0:
            raise ConfigurationError('max_handshakes_per_second must be positive (or None)')
        if self.handshake_burst < 1 or self.retry_after < 1:
            raise ConfigurationError('handshake_burst and retry_after must be at least 1')
        for network in self.trusted_proxies:      # (options import no layer: checked here)
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigurationError('trusted proxy %r is no address or CIDR network'
                                         % (network,)) from None
        if self.proxy_protocol and not self.trusted_proxies:
            raise ConfigurationError('proxy_protocol needs trusted_proxies (--trusted-proxy CIDR): '
                                     'the load balancers allowed to send PROXY headers')
        for name in ('max_connections', 'max_connections_per_ip', 'max_bad_messages'):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigurationError('%s must be at least 1 (or None for no cap)' % name)


@dataclass
class RelayLimits:
    """What one client may cost ``aiosip-ws serve`` (see docs/serve.rst).

    Beyond the pending-transaction caps and the request rate, serve answers 503 with
    ``Retry-After`` (the only 503s it makes itself); a connection that stays over the
    rate for ``rate_limit_grace`` seconds is closed with 1008.
    """

    #: requests being relayed, and waiting for their final response, in all
    max_pending: int = 10000
    #: the same, per connection: requests from it, and requests towards it
    max_pending_per_connection: int = 200
    #: sustained requests per second one connection may send (None: no limit)
    max_requests_per_second: float | None = 500.0
    #: requests one connection may send in a burst above that rate
    burst: int = 1000
    #: seconds a connection may stay over the rate before it is closed with 1008
    rate_limit_grace: float = 10.0
    #: the ``Retry-After`` of serve's 503 responses, in seconds
    retry_after: int = 5

    def validate(self) -> None:
        for name in ('max_pending', 'max_pending_per_connection', 'burst', 'retry_after'):
            if getattr(self, name) < 1:
                raise ConfigurationError('%s must be at least 1, not %r' % (name, getattr(self, name)))
        if self.max_requests_per_second is not None and self.max_requests_per_second <= 0:
            raise ConfigurationError('max_requests_per_second must be positive or None, not %r'
                                     % self.max_requests_per_second)
        if self.rate_limit_grace < 0:
            raise ConfigurationError('rate_limit_grace must not be negative')
