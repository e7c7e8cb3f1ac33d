"""serve on UDP, TCP and TLS beside WebSocket: browsers reach any SIP network (RFC 7118 §8.2).

``--listen udp://HOST:PORT``, ``tcp://...`` and ``tls://...`` open the project's own UDP
and TCP transports (:mod:`aiosip_ws.transport.udp`, :mod:`aiosip_ws.transport.tcp`);
:class:`NetworkSide` hands what arrives there to the relay as if each UDP peer and each
TCP/TLS connection were a WebSocket connection (a :class:`BridgedFlow`).  Over UDP the
transaction layer (:class:`aiosip_ws.transport.transactions.TransactionLayer`, the
relay's own: one table for every request serve sends) stands between them:
retransmitted requests are absorbed (their response sent again), the requests serve
sends are retransmitted until answered, and a failure to an INVITE is ACKed hop by hop;
the relay sees each message once.

A UDP peer has no connection to lose: what it registers expires by time only.  A binding
made over TCP or TLS with Outbound (``;ob``) goes with its connection, as over WebSocket;
one without stays until it expires and is reached at its Contact (a new connection).
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, Protocol

from ..core.codec import SIPMessage
from ..core.grammar import ip_literal, show_address, split_net_url
from ..core.sipuri import SipURI
from ..errors import ConfigurationError
from ..options import RelayLimits, ServerOptions
from ..transport.tap import tap_of
from ..transport.tcp import StreamConnection, StreamListener, connect_tcp, listen_tcp
from ..transport.udp import UDPEndpoint, UDPFlow, listen_udp
from .flow import FlowState
from .transactions import ClientTransactions


class BridgeHost(Protocol):
    """What the bridge uses of the server it belongs to: its limits and options, its
    transactions, and where the flows' events go (the server's ConnectionHandler side)."""

    limits: RelayLimits
    server_options: ServerOptions

    @property
    def transactions(self) -> ClientTransactions: ...

    def connection_made(self, conn: Any) -> None: ...

    def connection_lost(self, conn: Any, exc: BaseException | None) -> None: ...

    def message_received(self, conn: Any, message: SIPMessage) -> None: ...

    def flow_made(self, flow: Any) -> None: ...

__all__ = ['NetworkSide', 'BridgedFlow', 'hop_transport']

logger = logging.getLogger(__name__)

def hop_transport(uri: SipURI) -> str:
    """The transport a request to ``uri`` takes: its ``transport`` parameter, else TLS for
    ``sips:`` and UDP for ``sip:`` (RFC 3263 §4.1 without DNS)."""
    return (uri.transport or ('tls' if uri.scheme == 'sips' else 'udp')).lower()


class BridgedFlow:
    """A UDP peer or a TCP/TLS connection, as the relay sees a connection."""

    def __init__(self, side: NetworkSide, inner: UDPFlow | StreamConnection) -> None:
        self.side = side
        self.inner = inner
        self.reliable = inner.reliable
        self.via_transport = inner.via_transport
        self.transport_name = inner.transport_name
        #: what the relay keeps for it (its FlowState)
        self.flow_state: Any = FlowState()
        self.dialogs: dict[str, Any] = {}
        self.options = side.options
        self.identity: Any = None
        self.close_code: int | None = None

    def __repr__(self) -> str:
        return '<%s %s>' % (self.via_transport, show_address(self.inner.remote_addr))

    @property
    def is_open(self) -> bool:
        return self.inner.is_open

    @property
    def remote_addr(self) -> tuple[str, int]:
        return self.inner.remote_addr

    @property
    def local_addr(self) -> tuple[str, int]:
        return self.inner.local_addr

    @property
    def via_host(self) -> str:
        return self.inner.via_host

    def via(self, branch: str) -> str:
        return self.inner.via(branch)

    def send(self, message: SIPMessage) -> bool:
        """Send as the transport needs: over UDP, a response through the server
        transaction it answers (which sends it again for each retransmitted request).
        Requests come here from the transaction layer's client side, which already
        retransmits them."""
        if self.reliable or message.is_request:
            return self.inner.send(message)
        self.side.layer.respond(message, self.inner)
        return True

    async def close(self, code: int = 1000, reason: str = '') -> None:
        if isinstance(self.inner, StreamConnection):
            self.inner.close()
            await self.inner.wait_closed()


class NetworkSide:
    """serve's UDP endpoints and TCP/TLS listeners, and the transaction layer of UDP."""

    def __init__(self, relay: BridgeHost, *, ssl_context: ssl.SSLContext | None = None,
                 client_ssl: ssl.SSLContext | None = None,
                 advertise: str | None = None) -> None:
        self.relay = relay
        #: the relay's wire tap: the UDP, TCP and TLS transports report their bytes to it
        self.wire_tap = tap_of(relay)
        self.ssl_context = ssl_context
        #: the TLS context of the connections to next hops (None: the default one)
        self.client_ssl = client_ssl
        self.advertise = advertise
        self.options = ServerOptions()
        #: the relay's transaction layer: UDP's server transactions are kept here too
        self.layer = relay.transactions.layer
        self.endpoints: list[UDPEndpoint] = []
        self.listeners: list[StreamListener] = []
        #: connections serve opened to next hops: (address, port, tls) -> connection
        self._outgoing: dict[tuple[str, int, bool], StreamConnection] = {}
        self._connecting: dict[tuple[str, int, bool], asyncio.Future[StreamConnection]] = {}

    async def listen(self, url: str) -> Any:
        scheme, host, port = split_net_url(url)
        if scheme == 'udp':
            endpoint = await listen_udp(host, port, self, advertise=self.advertise)
            self.endpoints.append(endpoint)
            return _Bound('udp://%s' % show_address(endpoint.local_addr))
        context = self.ssl_context if scheme == 'tls' else None
        if scheme == 'tls' and context is None:
            raise ConfigurationError('%s needs --tls-cert and --tls-key' % url)
        listener = await listen_tcp(host, port, self, ssl_context=context,
                                    advertise=self.advertise,
                                    send_timeout=self.relay.server_options.send_timeout)
        self.listeners.append(listener)
        return _Bound(listener.bound_url)

    def wrap(self, inner: UDPFlow | StreamConnection) -> BridgedFlow:
        flow: BridgedFlow | None = inner.flow_state
        if flow is None:
            flow = inner.flow_state = BridgedFlow(self, inner)
            if isinstance(inner, UDPFlow):
                self.relay.flow_made(flow)           # no connection: nothing to lose
        return flow

    def flow_for(self, uri: SipURI) -> BridgedFlow | None:
        """Where a request to ``uri`` goes when no registration or connection says: over
        UDP to its host and port (an IP address; names are not resolved here), or over the
        TCP/TLS connection serve opened to it."""
        transport = hop_transport(uri)
        if ip_literal(uri.host) is None:
            return None
        host = uri.host.strip('[]')
        if transport != 'udp':
            conn = self._outgoing.get((host, uri.port or 5060, transport == 'tls'))
            return self.wrap(conn) if conn is not None and conn.is_open else None
        if not self.endpoints:
            return None
        return self.wrap(self.endpoints[0].flow((host, uri.port or 5060)))

    def next_hop_now(self, uri: SipURI) -> BridgedFlow | None:
        """The flow to a next hop when it needs no wait (an IP address over UDP, or a
        connection already open to one), else None: :meth:`next_hop`."""
        host = ip_literal(uri.host)
        if host is None:
            return None
        transport = hop_transport(uri)
        port = uri.port or (5061 if transport == 'tls' else 5060)
        if transport == 'udp':
            return self.wrap(self.endpoints[0].flow((host, port))) if self.endpoints else None
        conn = self._outgoing.get((host, port, transport == 'tls'))
        return self.wrap(conn) if conn is not None and conn.is_open else None

    async def next_hop(self, uri: SipURI) -> BridgedFlow:
        """The flow to a next hop (``--route``): a UDP peer, or a TCP/TLS connection opened
        on first use and kept."""
        transport = hop_transport(uri)
        port = uri.port or (5061 if transport == 'tls' else 5060)
        literal = ip_literal(uri.host)
        if literal is not None:
            address = literal                     # no resolver thread for an address
        else:
            loop = asyncio.get_running_loop()
            infos = await asyncio.wait_for(loop.getaddrinfo(uri.host.strip('[]'), port), 10)
            address = str(infos[0][4][0])
        if transport == 'udp':
            if not self.endpoints:
                raise ConfigurationError('a UDP next hop needs --listen udp://HOST:PORT')
            return self.wrap(self.endpoints[0].flow((address, port)))
        key = (address, port, transport == 'tls')
        conn = self._outgoing.get(key)
        if conn is None or not conn.is_open:
            pending = self._connecting.get(key)
            if pending is None:
                pending = self._connecting[key] = asyncio.ensure_future(connect_tcp(
                    address, port, self, ssl_context=(self.client_ssl
                                                      or ssl.create_default_context())
                    if transport == 'tls' else None, server_hostname=uri.host,
                    send_timeout=self.relay.server_options.send_timeout))
                pending.add_done_callback(lambda _: self._connecting.pop(key, None))
            conn = self._outgoing[key] = await asyncio.shield(pending)
        return self.wrap(conn)

    # -- what the transports report -----------------------------------------------------
    def connection_made(self, conn: StreamConnection) -> None:
        self.relay.connection_made(self.wrap(conn))

    def connection_lost(self, conn: StreamConnection, exc: BaseException | None) -> None:
        self.relay.connection_lost(self.wrap(conn), exc)

    def message_received(self, inner: Any, message: SIPMessage) -> None:
        flow = self.wrap(inner)
        if (not inner.reliable and message.is_request
                and self.layer.request_received(inner, message) is None):
            return                                      # a retransmission, answered again
        self.relay.message_received(flow, message)      # responses: to the layer from there

    async def close(self) -> None:
        for pending in list(self._connecting.values()):
            pending.cancel()
        for conn in list(self._outgoing.values()):
            conn.close()
            await conn.wait_closed()
        self._outgoing.clear()
        for listener in self.listeners:
            await listener.close()
        for endpoint in self.endpoints:
            endpoint.close()
            await endpoint.wait_closed()
        self.listeners.clear()
        self.endpoints.clear()


class _Bound:
    """What serve prints for a listener: ``listening on udp://127.0.0.1:5060``."""

    def __init__(self, bound_url: str) -> None:
        self.bound_url = bound_url
