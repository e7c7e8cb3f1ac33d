"""Next hops: where a request goes that no binding of serve's takes (RFC 3261 §16.5-16.6).

Static routes by domain (``--route DOMAIN=URI``, ``*`` for every domain not local),
the route of unregistered users of a local domain (``--route-unregistered``), loop
detection by the branch's loop key (§16.3 step 4), and the flows to the hops: a
WebSocket connection serve opens (kept, reopened when closed), or the bridge's UDP,
TCP and TLS.
"""
from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable, Iterable
from typing import Any

from ..core.codec import SIPMessage
from ..core.grammar import MAGIC_COOKIE, SIP_SCHEMES
from ..core.sipuri import NameAddr, SipURI
from ..core.transaction import loop_key
from ..errors import AiosipWSError, ConfigurationError, SIPParseError
from ..options import ClientOptions
from ..transport.throttle import LogThrottle
from ..transport.websocket import ConnectionHandler, WSConnection, open_connection
from .bridge import NetworkSide, hop_transport
from .context import Context
from .flow import Flow
from .fork import Forker
from .registrar import Binding

__all__ = ['Hops', 'hop_uri', 'reachable_at_contact']

logger = logging.getLogger(__name__)
peer_log = LogThrottle(logger)

#: a branch carrying a loop key (Context.new_branch): the cookie, 16 hex digits and a dot
_LOOP_MARKED = re.compile(re.escape(MAGIC_COOKIE) + r'[0-9a-f]{16}\.')


def hop_uri(text: str, what: str) -> SipURI:
    """A next hop given on the command line: a SIP URI of an address or name, over UDP
    (the default), TCP or TLS (``sips:`` or ``;transport=tls``)."""
    try:
        uri = SipURI.parse(text)
        if uri.scheme not in SIP_SCHEMES:
            raise SIPParseError('the scheme is %s' % uri.scheme)
    except SIPParseError as exc:
        raise ConfigurationError('%s%s is not a SIP URI (%s); write sip:HOST[:PORT]'
                                 '[;transport=tcp]' % (what, text, exc)) from None
    transport = hop_transport(uri)
    if transport not in ('udp', 'tcp', 'tls', 'ws', 'wss'):
        raise ConfigurationError('%s%s: a next hop goes over udp, tcp, tls, ws or wss, not %s'
                                 % (what, text, transport))
    return uri


def reachable_at_contact(binding: Binding) -> bool:
    """A binding made over TCP or TLS without Outbound (no ``ob``, no ``reg-id``): when its
    connection goes, it stays until it expires and is reached at its Contact."""
    return (binding.connection.transport_name in ('tcp', 'tls')
            and not binding.reg_id and not binding.uri.has_param('ob'))


class Hops:
    """See the module."""

    def __init__(self, ctx: Context, forker: Forker, handler: ConnectionHandler, *,
                 next_hops: dict[str, str] | None = None, route_unregistered: str | None = None,
                 domains: Iterable[str] = (), upstream: SipURI | None = None) -> None:
        self.ctx = ctx
        self.forker = forker
        #: what serve's own WebSocket connections to next hops report to
        self.handler = handler
        #: static next hops (``--route DOMAIN=URI``, ``*`` for every domain not local)
        self.next_hops = {domain.lower(): hop_uri(uri, '--route %s=' % domain)
                          for domain, uri in (next_hops or {}).items()}
        #: where requests for unregistered users of a local domain go (else 404)
        self.route_unregistered = (hop_uri(route_unregistered, '--route-unregistered')
                                   if route_unregistered else None)
        #: the local domains (``--domain``): the others may be routed to a next hop
        self.domains = {domain.lower() for domain in domains}
        #: an edge sends every request it does not route itself here (its registrar)
        self.upstream = upstream
        #: the UDP, TCP and TLS side, once serve listens there
        self.bridge: NetworkSide | None = None
        #: the TLS context of the ``wss`` connections serve opens (None: the default one)
        self.client_ssl: ssl.SSLContext | None = None
        #: WebSocket connections serve opened to next hops, by URL
        self._ws_hops: dict[str, WSConnection] = {}
        self._ws_connecting: dict[str, asyncio.Future[WSConnection]] = {}
        if '*' in self.next_hops and not self.domains:
            raise ConfigurationError('--route *=URI needs --domain: without local domains '
                                     'every request would leave serve')
        ctx.loop_detection = bool(self.next_hops or self.route_unregistered)
        forker.unregistered = self._unregistered if self.route_unregistered else None
        forker.reconnect = self._reconnect

    @property
    def active(self) -> bool:
        """Whether any request may leave for a next hop."""
        return bool(self.next_hops or self.route_unregistered or self.upstream)

    def owns_via_host(self, host: str) -> bool:
        """Whether ``host`` is the sent-by of a WebSocket connection serve opened."""
        return any(conn.via_host.lower() == host for conn in self._ws_hops.values())

    def close(self) -> None:
        for pending in list(self._ws_connecting.values()):
            pending.cancel()

    # -- the route stage ------------------------------------------------------------------
    def route(self, flow: Flow, request: SIPMessage, target: SipURI, max_forwards: int) -> bool:
        """Send ``request`` to its next hop, if one takes it (True: taken or answered)."""
        if self.looped(request):                         # RFC 3261 §16.3 step 4
            self.ctx.reply(flow, request, 482)
            return True
        hop = self.next_hop_for(target)
        if hop is None:
            return False
        ready = self.bridge.next_hop_now(hop) if self.bridge is not None and \
            (hop.transport or '').lower() not in ('ws', 'wss') else None
        if ready is not None:                            # no wait: no task either
            self.relay_to(flow, request, hop, ready, max_forwards)
            return True
        self.ctx.spawn(self.to_hop(flow, request, hop, max_forwards))
        return True

    def next_hop_for(self, target: SipURI) -> SipURI | None:
        domain = target.host.lower()
        hop = self.next_hops.get(domain)
        if hop is None and self.domains and domain not in self.domains:
            hop = self.next_hops.get('*')
        if hop is None and self.upstream is not None:
            hop = self.upstream                          # an edge sends the rest upstream
        return hop

    @staticmethod
    def looped(request: SIPMessage) -> bool:
        """Whether a Via of ours carries this request's loop key (we sent it before, and
        nothing on the way changed its Request-URI: a loop, not a spiral)."""
        if not any(_LOOP_MARKED.search(value) for value in request.get_all('Via')):
            return False                        # no Via carries a loop key: nothing to hash
        marker = MAGIC_COOKIE + loop_key(request) + '.'
        return any((via.branch or '').startswith(marker) for via in request.vias)

    def _unregistered(self, flow: Flow, request: SIPMessage, max_forwards: int) -> bool:
        assert self.route_unregistered is not None
        self.ctx.spawn(self.to_hop(flow, request, self.route_unregistered, max_forwards))
        return True

    async def to_hop(self, flow: Flow, request: SIPMessage, hop: SipURI, max_forwards: int, *,
                     what: str = 'the next hop',
                     prepare: Callable[[Any], None] | None = None) -> None:
        """Relay ``request`` (its Request-URI kept) to the next hop ``hop``; ``prepare``
        sees the flow to it first (an edge writes its Path with the flow's address)."""
        try:
            hop_flow = await self.hop_flow(hop)
        except (AiosipWSError, OSError) as exc:
            peer_log.warning('%s unreachable' % what, '%s %s is unreachable: %s', what, hop, exc)
            self.ctx.busy(flow, request, '%s is unreachable' % what)
            return
        if prepare is not None:
            prepare(hop_flow)
        self.relay_to(flow, request, hop, hop_flow, max_forwards)

    def relay_to(self, flow: Flow, request: SIPMessage, hop: SipURI, hop_flow: Flow,
                 max_forwards: int) -> None:
        """Relay ``request`` (its Request-URI kept) over ``hop_flow``, the flow to ``hop``."""
        try:
            contact = NameAddr(uri=SipURI.parse(request.uri or ''))
        except SIPParseError as exc:
            self.ctx.bad_request(flow, request, exc)
            return
        hop_binding = Binding(aor='', contact=contact, connection=hop_flow,
                              expires_at=float('inf'), call_id='', cseq=0)
        self.forker.relay(flow, request, [hop_binding], max_forwards)

    async def hop_flow(self, hop: SipURI) -> Flow:
        transport = (hop.transport or '').lower()
        if transport in ('ws', 'wss'):
            return await self._ws_hop(hop, transport)
        if self.bridge is None:
            raise ConfigurationError('a next hop over UDP, TCP or TLS needs a --listen udp://, '
                                     'tcp:// or tls:// of serve')
        return await self.bridge.next_hop(hop)

    async def _ws_hop(self, hop: SipURI, scheme: str) -> WSConnection:
        """A WebSocket connection serve opens to a next hop (kept, reopened when closed)."""
        url = '%s://%s:%d/' % (scheme, hop.host, hop.port or (443 if scheme == 'wss' else 80))
        conn = self._ws_hops.get(url)
        if conn is not None and conn.is_open:
            return conn
        pending = self._ws_connecting.get(url)
        if pending is None:
            pending = self._ws_connecting[url] = asyncio.ensure_future(
                open_connection(url, self.handler, ClientOptions(ssl=self.client_ssl)))
            pending.add_done_callback(lambda _: self._ws_connecting.pop(url, None))
        conn = self._ws_hops[url] = await asyncio.shield(pending)
        return conn

    # -- bindings reached at their Contact -------------------------------------------------
    def _reconnect(self, flow: Flow, request: SIPMessage, bindings: list[Binding],
                   max_forwards: int) -> bool:
        if self.bridge is None or not any(
                not b.connection.is_open and reachable_at_contact(b) for b in bindings):
            return False
        self.ctx.spawn(self._reconnect_then_relay(flow, request, bindings, max_forwards))
        return True

    async def _reconnect_then_relay(self, flow: Flow, request: SIPMessage,
                                    bindings: list[Binding], max_forwards: int) -> None:
        """Bindings made over TCP or TLS without Outbound whose connection is gone are
        reached at their Contact (RFC 3261 §18.1.1): a new connection there first."""
        assert self.bridge is not None
        for binding in bindings:
            if binding.connection.is_open or not reachable_at_contact(binding):
                continue
            try:
                binding.connection = await self.bridge.next_hop(binding.uri)
            except (AiosipWSError, OSError, asyncio.TimeoutError) as exc:
                logger.info('cannot reach %s at its Contact %s: %s', binding.aor, binding.uri,
                            exc)
        self.forker.relay(flow, request, bindings, max_forwards, reconnect=False)
