"""``aiosip-ws serve``: a WebSocket registrar and relay on the aiosip-ws core and transport.

The server handles codec messages (:class:`~aiosip_ws.core.codec.SIPMessage`) straight
from :mod:`aiosip_ws.transport.websocket`; it builds no aiosip object:

* ``REGISTER`` goes to the in-memory :class:`~aiosip_ws.serve.registrar.Registrar`;
  the 200 OK lists the AOR's current Contacts with their remaining expiry;
* ``OPTIONS`` to the server itself (a Request-URI without a user part) gets 200;
* any other out-of-dialog request (MESSAGE, OPTIONS, SUBSCRIBE, ...) to a
  registered AOR is relayed, as a stateful proxy does (our Via on top,
  Max-Forwards decremented, Request-URI set to the binding's Contact), over
  that client's own WebSocket connection, and its final response is relayed
  back over the connection the request came in on;
* an unregistered AOR gets 404, an expired hop count 483, a method we do not
  serve 405, an option tag we do not support 420 (RFC 3261 §8.2.2.3).

An INVITE is relayed the same way, record-routed; its provisional responses
are relayed as they come, a CANCEL follows it, and the server ACKs a non-2xx
final response itself.  In-dialog requests (ACK, BYE, re-INVITE, ...) are
routed by the connection behind their Request-URI: a WebSocket client's
Contact host is a random ``.invalid`` name, learnt from the Contacts that
cross each connection, never resolved (RFC 7118 Appendix B.1).

Everything a connection owns (its bindings, its Contact hosts, the client
transactions sent over it) is indexed by that connection, so a closing
connection costs what it owns, not what the server holds.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..core.codec import SIPMessage, invite_companion, make_response, unsupported_option_tags
from ..core.flowtoken import FlowTokenError, FlowTokens
from ..core.grammar import (
    DEFAULT_MAX_FORWARDS,
    MAGIC_COOKIE,
    SIP_SCHEMES,
    is_net_url,
    parse_max_forwards,
)
from ..core.sipuri import NameAddr, SipURI, split_header_values
from ..core.transaction import TIMER_B, cancel_key, loop_key, new_branch, new_tag
from ..errors import (
    AiosipWSError,
    ConfigurationError,
    ConnectionLost,
    SIPParseError,
    TransactionTimeout,
)
from ..options import ClientOptions, RelayLimits, ServerOptions
from ..transport.throttle import LogThrottle
from ..transport.websocket import WSConnection, WSListener, listen, open_connection, shut_down
from .auth import DigestAuthenticator, Identity, aor_key
from .bridge import NetworkSide, hop_transport
from .observe import AdminEndpoints, Metrics
from .registrar import Binding, RegisterResult, Registrar

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ['RelayServer', 'ALLOWED_METHODS', 'SERVER_HEADER']

logger = logging.getLogger(__name__)
#: what clients cause (stray responses...): a few lines per kind and interval, then a summary
peer_log = LogThrottle(logger)

#: Methods the relay answers or relays (the Allow header of its responses).
ALLOWED_METHODS = ('REGISTER', 'OPTIONS', 'MESSAGE', 'SUBSCRIBE', 'NOTIFY', 'PUBLISH', 'INFO',
                   'REFER', 'INVITE')
#: the Server header of the responses serve builds itself
SERVER_HEADER = 'aiosip-ws/%s' % __version__
#: option tags a request may Require (RFC 3261 §8.2.2.3); others get 420
SUPPORTED_EXTENSIONS = frozenset({'outbound', 'path'})
#: out-of-dialog requests whose Contact becomes a remote target of a dialog
_LEARN_FROM = frozenset({'INVITE', 'SUBSCRIBE', 'REFER'})

#: a route: ``route(connection, request)``, plain or a coroutine function
Route = Callable[[WSConnection, SIPMessage], 'Awaitable[None] | None']


class _Pending:
    """A request serve sent and waits on (a client transaction of the proxy)."""

    __slots__ = ('future', 'conn', 'timer', 'method', 'on_provisional')

    def __init__(self, future: asyncio.Future[SIPMessage], conn: WSConnection,
                 timer: asyncio.TimerHandle, method: str,
                 on_provisional: Callable[[SIPMessage], None] | None) -> None:
        self.future, self.conn, self.timer = future, conn, timer
        self.method, self.on_provisional = method, on_provisional


class RelayServer:
    """Registrar + relay; ``await start(url, ...)``, then ``await close()``."""

    def __init__(self, *, server_options: ServerOptions | None = None,
                 registrar: Registrar | None = None, limits: RelayLimits | None = None,
                 auth: DigestAuthenticator | None = None, timer_c: float = 180.0,
                 admin_allow: Iterable[str] = ('127.0.0.0/8', '::1/128'),
                 redis_url: str | None = None, node_id: str | None = None,
                 advertise: str | None = None, next_hops: dict[str, str] | None = None,
                 route_unregistered: str | None = None, domains: Iterable[str] = (),
                 edge_registrar: str | None = None, flow_secret: bytes | None = None) -> None:
        #: Prometheus metrics of this server (``GET /metrics``)
        self.metrics = Metrics(self)
        #: ``GET /healthz``, ``/metrics``, ``/registrations`` on the listeners' port
        self.admin = AdminEndpoints(self, admin_allow,
                                    healthy=lambda: not (self._closing or self.draining))
        #: True once :meth:`drain` began: new handshakes get 503, /healthz 503
        self.draining = False
        options = server_options or ServerOptions()
        if options.http_handler is None:
            options = dataclasses.replace(options, http_handler=self.admin)
        if options.refuse_handshakes is None:
            options = dataclasses.replace(options, refuse_handshakes=self._refusing)
        self.server_options = options
        self.server_options.validate()
        #: what one client may cost: pending-transaction caps and the request rate
        self.limits = limits or RelayLimits()
        self.limits.validate()
        self.registrar = registrar if registrar is not None else Registrar()   # (empty is falsy)
        #: Digest authentication of REGISTERs and of requests from local domains, or None
        self.auth = auth
        #: RFC 3261 §16.6 Timer C: how long an INVITE branch may ring (more than 3 min)
        self.timer_c = timer_c
        self.listeners: list[WSListener] = []
        #: every open connection
        self.connections: set[WSConnection] = set()
        #: method -> route; replace an entry to change how a method is handled
        self.routes: dict[str, Route] = {method: self._on_request for method in ALLOWED_METHODS}
        self.routes['REGISTER'] = self._on_register
        if edge_registrar:
            self.routes['REGISTER'] = self._edge_register
        self.routes['PUBLISH'] = self._on_publish
        #: `.invalid` Contact host -> the connection behind it (in-dialog routing)
        self._contacts: dict[str, WSConnection] = {}
        #: INVITEs being relayed, for CANCEL: (Call-ID, CSeq, branch) -> their fork
        self._invites: dict[tuple[str, int, str], _Fork] = {}
        #: our client transactions by the branch of the Via we added
        self._pending: dict[str, _Pending] = {}
        #: INVITE branches to UDP peers that were answered 2xx, for 64*T1 (RFC 6026 §7.2:
        #: the UAS's retransmissions of its 2xx are forwarded upstream too)
        self._accepted: dict[str, WSConnection] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        #: the nodes sharing bindings and forwarding through Redis (``--redis``), or None
        self.cluster: Cluster | None = None
        #: the UDP, TCP and TLS listeners (``--listen udp://...``), made on first use
        self.bridge: NetworkSide | None = None
        #: the host[:port] serve writes in Via and Record-Route on UDP/TCP/TLS (--advertise)
        self.advertise = advertise
        #: where serve listens, as Route entries name it (set by start())
        self._own_hostports: set[str] = set()
        #: static next hops (``--route DOMAIN=URI``, ``*`` for every domain not local)
        self.next_hops = {domain.lower(): _hop_uri(uri, '--route %s=' % domain)
                          for domain, uri in (next_hops or {}).items()}
        #: where requests for unregistered users of a local domain go (else 404)
        self.route_unregistered = (_hop_uri(route_unregistered, '--route-unregistered')
                                   if route_unregistered else None)
        #: the local domains (``--domain``): the others may be routed to a next hop
        self.domains = {domain.lower() for domain in domains}
        #: RFC 5626 edge mode (``--registrar``): REGISTERs go upstream with a Path naming
        #: the client's connection by a flow token; serve keeps no bindings
        self.edge_registrar = (_hop_uri(edge_registrar, '--registrar ')
                               if edge_registrar else None)
        self.flow_tokens = FlowTokens(flow_secret) if edge_registrar else None
        self._flows: dict[int, WSConnection] = {}
        self._flow_ids = itertools.count(1)
        #: WebSocket connections serve opened to next hops, by URL
        self._ws_hops: dict[str, WSConnection] = {}
        self._ws_connecting: dict[str, asyncio.Future[WSConnection]] = {}
        if '*' in self.next_hops and not self.domains:
            raise ConfigurationError('--route *=URI needs --domain: without local domains '
                                     'every request would leave serve')
        if redis_url is not None:
            from .cluster import Cluster
            self.cluster = Cluster(self, redis_url, node_id or socket.gethostname().split('.')[0])

    # -- life cycle -------------------------------------------------------------------
    async def start(self, *urls: str) -> list[WSListener]:
        try:
            if self.cluster is not None and not self.listeners:
                await self.cluster.start()
            if self.metrics.multiprocess and not self.listeners:
                self.spawn(self._update_gauges())
            bound: list[Any] = []
            for url in urls:
                if is_net_url(url):
                    if self.bridge is None:
                        self.bridge = NetworkSide(self, ssl_context=self.server_options.ssl,
                                                  advertise=self.advertise)
                    bound.append(await self.bridge.listen(url))
                else:
                    listener = await listen(url, self, self._options_for(url))
                    self.listeners.append(listener)
                    bound.append(listener)
        except BaseException:
            await self.close()
            raise
        self._own_hostports = self._listening_hostports()     # once, not per request
        return bound

    async def _update_gauges(self) -> None:
        """``serve --workers``: this worker's gauges, once a second, for the others' scrapes."""
        while True:
            self.metrics.update_gauges()
            await asyncio.sleep(1.0)

    def _options_for(self, url: str) -> ServerOptions:
        """The server options with TLS only where the URL is ``wss://``."""
        if url.lower().startswith('wss:') or self.server_options.ssl is None:
            return self.server_options
        return dataclasses.replace(self.server_options, ssl=None)

    def _refusing(self) -> str | None:
        return 'the server is draining' if self.draining else None

    async def drain(self, window: float, code: int = 1001,
                    reason: str = 'server draining') -> None:
        """For a rolling restart: refuse new handshakes (HTTP 503 with Retry-After), turn
        ``/healthz`` to 503, and close the clients spread evenly over ``window`` seconds
        (in random order), so that they reconnect elsewhere a few at a time.  Returns
        when every client is gone; the listeners stay up (for /healthz) until close()."""
        self.draining = True
        logger.info('draining: closing %d connection(s) over %g s', len(self.connections),
                    window)
        await self.close_spread(window, code, reason)

    async def close_spread(self, window: float, code: int = 1001,
                           reason: str = 'server shutting down') -> None:
        """Close the current connections spread evenly over ``window`` seconds."""
        victims = list(self.connections)
        random.shuffle(victims)
        if not victims:
            return
        step = window / len(victims) if window > 0 else 0.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        closing = []
        for index, conn in enumerate(victims):
            delay = started + index * step - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if conn.is_open:
                closing.append(asyncio.ensure_future(conn.close(code, reason)))
        await asyncio.gather(*closing, return_exceptions=True)

    async def close(self, code: int = 1001, reason: str = 'server shutting down', *,
                    spread: float = 0.0) -> None:
        """Stop listening; every client gets ``code`` (1001, going away), spread over
        ``spread`` seconds when it is positive; end every task."""
        if spread > 0 and self.connections:
            self.draining = True
            await self.close_spread(spread, code, reason)
        self._closing = True
        for pending in list(self._ws_connecting.values()):
            pending.cancel()
        await shut_down(self.listeners, self.connections, self._tasks, code, reason)
        if self.bridge is not None:
            await self.bridge.close()
        for branch in list(self._pending):
            self._finish(branch, ConnectionLost('the server closed'))
        if self.cluster is not None:
            await self.cluster.close()

    async def __aenter__(self) -> RelayServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coroutine`` in a task that :meth:`close` cancels if it is still running."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- ConnectionHandler ----------------------------------------------------------------
    def connection_made(self, conn: WSConnection) -> None:
        self.metrics.opened.inc()
        self.connections.add(conn)
        if self.cluster is not None:
            self.cluster.connection_made(conn)
        conn.state['contact_hosts'] = set()
        conn.state['pending'] = set()
        if self.flow_tokens is not None:
            flow_id = conn.state['flow_id'] = next(self._flow_ids)
            self._flows[flow_id] = conn
        identity = getattr(conn, 'identity', None)
        if isinstance(identity, Identity) and identity.expires_at is not None:
            # the connection lives as long as the token that opened it
            delay = max(0.0, identity.expires_at - time.time())
            conn.state['expiry'] = asyncio.get_running_loop().call_later(
                delay, self._token_expired, conn)

    def flow_made(self, flow: Any) -> None:
        """A UDP peer seen for the first time: the per-connection state, without a
        connection to count or close (what it registers expires by time)."""
        flow.state['contact_hosts'] = set()
        flow.state['pending'] = set()

    def _token_expired(self, conn: WSConnection) -> None:
        logger.info('%r: its token expired: closing with 1008', conn)
        self.spawn(conn.close(1008, 'token expired'))

    def handshake_refused(self, status: int) -> None:
        self.metrics.handshake_refused(status)

    def message_dropped(self, conn: WSConnection, count: int) -> None:
        self.metrics.dropped.inc(count)

    def connection_lost(self, conn: WSConnection, exc: BaseException | None) -> None:
        self.metrics.connection_closed(conn.close_code)
        self.connections.discard(conn)
        if self.cluster is not None:             # first: it reads the bindings and hosts
            self.cluster.connection_lost(conn)
        expiry = conn.state.pop('expiry', None)
        if expiry is not None:
            expiry.cancel()
        self._flows.pop(conn.state.get('flow_id', 0), None)
        for host in conn.state.pop('contact_hosts', ()):
            if self._contacts.get(host) is conn:
                del self._contacts[host]
        for branch in list(conn.state.pop('pending', ())):
            self._finish(branch, ConnectionLost(
                'the WebSocket connection %r closed (code %s) before the final response'
                % (conn, conn.close_code)))
        keep = None
        if getattr(conn, 'transport_name', 'ws') in ('tcp', 'tls'):
            keep = _reachable_at_contact           # TCP without Outbound: by time only
        removed = self.registrar.remove_connection(conn, keep)
        if removed:
            logger.info('%r closed: removed %d binding(s)', conn, removed)

    def message_received(self, conn: WSConnection, message: SIPMessage) -> None:
        if message.is_request:
            self.metrics.request(message.method)
            self._request_received(conn, message)
        else:
            self._response_received(conn, message)

    # -- requests -------------------------------------------------------------------------
    def _request_received(self, conn: WSConnection, message: SIPMessage) -> None:
        method = message.method
        if method not in ('ACK', 'CANCEL') and not self._within_rate(conn, message):
            return
        if self.flow_tokens is not None:
            token = _route_token(message)
            if token is not None:                      # from upstream, for one of our clients
                self._edge_inbound(conn, message, token)
                return
        if method == 'CANCEL':
            self._cancel(conn, message)
            return
        if method == 'ACK' or 'tag=' in (message.get('To') or ''):
            self._in_dialog(conn, message)
            return
        if method in _LEARN_FROM:
            self._learn_contact(conn, message)
            self._learn_record_route(conn, message)
        self._route(conn, message)

    def _route(self, conn: WSConnection, message: SIPMessage) -> None:
        """Hand an out-of-dialog request to the route of its method."""
        method = message.method
        unsupported = unsupported_option_tags(message, SUPPORTED_EXTENSIONS)
        if unsupported:
            self.reply(conn, message, 420, headers=[('Unsupported', ', '.join(unsupported))])
            return
        route = self.routes.get(method or '')
        if route is None:
            self.reply(conn, message, 405, headers=[('Allow', ', '.join(ALLOWED_METHODS))])
            return
        conn.state['identity'] = None
        token_identity = getattr(conn, 'identity', None)
        if isinstance(token_identity, Identity):          # bound by its handshake's token
            if not self._owned_by(conn, message, token_identity):
                return
            conn.state['identity'] = token_identity
        elif self.auth is not None and self.auth.needs_challenge(message, conn.remote_addr[0]):
            identity = self._authenticate(conn, message)
            if identity is None:
                return
            conn.state['identity'] = identity     # for the route, read before it awaits
            claim = conn.state.pop('nc_claim', None)
            if claim is not None and self.cluster is not None:
                self.spawn(self._route_after_shared_nc(conn, message, route, identity, claim))
                return
        self._run(conn, message, route)

    async def _route_after_shared_nc(self, conn: WSConnection, message: SIPMessage, route: Route,
                                     identity: Identity, claim: tuple[str, int]) -> None:
        """In a cluster, the nonce count is checked against every node's before the
        request goes on (a replay to another node is refused as one here would be)."""
        assert self.cluster is not None and self.auth is not None
        if not await self.cluster.claim_nonce_count(*claim, lifetime=self.auth.nonce_lifetime):
            self.metrics.auth_failures.inc()
            outcome = self.auth.replayed(message, conn.state, identity.user or '')
            self.reply(conn, message, outcome.status, outcome.reason, headers=outcome.headers)
            return
        conn.state['identity'] = identity
        self._run(conn, message, route)

    def _run(self, conn: WSConnection, message: SIPMessage, route: Route) -> None:
        try:
            outcome = route(conn, message)
        except Exception:  # noqa: BLE001 - one request must not take the server down
            logger.exception('%r: the %s route failed', conn, message.method)
            self.reply(conn, message, 500)
            return
        if outcome is not None and inspect.isawaitable(outcome):
            self.spawn(self._run_route(conn, message, outcome))

    async def _run_route(self, conn: WSConnection, message: SIPMessage,
                         outcome: Awaitable[None]) -> None:
        try:
            await outcome
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            logger.exception('%r: the %s route failed', conn, message.method)
            self.reply(conn, message, 500)

    def _within_rate(self, conn: WSConnection, request: SIPMessage) -> bool:
        """Token bucket per connection (``max_requests_per_second``, ``burst``): over it a
        request gets 503; a connection over it for ``rate_limit_grace`` s is closed (1008)."""
        limits = self.limits
        rate = limits.max_requests_per_second
        if rate is None:
            return True
        now = asyncio.get_running_loop().time()
        bucket = conn.state.get('bucket')
        if bucket is None:       # [tokens, last refill, over since, last refusal]
            bucket = conn.state['bucket'] = [float(limits.burst), now, None, 0.0]
        tokens = min(float(limits.burst), bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            if bucket[2] is not None and now - bucket[3] > 1.0:
                bucket[2] = None                      # a whole second without a refusal
            return True
        bucket[0], bucket[3] = tokens, now
        if bucket[2] is None:
            bucket[2] = now
            logger.warning('%r: over %g requests per second: answering 503', conn, rate)
        elif now - bucket[2] > limits.rate_limit_grace:
            if not conn.state.get('rate_closing'):
                conn.state['rate_closing'] = True
                logger.warning('%r: over the request rate for %g s: closing with 1008', conn,
                               limits.rate_limit_grace)
                self.spawn(conn.close(1008, 'request rate limit exceeded'))
            return False
        self.busy(conn, request, 'over %g requests per second' % rate)
        return False

    def reply(self, conn: WSConnection, request: SIPMessage, status: int,
              reason: str | None = None, *, headers: list[tuple[str, str]] | None = None) -> None:
        """Answer ``request`` on ``conn`` (RFC 3261 §8.2.6): Vias, From, To with a tag,
        Call-ID, CSeq, plus ``headers`` and our Server header.  ACKs get no answer."""
        if request.method == 'ACK':
            return
        response = make_response(request, status, reason, to_tag=new_tag(),
                                 headers=list(headers or ()) + [('Server', SERVER_HEADER)])
        if conn.is_open:
            self.metrics.response(status)
            conn.send(response)
        elif not self._closing:         # RFC 3261 §18.2.2: a WebSocket client cannot be reached
            logger.info('dropped %d %s to %s: the WebSocket connection is gone', status,
                        response.reason, request.method)

    def _authenticate(self, conn: WSConnection, request: SIPMessage) -> Identity | None:
        """Digest-check ``request`` (which needs it) and its AOR: the identity, or None
        when it has been answered (401/407 challenge, 403, 400)."""
        assert self.auth is not None
        conn.state.pop('nc_claim', None)
        outcome = self.auth.check(request, conn.state)
        if outcome.nonce is not None:
            conn.state['nc_claim'] = (outcome.nonce, outcome.nc)
        if outcome.failed:
            self.metrics.auth_failures.inc()
        if outcome.identity is None:
            self.reply(conn, request, outcome.status, outcome.reason, headers=outcome.headers)
            return None
        identity = outcome.identity
        if not self._owned_by(conn, request, identity):
            return None
        if request.method != 'REGISTER':      # credentials for our realm end here (§22.3)
            realm = 'realm="%s"' % self.auth.realm
            request.headers = [(k, v) for k, v in request.headers
                               if not (k == 'Proxy-Authorization' and realm in v)]
        return identity

    def _owned_by(self, conn: WSConnection, request: SIPMessage, identity: Identity) -> bool:
        """The AOR a request acts for (REGISTER: To; others: From) belongs to ``identity``;
        if not, it has been answered 403."""
        header = 'To' if request.method == 'REGISTER' else 'From'
        try:
            aor = aor_key(NameAddr.parse(request.get(header) or '').uri)
        except SIPParseError as exc:
            self.reply(conn, request, 400, 'Bad Request (%s)' % exc)
            return False
        if identity.owns(aor):
            return True
        logger.info('%r: %s refused: authenticated as %s, which does not own %s', conn,
                    request.method, identity.user, aor)
        self.reply(conn, request, 403, 'Forbidden (%s is not an address of %s)'
                   % (aor, identity.user))
        return False

    def _on_register(self, conn: WSConnection, request: SIPMessage) -> Awaitable[None] | None:
        hosts = _invalid_hosts(request)
        for host in hosts:
            # A `.invalid` host names one client's connection for in-dialog routing: only
            # an RFC 5626 flow replacement may take it from another live connection.
            owner = self._contacts.get(host)
            if (owner is not None and owner is not conn and owner.is_open
                    and not self.registrar.replaces_flow(request, owner)):
                logger.info('%r: REGISTER refused: Contact host %s belongs to %r', conn, host,
                            owner)
                self.reply(conn, request, 403, 'Forbidden (Contact host %s is in use by '
                           'another connection)' % host)
                return
        identity = conn.state.get('identity')
        # With authentication the user owns the AOR's bindings, whichever connection
        # made them; a trusted peer (user None) is held to its connection like anyone.
        authenticated = isinstance(identity, Identity) and identity.user is not None
        if self.cluster is not None:
            return self._register_shared(conn, request, hosts, authenticated)
        self._registered(conn, request, hosts,
                         self.registrar.register(request, conn, authenticated=authenticated))
        return None

    async def _register_shared(self, conn: WSConnection, request: SIPMessage, hosts: set[str],
                               authenticated: bool) -> None:
        assert self.cluster is not None
        result = await self.cluster.register(request, conn, authenticated=authenticated)
        self._registered(conn, request, hosts, result)

    def _registered(self, conn: WSConnection, request: SIPMessage, hosts: set[str],
                    result: RegisterResult) -> None:
        if result.status == 200:
            for host in hosts:
                self._claim_host(host, conn)
            if logger.isEnabledFor(logging.INFO):
                logger.info('REGISTER %s from %s: %d binding(s)', request.get('To'),
                            conn.remote_addr, len(result.headers))
        self.reply(conn, request, result.status, result.reason, headers=result.headers)

    def _on_publish(self, conn: WSConnection, request: SIPMessage) -> None:
        """PUBLISH is for an event state compositor, not for user agents (RFC 3903 §6):
        without a route that sends it to a presence server, 489 Bad Event."""
        self.reply(conn, request, 489, 'Bad Event (no presence server here)')

    def _on_request(self, conn: WSConnection, request: SIPMessage) -> Awaitable[None] | None:
        try:
            target = NameAddr.parse(request.uri or '').uri
        except SIPParseError as exc:
            self.reply(conn, request, 400, 'Bad Request (%s)' % exc)
            return
        if target.scheme not in SIP_SCHEMES:
            self.reply(conn, request, 416)
            return
        if target.user is None:                                # addressed to the server itself
            if request.method == 'OPTIONS':
                self.reply(conn, request, 200,
                           headers=[('Allow', ', '.join(ALLOWED_METHODS)),
                                    ('Accept', 'application/sdp, text/plain'),
                                    ('Supported', 'path, outbound')])
            else:
                self.reply(conn, request, 404, 'Not Found (no user in the Request-URI)')
            return
        max_forwards = _max_forwards(request)
        if max_forwards is None:
            self.reply(conn, request, 400, 'Bad Request (Max-Forwards must be a number 0-255)')
            return
        if max_forwards == 0:
            self.reply(conn, request, 483)
            return
        if self.next_hops or self.route_unregistered or self.edge_registrar:
            if self._looped(request):                   # RFC 3261 §16.3 step 4
                self.reply(conn, request, 482)
                return None
            hop = self._next_hop_for(target)
            if hop is not None:
                self.spawn(self._to_hop(conn, request, hop, max_forwards))
                return None
        if self.cluster is not None:
            return self._relay_shared(conn, request, target.aor, max_forwards)
        self._relay(conn, request, self.registrar.lookup(target.aor), max_forwards)
        return None

    async def _ws_hop(self, hop: SipURI, scheme: str) -> WSConnection:
        """A WebSocket connection serve opens to a next hop (kept, reopened when closed)."""
        url = '%s://%s:%d/' % (scheme, hop.host, hop.port or (443 if scheme == 'wss' else 80))
        conn = self._ws_hops.get(url)
        if conn is not None and conn.is_open:
            return conn
        pending = self._ws_connecting.get(url)
        if pending is None:
            pending = self._ws_connecting[url] = asyncio.ensure_future(
                open_connection(url, self, ClientOptions()))
            pending.add_done_callback(lambda _: self._ws_connecting.pop(url, None))
        conn = self._ws_hops[url] = await asyncio.shield(pending)
        return conn

    def _next_hop_for(self, target: SipURI) -> SipURI | None:
        domain = target.host.lower()
        hop = self.next_hops.get(domain)
        if hop is None and self.domains and domain not in self.domains:
            hop = self.next_hops.get('*')
        if hop is None and self.edge_registrar is not None:
            hop = self.edge_registrar                   # an edge sends the rest upstream
        return hop

    # -- RFC 5626 edge mode ----------------------------------------------------------
    def _edge_register(self, conn: WSConnection, request: SIPMessage) -> Awaitable[None]:
        assert self.flow_tokens is not None
        return self._edge_forward_register(conn, request,
                                           self.flow_tokens.issue(conn.state['flow_id']))

    async def _edge_forward_register(self, conn: WSConnection, request: SIPMessage,
                                     token: str) -> None:
        """Relay a REGISTER to the registrar with our Path (RFC 3327, RFC 5626 §5.1):
        ``<sip:TOKEN@EDGE;lr>``, ``;ob`` when the Contact asks for Outbound (``reg-id``)."""
        assert self.edge_registrar is not None
        max_forwards = _max_forwards(request)
        if max_forwards is None or max_forwards == 0:
            self.reply(conn, request, 400 if max_forwards is None else 483)
            return
        outbound = any('reg-id=' in value.replace(' ', '') for value in request.get_all('Contact'))

        def add_path(flow: Any) -> None:
            path = '<sip:%s@%s;lr%s>' % (token, flow.via_host, ';ob' if outbound else '')
            first = next((i for i, (k, _) in enumerate(request.headers) if k == 'Path'), None)
            request.headers.insert(first if first is not None else len(request.headers),
                                   ('Path', path))

        await self._to_hop(conn, request, self.edge_registrar, max_forwards,
                           what='the registrar', prepare=add_path)

    def _edge_inbound(self, conn: WSConnection, message: SIPMessage, token: str) -> None:
        """A request whose top Route is one of our flow tokens: over that client's
        connection (403 for a forged token, 430 when the flow is gone, RFC 5626 §5.3)."""
        assert self.flow_tokens is not None
        try:
            flow_id = self.flow_tokens.check(token)
        except FlowTokenError:
            peer_log.warning('bad flow tokens', '%r: a request with a forged flow token', conn)
            self.reply(conn, message, 403, 'Forbidden (bad flow token)')
            return
        peer = self._flows.get(flow_id) if flow_id is not None else None
        if peer is None or not peer.is_open:
            self.reply(conn, message, 430)
            return
        try:
            to_tag = NameAddr.parse(message.get('To') or '').tag
        except SIPParseError as exc:
            self.reply(conn, message, 400, 'Bad Request (%s)' % exc)
            return
        record = None
        if to_tag is None and message.method in _LEARN_FROM:
            # both sides, the upstream one with the token: the dialog's requests come back
            record = [self.record_route(peer), self.record_route(conn, token)]
        self._forward_in_dialog(conn, message, peer, to_tag, record_route=record)

    def _looped(self, request: SIPMessage) -> bool:
        """Whether a Via of ours carries this request's loop key (we sent it before, and
        nothing on the way changed its Request-URI: a loop, not a spiral)."""
        marker = MAGIC_COOKIE + loop_key(request) + '.'
        return any((via.branch or '').startswith(marker) for via in request.vias)

    async def _to_hop(self, conn: WSConnection, request: SIPMessage, hop: SipURI,
                      max_forwards: int, *, what: str = 'the next hop',
                      prepare: Callable[[Any], None] | None = None) -> None:
        """Relay ``request`` (its Request-URI kept) to the next hop ``hop``; ``prepare``
        sees the flow to it first (an edge writes its Path with the flow's address)."""
        try:
            flow = await self._hop_flow(hop)
        except (AiosipWSError, OSError) as exc:
            peer_log.warning('%s unreachable' % what, '%s %s is unreachable: %s', what, hop, exc)
            self.busy(conn, request, '%s is unreachable' % what)
            return
        try:
            contact = NameAddr(uri=SipURI.parse(request.uri or ''))
        except SIPParseError as exc:
            self.reply(conn, request, 400, 'Bad Request (%s)' % exc)
            return
        if prepare is not None:
            prepare(flow)
        hop_binding = Binding(aor='', contact=contact, connection=flow,
                              expires_at=float('inf'), call_id='', cseq=0)
        self._relay(conn, request, [hop_binding], max_forwards)

    async def _hop_flow(self, hop: SipURI) -> Any:
        transport = (hop.transport or '').lower()
        if transport in ('ws', 'wss'):
            return await self._ws_hop(hop, transport)
        if self.bridge is None:
            raise ConfigurationError('a next hop over UDP, TCP or TLS needs a --listen udp://, '
                                     'tcp:// or tls:// of serve')
        return await self.bridge.next_hop(hop)

    async def _relay_shared(self, conn: WSConnection, request: SIPMessage, aor: str,
                            max_forwards: int) -> None:
        assert self.cluster is not None
        bindings = await self.cluster.lookup(aor)
        if bindings is None:                     # Redis unreachable: this node's own only
            bindings = self.registrar.lookup(aor)
            if not bindings:
                self.busy(conn, request, 'the location service is unreachable')
                return
        self._relay(conn, request, bindings, max_forwards)

    def _relay(self, conn: WSConnection, request: SIPMessage, bindings: list[Binding],
               max_forwards: int, *, reconnect: bool = True) -> None:
        if not bindings:
            if self.route_unregistered is not None:
                self.spawn(self._to_hop(conn, request, self.route_unregistered, max_forwards))
                return
            self.reply(conn, request, 404)
            return
        if reconnect and self.bridge is not None and any(
                not b.connection.is_open and _reachable_at_contact(b) for b in bindings):
            self.spawn(self._reconnect_then_relay(conn, request, bindings, max_forwards))
            return
        busy = self._over_pending_caps(conn, bindings[0].connection)
        if busy:
            self.busy(conn, request, busy)
            return
        _Fork(self, conn, request, bindings, max_forwards - 1).start()

    async def _reconnect_then_relay(self, conn: WSConnection, request: SIPMessage,
                                    bindings: list[Binding], max_forwards: int) -> None:
        """Bindings made over TCP or TLS without Outbound whose connection is gone are
        reached at their Contact (RFC 3261 §18.1.1): a new connection there first."""
        assert self.bridge is not None
        for binding in bindings:
            if binding.connection.is_open or not _reachable_at_contact(binding):
                continue
            try:
                binding.connection = await self.bridge.next_hop(binding.uri)
            except (AiosipWSError, OSError, asyncio.TimeoutError) as exc:
                logger.info('cannot reach %s at its Contact %s: %s', binding.aor, binding.uri,
                            exc)
        self._relay(conn, request, bindings, max_forwards, reconnect=False)

    def _over_pending_caps(self, origin: WSConnection, peer: WSConnection) -> str | None:
        """Why a new relayed request would exceed a pending-transaction cap, or None."""
        limits = self.limits
        if len(self._pending) >= limits.max_pending:
            return 'too many requests in progress (%d)' % limits.max_pending
        if origin.state.get('relaying', 0) >= limits.max_pending_per_connection:
            return ('too many requests in progress from this connection (%d)'
                    % limits.max_pending_per_connection)
        if len(peer.state.get('pending', ())) >= limits.max_pending_per_connection:
            return 'the callee has too many requests unanswered'
        return None

    def busy(self, conn: WSConnection, request: SIPMessage, why: str) -> None:
        """503 with Retry-After: serve itself is out of room for this request."""
        self.reply(conn, request, 503, 'Service Unavailable (%s)' % why,
                   headers=[('Retry-After', str(self.limits.retry_after))])

    def relay_final(self, origin: WSConnection, peer: WSConnection, request: SIPMessage,
                    response: SIPMessage) -> None:
        """Send a downstream final response back upstream, our Via removed; a 503 becomes
        500 (RFC 3261 §16.7: a downstream overload is not ours to advertise)."""
        self._learn_contact(peer, response)
        response.headers = _without_top_via(response.headers)
        if response.status == 503:
            response.status, response.reason = 500, 'Server Internal Error (downstream 503)'
            response.remove('Retry-After')
        if origin.is_open:
            self.metrics.response(response.status)
            origin.send(response)
        elif not self._closing:
            logger.info('dropped the %d response to %s: the requester left', response.status,
                        request.method)

    def _relay_provisional(self, origin: WSConnection, response: SIPMessage) -> None:
        if response.status == 100 or not origin.is_open:
            return                                     # 100 Trying is hop-by-hop
        relayed = SIPMessage(status=response.status, reason=response.reason,
                             headers=_without_top_via(response.headers), body=response.body)
        self.metrics.response(response.status)
        origin.send(relayed)

    # -- in-dialog requests, ACK and CANCEL ---------------------------------------------
    def _learn_contact(self, conn: WSConnection, message: SIPMessage) -> None:
        """Remember which connection a `.invalid` Contact host lives behind (RFC 7118 B.1)."""
        for value in message.get_all('Contact')[:1]:
            try:
                host = NameAddr.parse(value).uri.host.lower()
            except SIPParseError:
                return
            if host.endswith('.invalid'):
                owner = self._contacts.get(host)
                if owner is None or owner is conn or not owner.is_open:
                    self._claim_host(host, conn)
            elif getattr(conn, 'transport_name', 'ws') in ('udp', 'tcp', 'tls'):
                # a UDP/TCP/TLS UA's Contact is an address: in-dialog requests to it go
                # back the way it came (RFC 3581 through NAT), keyed by host:port
                uri = NameAddr.parse(value).uri
                self._claim_host('%s:%d' % (host, uri.port or 5060), conn)

    def _learn_record_route(self, conn: WSConnection, message: SIPMessage) -> None:
        """A proxy that reached us over a WebSocket connection it opened record-routes with
        that connection's `.invalid` host: requests of the dialog go back over it."""
        for value in message.get_all('Record-Route')[:1]:
            try:
                host = NameAddr.parse(value).uri.host.lower()
            except SIPParseError:
                return
            if host.endswith('.invalid') and self._contacts.get(host) in (None, conn):
                self._claim_host(host, conn)

    def _claim_host(self, host: str, conn: WSConnection) -> None:
        """``host`` now routes to ``conn`` (indexed both ways, for O(owned) clean-up); in a
        cluster the other nodes learn it too.  A connection of another node is not
        recorded here: that node records it."""
        if not conn.is_open or getattr(conn, 'is_remote', False):
            return
        previous = self._contacts.get(host)
        if previous is conn:
            if self.cluster is not None:
                self.cluster.claim(host, conn)          # its TTL in Redis starts again
            return
        if previous is not None:
            previous.state.get('contact_hosts', set()).discard(host)
            logger.info('Contact host %s moved from %r to %r', host, previous, conn)
        self._contacts[host] = conn
        conn.state.setdefault('contact_hosts', set()).add(host)
        if self.cluster is not None:
            self.cluster.claim(host, conn)

    def _in_dialog(self, conn: WSConnection, message: SIPMessage) -> None:
        """Route an in-dialog request by the connection behind its Request-URI's host."""
        self._learn_contact(conn, message)
        is_ack = message.method == 'ACK'
        try:
            to_tag = NameAddr.parse(message.get('To') or '').tag
            target = SipURI.parse(message.uri or '')
        except SIPParseError as exc:
            if not is_ack:
                self.reply(conn, message, 400, 'Bad Request (%s)' % exc)
            return
        if to_tag is None and not is_ack:
            self._route(conn, message)                 # ``tag=`` was not the To tag
            return
        if self.cluster is None and message.get('Route') is not None:
            routes = [value for value in message.get_all('Route') if not self._is_ours(value)]
            if routes:                                 # loose routing (RFC 3261 §16.12)
                self.spawn(self._to_route(conn, message, routes, to_tag))
                return
        peer = self._contacts.get(target.host.lower())
        if peer is None and not target.host.endswith('.invalid'):
            peer = self._contacts.get('%s:%d' % (target.host.lower(), target.port or 5060))
            if peer is None and self.bridge is not None:
                peer = self.bridge.flow_for(target)         # an address: over UDP to it
        if (peer is None or not peer.is_open) and self.cluster is not None:
            self.spawn(self._in_dialog_shared(conn, message, target.host.lower(), to_tag))
            return
        self._forward_in_dialog(conn, message, peer, to_tag)

    def _listening_hostports(self) -> set[str]:
        """``host:port`` of every address serve listens on (``*:port`` for a wildcard)."""
        urls = [listener.bound_url for listener in self.listeners]
        if self.bridge is not None:
            urls += [listener.bound_url for listener in self.bridge.listeners]
            urls += ['udp://' + endpoint.via_host for endpoint in self.bridge.endpoints]
        own = set()
        for url in urls:
            hostport = url.split('//', 1)[1].split('/', 1)[0]
            host, _, port = hostport.rpartition(':')
            own.add('*:' + port if host.strip('[]') in ('0.0.0.0', '::') else hostport.lower())
        if self.advertise:
            own.add(self.advertise if ':' in self.advertise else self.advertise + ':5060')
        return own

    def _is_ours(self, route: str) -> bool:
        """Whether a Route entry points at this server (one of its listening addresses)."""
        try:
            uri = NameAddr.parse(route).uri
        except SIPParseError:
            return False
        host = uri.host.lower()
        if host.endswith('.invalid'):     # the sent-by of a connection serve opened itself
            return any(conn.via_host.lower() == host for conn in self._ws_hops.values())
        port = uri.port or (5061 if uri.scheme == 'sips' else 5060)
        own = self._own_hostports
        return '%s:%d' % (host, port) in own or '*:%d' % port in own

    async def _to_route(self, conn: WSConnection, message: SIPMessage, routes: list[str],
                        to_tag: str | None) -> None:
        """An in-dialog request from a client of the edge with a route set beyond us: to
        the first Route entry that is not ours, the rest kept."""
        first = NameAddr.parse(routes[0]).uri
        behind = self._contacts.get(first.host.lower())  # a proxy's `.invalid` connection
        if behind is not None and behind.is_open:
            self._forward_in_dialog(conn, message, behind, to_tag, routes=routes)
            return
        try:
            flow = await self._hop_flow(first)
        except (AiosipWSError, OSError) as exc:
            peer_log.warning('next hop unreachable', 'the route %s is unreachable: %s',
                             routes[0], exc)
            if message.method != 'ACK':
                self.busy(conn, message, 'the next hop is unreachable')
            return
        self._forward_in_dialog(conn, message, flow, to_tag, routes=routes)

    async def _in_dialog_shared(self, conn: WSConnection, message: SIPMessage, host: str,
                                to_tag: str | None) -> None:
        """The Request-URI host is behind a connection of another node (or of none)."""
        assert self.cluster is not None
        self._forward_in_dialog(conn, message, await self.cluster.peer_for(host), to_tag)

    def _forward_in_dialog(self, conn: WSConnection, message: SIPMessage,
                           peer: WSConnection | None, to_tag: str | None, *,
                           routes: list[str] | None = None,
                           record_route: list[str] | None = None) -> None:
        """Relay a request over ``peer`` with its Request-URI; its Route headers become
        ``routes`` (none by default: the entries pointing at us end here), and
        ``record_route`` go on top of its Record-Route."""
        is_ack = message.method == 'ACK'
        if peer is None or not peer.is_open:
            if not is_ack:                 # an ACK here is for a non-2xx we ACKed downstream
                # A WebSocket client's Contact host is .invalid (RFC 7118 §5): its closed
                # connection was the only way to it; any other target serve never knew.
                gone = peer is not None or _uri_host(message.uri or '').endswith('.invalid')
                self.reply(conn, message, 480 if gone else 481)
            return
        max_forwards = _max_forwards(message)
        if max_forwards is None or max_forwards == 0:
            if not is_ack:
                status = 400 if max_forwards is None else 483
                self.metrics.response(status)
                conn.send(make_response(message, status, to_tag=to_tag))
            return
        forwarded = SIPMessage(method=message.method, uri=message.uri, body=message.body,
                               headers=[(k, v) for k, v in message.headers if k != 'Route'])
        forwarded.set('Max-Forwards', str(max_forwards - 1))
        position = next((i for i, (k, _) in enumerate(forwarded.headers) if k == 'Via'), 0)
        forwarded.headers[position:position] = [('Route', r) for r in routes or ()]
        forwarded.headers[0:0] = [('Record-Route', r) for r in record_route or ()]
        future = self.send_request(
            peer, forwarded, on_provisional=lambda r: self._relay_provisional(conn, r))
        if not is_ack:
            future.add_done_callback(lambda done: self._in_dialog_answered(conn, peer, message,
                                                                          done))

    def _in_dialog_answered(self, origin: WSConnection, peer: WSConnection,
                            original: SIPMessage, done: asyncio.Future[SIPMessage]) -> None:
        if done.cancelled():
            return
        exc = done.exception()
        if exc is None:
            self.relay_final(origin, peer, original, done.result())
            return
        logger.info('relaying in-dialog %s failed: %s', original.method, exc)
        if origin.is_open:
            status = 408 if isinstance(exc, TransactionTimeout) else 480
            self.metrics.response(status)
            origin.send(make_response(original, status))

    def _cancel(self, conn: WSConnection, cancel: SIPMessage) -> None:
        """RFC 3261 §16.10: answer the CANCEL, then cancel the INVITE we forwarded."""
        entry = self._invites.get(cancel_key(cancel))
        if entry is None:
            self.reply(conn, cancel, 481)
            return
        self.reply(conn, cancel, 200)
        entry.cancel(cancel.get('Reason'))

    # -- client transactions --------------------------------------------------------------
    def send_request(self, conn: WSConnection, request: SIPMessage, *,
                     on_provisional: Callable[[SIPMessage], None] | None = None,
                     branch: str | None = None) -> asyncio.Future[SIPMessage]:
        """Send ``request`` as a stateful proxy does: our Via on top, tracked by its branch.

        The future gets the final response, or fails with :class:`TransactionTimeout`
        (Timer F) or :class:`ConnectionLost`; ``on_provisional`` sees each 1xx.  An
        ACK is not tracked: its future is done at once (with None).
        """
        branch = branch or self.new_branch()
        request.headers.insert(0, ('Via', conn.via(branch)))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SIPMessage] = loop.create_future()
        if request.method == 'ACK':
            future.set_result(None)  # type: ignore[arg-type]
        else:
            timeout = conn.options.transaction_timeout
            timer = loop.call_later(timeout, self._finish, branch, TransactionTimeout(
                'no final response to %s %s within %.0f s (Timer F)'
                % (request.method, request.uri, timeout)))
            self._pending[branch] = _Pending(future, conn, timer, request.method or '',
                                             on_provisional)
            conn.state.setdefault('pending', set()).add(branch)
        if not conn.send(request):           # closed, or its peer stopped reading (1008)
            self._finish(branch, ConnectionLost('%r cannot take more: the request was not sent'
                                                % conn))
        return future

    def record_route(self, conn: WSConnection, token: str | None = None) -> str:
        """The Record-Route serve puts on a dialog-creating request it sends over ``conn``;
        in a cluster its user part names the node that holds ``conn``; an edge puts the
        flow token of its client there (``token``, RFC 5626 §5.3)."""
        transport = getattr(conn, 'transport_name', 'ws')
        if transport in ('udp', 'tcp', 'tls'):                  # a bridged UDP/TCP/TLS side
            user = token + '@' if token else ''
            if transport == 'tls':
                return '<sips:%s%s;lr>' % (user, conn.via_host)
            return '<sip:%s%s;transport=%s;lr>' % (user, conn.via_host, transport)
        if self.cluster is None:
            return '<sip:%s;transport=ws;lr>' % conn.via_host
        node = getattr(conn, 'node', None) or self.cluster.node
        return '<sip:%s@%s;transport=ws;lr>' % (node, conn.via_host)

    def new_branch(self, request: SIPMessage | None = None) -> str:
        """The branch of a request serve relays (in a cluster it names this node, so that
        the node holding the callee's connection sends the responses back here; with next
        hops it carries the loop key of ``request``, RFC 3261 §16.6 step 8)."""
        if self.cluster is not None:
            return self.cluster.branch()
        if request is not None and (self.next_hops or self.route_unregistered):
            return '%s%s.%s' % (MAGIC_COOKIE, loop_key(request), new_branch()[-8:])
        return new_branch()

    def rearm(self, branch: str, seconds: float, timer: str) -> None:
        """Give the pending request ``branch`` ``seconds`` more from now (Timer C, re-armed
        by each provisional response to an INVITE, RFC 3261 §16.6 step 11)."""
        pending = self._pending.get(branch)
        if pending is None:
            return
        pending.timer.cancel()
        pending.timer = asyncio.get_running_loop().call_later(
            seconds, self._finish, branch, TransactionTimeout(
                'no final response to %s within %.0f s of the last provisional (%s)'
                % (pending.method, seconds, timer)))

    def accepted(self, branch: str, origin: WSConnection) -> None:
        """An INVITE branch to a UDP peer got a 2xx: forward its retransmissions to
        ``origin`` for 64*T1 (RFC 6026 §7.2.2), bounded like the pending transactions."""
        if branch in self._accepted or len(self._accepted) >= self.limits.max_pending:
            return
        self._accepted[branch] = origin
        asyncio.get_running_loop().call_later(TIMER_B, self._accepted.pop, branch, None)

    def _finish(self, branch: str, outcome: SIPMessage | BaseException) -> None:
        pending = self._pending.pop(branch, None)
        if pending is None:
            return
        pending.timer.cancel()
        pending.conn.state.get('pending', set()).discard(branch)
        if pending.future.done():
            return
        if isinstance(outcome, BaseException):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)

    def _response_received(self, conn: WSConnection, message: SIPMessage) -> None:
        try:
            branch = message.top_branch or ''
        except SIPParseError as exc:
            peer_log.warning('dropped responses with a bad Via',
                             '%r: dropped a response with a bad Via: %s', conn, exc)
            return
        pending = self._pending.get(branch)
        if pending is None and self.cluster is not None and \
                self.cluster.forward_response(conn, message, branch):
            return                                  # to the node that relayed the request
        if pending is None and branch in self._accepted and 200 <= (message.status or 0) < 300:
            origin = self._accepted[branch]             # a 2xx retransmission (RFC 6026)
            if origin.is_open and message.cseq[1] == 'INVITE':
                message.headers = _without_top_via(message.headers)
                origin.send(message)
            return
        if pending is None or pending.conn is not conn:
            peer_log.info('dropped stray responses',
                          '%r: dropped a response for no known transaction (%s %s, Call-ID %s)',
                          conn, message.status, message.reason, message.get('Call-ID'))
            return
        if message.cseq[1] != pending.method:
            return                              # e.g. the 200 to our CANCEL: nothing to do
        if (message.status or 0) >= 200:
            self._finish(branch, message)
        elif pending.on_provisional is not None:
            pending.on_provisional(message)


def _reachable_at_contact(binding: Binding) -> bool:
    """A binding made over TCP or TLS without Outbound (no ``ob``, no ``reg-id``): when its
    connection goes, it stays until it expires and is reached at its Contact."""
    return (getattr(binding.connection, 'transport_name', 'ws') in ('tcp', 'tls')
            and not binding.reg_id and not binding.uri.has_param('ob'))


def _route_token(message: SIPMessage) -> str | None:
    """The flow token in the user part of the top Route, if it has one."""
    routes = message.get_all('Route')
    if not routes:
        return None
    try:
        user = NameAddr.parse(routes[0]).uri.user
    except SIPParseError:
        return None
    return user if user and FlowTokens.looks_like(user) else None


def _hop_uri(text: str, what: str) -> SipURI:
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


def _max_forwards(message: SIPMessage) -> int | None:
    """The Max-Forwards value (RFC 3261 §8.1.1.6 default when absent); None if malformed."""
    value = message.get('Max-Forwards')
    if value is None:
        return DEFAULT_MAX_FORWARDS
    try:
        return parse_max_forwards(value)
    except SIPParseError:
        return None


def _invalid_hosts(request: SIPMessage) -> set[str]:
    """The `.invalid` hosts of a request's Contacts (RFC 7118 Appendix B.1)."""
    hosts = set()
    for value in request.get_all('Contact'):           # one Contact each (get_all splits)
        try:
            host = NameAddr.parse(value).uri.host.lower()
        except SIPParseError:
            continue
        if host.endswith('.invalid'):
            hosts.add(host)
    return hosts


def _without_top_via(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Remove the Via entry we added (the first one), even from a comma-joined value."""
    out: list[tuple[str, str]] = []
    removed = False
    for name, value in headers:
        if not removed and name.lower() == 'via':
            removed = True
            rest = split_header_values(value)[1:]
            if rest:
                out.append((name, ', '.join(rest)))
            continue
        out.append((name, value))
    return out


#: 4xx responses that tell the caller how to resubmit, preferred among 4xx (§16.7 step 6)
_INFORMATIVE = (401, 407, 415, 420, 484)


def best_response(responses: list[SIPMessage]) -> SIPMessage:
    """RFC 3261 §16.7 step 6: a 6xx if any, else the lowest class, preferring within 4xx
    the responses that say how to retry; then the first received.  A 401 or 407 chosen
    carries every challenge of every 401/407 received (step 7, merging)."""
    def rank(item: tuple[int, SIPMessage]) -> tuple[int, int, int]:
        order, response = item
        status = response.status or 500
        return (0 if status >= 600 else status // 100, 0 if status in _INFORMATIVE else 1,
                order)
    _, best = min(enumerate(responses), key=rank)
    if best.status in (401, 407):
        challenges = [(k, v) for r in responses if r.status in (401, 407) for k, v in r.headers
                      if k in ('WWW-Authenticate', 'Proxy-Authenticate')]
        headers = [(k, v) for k, v in best.headers
                   if k not in ('WWW-Authenticate', 'Proxy-Authenticate')]
        best = SIPMessage(status=best.status, reason=best.reason, headers=headers + challenges,
                          body=best.body)
    return best


class _Branch:
    """One downstream copy of a forked request (a client transaction of the proxy)."""

    __slots__ = ('binding', 'peer', 'forwarded', 'branch', 'done', 'provisional')

    def __init__(self, binding: Binding, forwarded: SIPMessage, branch: str) -> None:
        self.binding, self.peer, self.forwarded = binding, binding.connection, forwarded
        self.branch = branch
        self.done = False
        self.provisional = False


class _Fork:
    """One request serve relays to an AOR (its server transaction as a proxy), forked
    per RFC 3261 §16.6-16.7: every binding gets a copy, higher ``q`` first, equal ``q``
    in parallel; the next group only when a whole group failed.

    An INVITE gets 100 Trying at once and is record-routed; provisional responses are
    relayed as they come (a downstream 100 is not); every 2xx to an INVITE is relayed at
    once and the other branches are CANCELled with ``Reason: SIP;cause=200`` (RFC 3326);
    a 6xx ends the fork the same way; otherwise the best final response wins once every
    branch has answered (a 503 becomes 500, 401/407 challenges are merged).  A non-INVITE
    is never CANCELled: its first 2xx is relayed, later ones are absorbed.  Non-2xx finals
    to an INVITE are ACKed downstream here (§17.1.1.3).  Each INVITE branch waits Timer B
    (the transaction timeout) for a first provisional, then Timer C, re-armed by each
    provisional; Timer C CANCELs the branch, which counts as 408 (§16.8).  Callbacks
    only, no task per request.
    """

    __slots__ = ('server', 'origin', 'request', 'groups', 'max_forwards', 'key', 'branches',
                 'finals', 'answered', 'timed_out', 'finished', 'started')

    def __init__(self, server: RelayServer, origin: WSConnection, request: SIPMessage,
                 bindings: list[Binding], max_forwards: int) -> None:
        self.server, self.origin, self.request = server, origin, request
        by_q: dict[float, list[Binding]] = {}
        for binding in bindings:                                # newest first within a q
            by_q.setdefault(binding.q, []).append(binding)
        self.groups = [by_q[q] for q in sorted(by_q, reverse=True)]
        self.max_forwards = max_forwards
        self.key = cancel_key(request) if request.method == 'INVITE' else None
        self.branches: list[_Branch] = []
        #: non-2xx final responses (and 408/480 for branches that failed without one)
        self.finals: list[SIPMessage] = []
        #: a final response (2xx or 6xx) went upstream: the rest only wind down
        self.answered = False
        self.timed_out = False
        self.finished = False
        self.started = asyncio.get_running_loop().time()
        origin.state['relaying'] = origin.state.get('relaying', 0) + 1

    def _answered_now(self) -> None:
        """The final response goes upstream now: how long it took."""
        self.server.metrics.transaction(self.request.method,
                                        asyncio.get_running_loop().time() - self.started)

    def start(self) -> None:
        self.server.metrics.relay(self.request.method)
        if self.key is not None:
            self.server._invites[self.key] = self
            if self.origin.is_open:        # §16.2: at once, hop by hop, no To tag
                self.server.metrics.response(100)
                self.origin.send(make_response(self.request, 100,
                                               headers=[('Server', SERVER_HEADER)]))
        self._next_group()

    def _next_group(self) -> None:
        while self.groups:
            live = [b for b in self.groups.pop(0) if b.connection.is_open]
            for binding in live:
                self._launch(binding)
            if live:
                return
        self._finish()

    def _launch(self, binding: Binding) -> None:
        server, request = self.server, self.request
        forwarded = SIPMessage(method=request.method, uri=str(binding.uri),
                               headers=list(request.headers), body=request.body)
        forwarded.set('Max-Forwards', str(self.max_forwards))
        forwarded.remove('Route')                      # loose routes pointing at us end here
        provisional = None
        if request.method in _LEARN_FROM:                  # dialog-creating: record-routed
            token = None
            if server.flow_tokens is not None and 'flow_id' in self.origin.state:
                token = server.flow_tokens.issue(self.origin.state['flow_id'])
            forwarded.headers.insert(0, ('Record-Route', server.record_route(binding.connection,
                                                                             token)))
            inbound = server.record_route(self.origin)
            sides = {getattr(c, 'transport_name', 'ws') for c in (self.origin, binding.connection)}
            if len(sides) > 1 and sides & {'udp', 'tcp', 'tls'}:
                # RFC 5658: crossing transports, one entry per side; the callee's route set
                # then names the side it is on first, the caller's the side it is on
                forwarded.headers.insert(1, ('Record-Route', inbound))
        branch = _Branch(binding, forwarded, server.new_branch(request))
        if self.key is not None:
            provisional = lambda response: self._provisional(branch, response)  # noqa: E731
        self.branches.append(branch)
        future = server.send_request(binding.connection, forwarded, branch=branch.branch,
                                     on_provisional=provisional)
        future.add_done_callback(lambda done: self._branch_done(branch, done))

    def _provisional(self, branch: _Branch, response: SIPMessage) -> None:
        branch.provisional = True
        self.server.rearm(branch.branch, self.server.timer_c, 'Timer C')
        if not self.answered:
            self.server._relay_provisional(self.origin, response)

    def _branch_done(self, branch: _Branch, future: asyncio.Future[SIPMessage]) -> None:
        branch.done = True
        if future.cancelled():
            self._settle()
            return
        exc = future.exception()
        if exc is not None:
            logger.info('relaying %s to %s failed: %s', self.request.method, branch.binding.uri,
                        exc)
            timeout = isinstance(exc, TransactionTimeout)
            self.timed_out = self.timed_out or timeout
            if timeout and branch.provisional and branch.peer.is_open:
                self._send_cancel(branch, None)                 # §16.8: Timer C fired
            self._settle()
            return
        response = future.result()
        status = response.status or 500
        if self.key is not None and status >= 300:
            branch.peer.send(invite_companion('ACK', branch.forwarded,
                                              uri=branch.forwarded.uri or '',
                                              to=response.get('To') or ''))    # hop by hop
        if status < 300:
            if self.key is not None or not self.answered:   # every 2xx of an INVITE
                first = not self.answered
                self.answered = True
                if first:
                    self._answered_now()
                self.server.relay_final(self.origin, branch.peer, self.request, response)
                if self.key is not None and not getattr(branch.peer, 'reliable', True):
                    self.server.accepted(branch.branch, self.origin)
                if first and self.key is not None:
                    self._cancel_others('SIP;cause=200;text="Call completed elsewhere"')
        elif status >= 600 and not self.answered:
            self.answered = True
            self._answered_now()
            self.server.relay_final(self.origin, branch.peer, self.request, response)
            if self.key is not None:
                self._cancel_others('SIP;cause=%d;text="%s"' % (status, response.reason))
        elif not self.answered:
            self.finals.append(response)
        self._settle()

    def _settle(self) -> None:
        """After a branch ended: the next group, or the answer, once every branch is done."""
        if self.finished or any(not b.done for b in self.branches):
            return
        if not self.answered and self.groups:
            self._next_group()
            return
        self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        server = self.server
        if self.key is not None and server._invites.get(self.key) is self:
            del server._invites[self.key]
        self.origin.state['relaying'] = self.origin.state.get('relaying', 1) - 1
        if self.answered:
            return
        self._answered_now()
        if self.finals:
            response = best_response(self.finals)
            server.relay_final(self.origin, self.branches[-1].peer, self.request, response)
        else:
            server.reply(self.origin, self.request, 408 if self.timed_out else 480)

    # -- CANCEL ---------------------------------------------------------------------------
    def cancel(self, reason: str | None) -> None:
        """The caller CANCELled (§16.10): every pending branch is CANCELled; their 487s
        make the answer."""
        for branch in self.branches:
            if not branch.done:
                self._send_cancel(branch, reason)
        self.groups = []                                   # no later group starts

    def _cancel_others(self, reason: str) -> None:
        for branch in self.branches:
            if not branch.done:
                self._send_cancel(branch, reason)
        self.groups = []

    def _send_cancel(self, branch: _Branch, reason: str | None) -> None:
        cancel = invite_companion('CANCEL', branch.forwarded, uri=branch.forwarded.uri or '')
        if reason is not None:
            cancel.headers.append(('Reason', reason))
        branch.peer.send(cancel)


def _uri_host(uri: str) -> str:
    """The host of a Request-URI, lower-cased ('' when it cannot be parsed)."""
    try:
        return SipURI.parse(uri).host.lower()
    except SIPParseError:
        return ''
