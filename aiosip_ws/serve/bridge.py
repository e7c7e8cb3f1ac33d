"""serve on UDP, TCP and TLS beside WebSocket: browsers reach any SIP network (RFC 7118 §8.2).

``--listen udp://HOST:PORT``, ``tcp://...`` and ``tls://...`` open the project's own UDP
and TCP transports (:mod:`aiosip_ws.transport.udp`, :mod:`aiosip_ws.transport.tcp`);
:class:`NetworkSide` hands what arrives there to the relay as if each UDP peer and each
TCP/TLS connection were a WebSocket connection (a :class:`BridgedFlow`).  Over UDP the
transaction layer (:class:`aiosip_ws.transport.transactions.TransactionLayer`) stands
between them: retransmitted requests are absorbed (their response sent again), the
requests serve sends are retransmitted until answered, and a failure to an INVITE is
ACKed hop by hop; the relay sees each message once.

A UDP peer has no connection to lose: what it registers expires by time only.  A binding
made over TCP or TLS goes with its connection, as over WebSocket.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any

from ..core.codec import SIPMessage
from ..core.grammar import ip_literal, show_address, split_net_url
from ..core.sipuri import SipURI
from ..options import ServerOptions
from ..transport.tcp import StreamConnection, StreamListener, listen_tcp
from ..transport.transactions import TransactionLayer
from ..transport.udp import UDPEndpoint, UDPFlow, listen_udp

if TYPE_CHECKING:
    from .relay import RelayServer

__all__ = ['NetworkSide', 'BridgedFlow', 'NET_LISTEN_SCHEMES', 'split_listen_url']

logger = logging.getLogger(__name__)

#: the --listen schemes served here, and their default ports
NET_LISTEN_SCHEMES = {'udp': 5060, 'tcp': 5060, 'tls': 5061}


def split_listen_url(url: str) -> tuple[str, str, int]:
    """``udp://127.0.0.1:5060`` -> ``('udp', '127.0.0.1', 5060)``."""
    return split_net_url(url)


class BridgedFlow:
    """A UDP peer or a TCP/TLS connection, as the relay sees a connection."""

    def __init__(self, side: NetworkSide, inner: UDPFlow | StreamConnection) -> None:
        self.side = side
        self.inner = inner
        self.reliable = inner.reliable
        self.via_transport = inner.via_transport
        self.transport_name = inner.transport_name
        #: what the relay keeps per connection (bindings, Contact hosts, pending branches)
        self.state: dict[str, Any] = {}
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
        """Send as the transport needs: over UDP, a request in a client transaction
        (retransmitted; its responses reach the relay through it) and a response through
        the server transaction it answers (which sends it again for each retransmitted
        request)."""
        if self.reliable:
            return self.inner.send(message)
        layer = self.side.layer
        if not message.is_request:
            layer.respond(message, self.inner)
            return True
        if message.method == 'ACK':
            if layer.acked_by_us(message):
                return True                        # the layer ACKed that failure already
            return self.inner.send(message)
        future = layer.send_request(self.inner, message,
                                    on_response=lambda response: self.side.deliver(self, response))
        future.add_done_callback(_retrieve)        # the relay has its own Timer F
        return not (future.done() and future.exception() is not None)

    async def close(self, code: int = 1000, reason: str = '') -> None:
        if isinstance(self.inner, StreamConnection):
            self.inner.close()
            await self.inner.wait_closed()


def _retrieve(future: asyncio.Future[SIPMessage]) -> None:
    if not future.cancelled():
        future.exception()


class NetworkSide:
    """serve's UDP endpoints and TCP/TLS listeners, and the transaction layer of UDP."""

    def __init__(self, relay: RelayServer, *, ssl_context: ssl.SSLContext | None = None,
                 advertise: str | None = None) -> None:
        self.relay = relay
        self.ssl_context = ssl_context
        self.advertise = advertise
        self.options = ServerOptions()
        self.layer = TransactionLayer(max_transactions=relay.limits.max_pending or 20000)
        self.endpoints: list[UDPEndpoint] = []
        self.listeners: list[StreamListener] = []

    async def listen(self, url: str) -> Any:
        scheme, host, port = split_listen_url(url)
        if scheme == 'udp':
            endpoint = await listen_udp(host, port, self, advertise=self.advertise)
            self.endpoints.append(endpoint)
            return _Bound('udp://%s' % show_address(endpoint.local_addr))
        context = self.ssl_context if scheme == 'tls' else None
        if scheme == 'tls' and context is None:
            from ..errors import ConfigurationError
            raise ConfigurationError('%s needs --tls-cert and --tls-key' % url)
        listener = await listen_tcp(host, port, self, ssl_context=context,
                                    advertise=self.advertise)
        self.listeners.append(listener)
        return _Bound(listener.bound_url)

    def wrap(self, inner: UDPFlow | StreamConnection) -> BridgedFlow:
        flow: BridgedFlow | None = inner.state.get('bridged')
        if flow is None:
            flow = inner.state['bridged'] = BridgedFlow(self, inner)
            if isinstance(inner, UDPFlow):
                self.relay.flow_made(flow)           # no connection: nothing to lose
        return flow

    def flow_for(self, uri: SipURI) -> BridgedFlow | None:
        """Where a request to ``uri`` goes when no registration or connection says: over
        UDP to its host and port (an IP address; names are not resolved here)."""
        transport = (uri.transport or 'udp').lower()
        if transport != 'udp' or not self.endpoints or ip_literal(uri.host) is None:
            return None
        host = uri.host.strip('[]')
        return self.wrap(self.endpoints[0].flow((host, uri.port or 5060)))

    # -- what the transports report -----------------------------------------------------
    def connection_made(self, conn: StreamConnection) -> None:
        self.relay.connection_made(self.wrap(conn))   # type: ignore[arg-type]

    def connection_lost(self, conn: StreamConnection, exc: BaseException | None) -> None:
        self.relay.connection_lost(self.wrap(conn), exc)   # type: ignore[arg-type]

    def message_received(self, inner: Any, message: SIPMessage) -> None:
        flow = self.wrap(inner)
        if not inner.reliable:
            if message.is_request:
                if self.layer.request_received(inner, message) is None:
                    return                              # a retransmission, answered again
            elif self.layer.response_received(message):
                return                                  # through the client transaction
        self.relay.message_received(flow, message)     # type: ignore[arg-type]

    def deliver(self, flow: BridgedFlow, response: SIPMessage) -> None:
        self.relay.message_received(flow, response)    # type: ignore[arg-type]

    async def close(self) -> None:
        self.layer.close()
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
