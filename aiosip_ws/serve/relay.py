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

This module is the composition and the life cycle: the path of a request is a list of
named stages (:attr:`RelayServer.stages`), each a method of a collaborator that sees a
:class:`~aiosip_ws.serve.context.Context`, never the server: admission (the request rate
and the identity, :mod:`~aiosip_ws.serve.admission`), the RFC 5626 edge
(:mod:`~aiosip_ws.serve.edge`), CANCEL and forking (:mod:`~aiosip_ws.serve.fork`), the
media relay (:mod:`~aiosip_ws.serve.media`), in-dialog routing
(:mod:`~aiosip_ws.serve.dialogs`), next hops
(:mod:`~aiosip_ws.serve.hops`) and REGISTER (:mod:`~aiosip_ws.serve.register`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..core.codec import SIPMessage, unsupported_option_tags
from ..core.grammar import SIP_SCHEMES, is_net_url
from ..errors import ConfigurationError, SIPParseError
from ..options import RelayLimits, ServerOptions
from ..transport.listener import WSListener, listen, shut_down
from ..transport.tap import WireTap
from ..transport.websocket import WSConnection
from .admission import Admission
from .auth import DigestAuthenticator, Identity
from .bridge import NetworkSide
from .contacts import ContactIndex
from .context import (
    ALLOWED_METHODS,
    SERVER_HEADER,
    Context,
    forwarding_refusal,
    max_forwards_of,
)
from .dialogs import Dialogs
from .edge import Edge
from .events import (
    CallChanged,
    ConnectionClosed,
    ConnectionOpened,
    EventStream,
    MessageIn,
    RegistrationChanged,
    WireMessage,
)
from .flow import Flow, state_of
from .fork import LEARN_FROM, Forker, best_response
from .hops import Hops, hop_uri, reachable_at_contact
from .media import IN_DIALOG_METHODS, Media, MediaSettings
from .observe import AdminEndpoints, Metrics
from .register import Registration
from .registrar import Binding, Registrar
from .transactions import ClientTransactions

if TYPE_CHECKING:
    from .app import AppRouter
    from .cluster import Cluster

__all__ = ['RelayServer', 'ALLOWED_METHODS', 'SERVER_HEADER', 'Stage', 'best_response']

logger = logging.getLogger(__name__)

#: option tags a request may Require (RFC 3261 §8.2.2.3); others get 420
SUPPORTED_EXTENSIONS = frozenset({'outbound', 'path'})

#: a route: ``route(flow, request)``, plain or a coroutine function
Route = Callable[[Any, SIPMessage], 'Awaitable[None] | None']
#: a stage of the pipeline: ``stage(flow, request)`` -> True when the request needs
#: nothing more (answered, relayed, or taken by a task)
Stage = Callable[[Any, SIPMessage], bool]


class RelayServer:
    """Registrar + relay; ``await start(url, ...)``, then ``await close()``."""

    def __init__(self, *, server_options: ServerOptions | None = None,
                 registrar: Registrar | None = None, limits: RelayLimits | None = None,
                 auth: DigestAuthenticator | None = None, timer_c: float = 180.0,
                 admin_allow: Iterable[str] = ('127.0.0.0/8', '::1/128'),
                 redis_url: str | None = None, node_id: str | None = None,
                 advertise: str | None = None, next_hops: dict[str, str] | None = None,
                 route_unregistered: str | None = None, domains: Iterable[str] = (),
                 edge_registrar: str | None = None, flow_secret: bytes | None = None,
                 media: MediaSettings | None = None,
                 client_ssl: ssl.SSLContext | None = None) -> None:
        #: True once :meth:`drain` began: new handshakes get 503, /healthz 503
        self.draining = False
        #: Prometheus metrics of this server (``GET /metrics``)
        self.metrics = Metrics(self)
        #: ``GET /healthz``, ``/metrics``, ``/registrations`` on the listeners' port
        self.admin = AdminEndpoints(self, admin_allow,
                                    healthy=lambda: not (self.ctx.closing or self.draining))
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
        self.listeners: list[WSListener] = []
        #: every open connection
        self.connections: set[WSConnection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: what happens in serve, typed events for whoever subscribes (the metrics do)
        self.events = EventStream()
        self.events.on_change = self._events_wanted
        #: the transports' SIP bytes: a WireMessage each, while a consumer wants them
        self.wire_tap = WireTap()
        #: what SIGHUP and the admin reload action do (set by serve's life cycle): loads
        #: what can be loaded again, returns what it loaded
        self.reload_hook: Callable[..., list[str]] | None = None
        self.metrics.follow(self.events)
        #: what the stages share
        self.ctx: Context = Context(self.metrics, self.limits, timer_c=timer_c,
                                   spawn=self.spawn, events=self.events)
        ctx = self.ctx
        self._responses = ctx.transactions.response_received
        self.admission = Admission(ctx, auth, resume=self._after_identity)
        self.admission.again = self._identify_again
        self.registration = Registration(ctx, self.registrar)
        self.forker = Forker(ctx)
        upstream = hop_uri(edge_registrar, '--registrar ') if edge_registrar else None
        self.hops = Hops(ctx, self.forker, self, next_hops=next_hops,
                         route_unregistered=route_unregistered, domains=domains,
                         upstream=upstream)
        self.dialogs = Dialogs(ctx, self.hops)
        #: the media relay (``--rtpengine``): anchors calls between browsers and phones
        self.media = self.forker.media = Media(ctx, media)
        self.metrics.follow_media(self.media)
        #: RFC 5626 edge mode (``--registrar``), or None
        self.edge = Edge(ctx, self.hops, self.dialogs, upstream, flow_secret) \
            if upstream is not None else None
        if self.edge is not None:
            self.forker.flow_token = self.edge.token_of
        #: method -> route; replace an entry to change how a method is handled
        self.routes: dict[str, Route] = {method: self._on_request for method in ALLOWED_METHODS}
        self.routes['REGISTER'] = self.registration.register
        if self.edge is not None:
            self.routes['REGISTER'] = self.edge.register
        self.routes['PUBLISH'] = self._on_publish
        #: the nodes sharing bindings and forwarding through Redis (``--redis``), or None
        self.cluster: Cluster | None = None
        #: the UDP, TCP and TLS listeners (``--listen udp://...``), made on first use
        self.bridge: NetworkSide | None = None
        #: the host[:port] serve writes in Via and Record-Route on UDP/TCP/TLS (--advertise)
        self.advertise = advertise
        #: the TLS context of the connections serve opens (None: the default one)
        self.client_ssl = self.hops.client_ssl = client_ssl
        if redis_url is not None:
            from .cluster import Cluster
            self.cluster = ctx.cluster = Cluster(
                self, redis_url, node_id or socket.gethostname().split('.')[0])
            ctx.contacts.shared = self.cluster.claim
            ctx.transactions.forward = self.cluster.forward_response
        #: this node's name (in the call events, HEP, the call history): the cluster's,
        #: else ``node_id``, or None
        self.node = ctx.calls.node = self.cluster.node if self.cluster is not None \
            else node_id
        #: the pipeline: every request meets these stages in this order, until one takes
        #: it (returns True).  Each is a plain method of a collaborator; the third item
        #: names the only methods it is for (None: every method).  After a change to the
        #: list, call :meth:`stages_changed`.
        self.stages: list[tuple[str, Stage, frozenset[str] | None]] = [
            ('rate', self.admission.over_rate, None),     # 503 over the request rate
            *([('edge token', self.edge.inbound, None)] if self.edge is not None else []),
            ('cancel', self._cancel, frozenset({'CANCEL'})),   # §16.10
            ('media', self._media, IN_DIALOG_METHODS),    # anchored calls' SDP, their end
            ('in-dialog', self.dialogs.in_dialog, None),  # by the Request-URI's flow
            ('learn', self._learn, LEARN_FROM),           # Contact and Record-Route hosts
            ('option tags', self._option_tags, None),     # 420
            ('method', self._method, None),               # 405
            ('identity', self.admission.identify, None),  # token or Digest (401/407/403)
            ('route', self._route, None),                 # the method's route
        ]
        #: method -> (the stages it meets, their names)
        self._plans: dict[str, tuple[tuple[Stage, ...], tuple[str, ...]]] = {}
        #: the routing app (``--app``, :meth:`use_app`), or None
        self.app_router: AppRouter | None = None

    def use_app(self, app: object, *, timeout: float = 5.0,
                watchdog: bool = True) -> AppRouter:
        """Route with ``app`` (see :mod:`~aiosip_ws.serve.routing`): ``FILE.py``,
        ``package.module[:attribute]`` or an object.  Its stages join the pipeline (the
        ``app`` stage before ``route``, ``app in-dialog`` after ``cancel``); its
        ``startup`` runs in :meth:`start`.  Call before :meth:`start`."""
        from .app import AppRouter, load_app
        if self.app_router is not None:
            raise ConfigurationError('serve has an app already')
        router = self.app_router = AppRouter(
            load_app(app), ctx=self.ctx, forker=self.forker, hops=self.hops,
            lookup=self._bindings_of, timeout=timeout, metrics=self.metrics,
            watchdog=watchdog, events=self.events,
            domains=self.hops.domains | (self.auth.domains if self.auth is not None else set()))
        router.resume = self._resume
        names = [name for name, _, _ in self.stages]
        self.stages.insert(names.index('route'), ('app', router.request_stage, None))
        self.stages.insert(names.index('cancel') + 1,
                           ('app in-dialog', router.in_dialog_stage, None))
        self.stages_changed()
        return router

    async def _bindings_of(self, aor: str) -> list[Binding]:
        """An AOR's bindings: the cluster's (this node's if Redis is unreachable)."""
        if self.cluster is not None:
            bindings = await self.cluster.lookup(aor)
            if bindings is not None:
                return bindings
        return self.registrar.lookup(aor)

    # -- the pipeline ---------------------------------------------------------------------
    def stages_changed(self) -> None:
        """:attr:`stages` changed: plan the methods' paths again."""
        self._plans.clear()

    def _plan(self, method: str) -> tuple[tuple[Stage, ...], tuple[str, ...]]:
        plan = self._plans.get(method)
        if plan is None:
            # a method with a route passes 'method' (405) whatever it is: left out
            mine = [(name, stage) for name, stage, methods in self.stages
                    if (methods is None or method in methods)
                    and not (stage == self._method and method in self.routes)]
            plan = self._plans[method] = (tuple(stage for _, stage in mine),
                                          tuple(name for name, _ in mine))
            if len(self._plans) > 64:                    # methods are tokens: bounded
                self._plans.clear()
        return plan

    def _request_received(self, flow: Flow, request: SIPMessage, start: int = 0) -> None:
        """Run ``request`` through its method's :attr:`stages` (from the ``start``-th); a
        header a stage cannot parse is answered 400 here."""
        plan = self._plans.get(request.method or '')
        stages = (plan if plan is not None else self._plan(request.method or ''))[0]
        try:
            for stage in stages[start:] if start else stages:
                if stage(flow, request):
                    return
        except SIPParseError as exc:
            self.ctx.bad_request(flow, request, exc)

    def _after_identity(self, flow: Flow, request: SIPMessage) -> None:
        """The identity stage settled later (a cluster's nonce count): the rest now."""
        self._resume(flow, request, 'identity')

    def _identify_again(self, flow: Flow, request: SIPMessage) -> None:
        """The identity stage waited for a user lookup: from that stage again."""
        self._resume(flow, request, 'identity', at=True)

    def _resume(self, flow: Flow, request: SIPMessage, after: str, *, at: bool = False) -> None:
        """A stage that took ``request`` to a task hands it on: the stages after ``after``
        (``at``: from ``after`` itself; none when the method's path has no such stage)."""
        stages, names = self._plan(request.method or '')
        if after in names:
            self._request_received(flow, request, names.index(after) + (0 if at else 1))

    def _cancel(self, flow: Flow, request: SIPMessage) -> bool:
        self.forker.cancel(flow, request)
        return True

    def _media(self, flow: Flow, request: SIPMessage) -> bool:
        return self.media.in_dialog(flow, request, self.dialogs.route)

    def _learn(self, flow: Flow, request: SIPMessage) -> bool:
        self.ctx.contacts.learn_contact(flow, request)
        self.ctx.contacts.learn_record_route(flow, request)
        return False

    def _option_tags(self, flow: Flow, request: SIPMessage) -> bool:
        unsupported = unsupported_option_tags(request, SUPPORTED_EXTENSIONS)
        if unsupported:
            self.ctx.reply(flow, request, 420, headers=[('Unsupported', ', '.join(unsupported))])
        return bool(unsupported)

    def _method(self, flow: Flow, request: SIPMessage) -> bool:
        if (request.method or '') in self.routes:
            return False
        self.ctx.reply(flow, request, 405, headers=[('Allow', ', '.join(ALLOWED_METHODS))])
        return True

    def _route(self, flow: Flow, request: SIPMessage) -> bool:
        route = self.routes.get(request.method or '')
        if route is None:                  # its route was removed since its path was planned
            return self._method(flow, request)
        try:
            outcome = route(flow, request)
        except SIPParseError:
            raise
        except Exception:  # noqa: BLE001 - one request must not take the server down
            logger.exception('%r: the %s route failed', flow, request.method)
            self.ctx.reply(flow, request, 500)
            return True
        if outcome is not None and inspect.isawaitable(outcome):
            self.spawn(self._run_route(flow, request, outcome))
        return True

    async def _run_route(self, flow: Flow, request: SIPMessage,
                         outcome: Awaitable[None]) -> None:
        try:
            await outcome
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            logger.exception('%r: the %s route failed', flow, request.method)
            self.ctx.reply(flow, request, 500)

    # -- the default routes ---------------------------------------------------------------
    def _on_publish(self, flow: Flow, request: SIPMessage) -> None:
        """PUBLISH is for an event state compositor, not for user agents (RFC 3903 §6):
        without a route that sends it to a presence server, 489 Bad Event."""
        self.ctx.reply(flow, request, 489, 'Bad Event (no presence server here)')

    def _on_request(self, flow: Flow, request: SIPMessage) -> Awaitable[None] | None:
        """Every method but REGISTER and PUBLISH: to the server itself, a next hop or the
        bindings of the Request-URI's AOR."""
        ctx = self.ctx
        target = request.request_uri()
        if target.scheme not in SIP_SCHEMES:
            ctx.reply(flow, request, 416)
            return None
        if target.user is None:                                # addressed to the server itself
            if request.method == 'OPTIONS':
                ctx.reply(flow, request, 200,
                          headers=[('Allow', ', '.join(ALLOWED_METHODS)),
                                   ('Accept', 'application/sdp, text/plain'),
                                   ('Supported', 'path, outbound')])
            else:
                ctx.reply(flow, request, 404, 'Not Found (no user in the Request-URI)')
            return None
        max_forwards = max_forwards_of(request)
        refusal = forwarding_refusal(max_forwards)
        if refusal is not None:
            ctx.reply(flow, request, *refusal)
            return None
        assert max_forwards is not None
        if self.hops.active and self.hops.route(flow, request, target, max_forwards):
            return None
        if self.cluster is not None:
            return self._relay_shared(flow, request, target.aor, max_forwards)
        self.forker.relay(flow, request, self.registrar.lookup(target.aor), max_forwards)
        return None

    async def _relay_shared(self, flow: Flow, request: SIPMessage, aor: str,
                            max_forwards: int) -> None:
        assert self.cluster is not None
        bindings = await self.cluster.lookup(aor)
        if bindings is None:                     # Redis unreachable: this node's own only
            bindings = self.registrar.lookup(aor)
            if not bindings:
                self.ctx.busy(flow, request, 'the location service is unreachable')
                return
        self.forker.relay(flow, request, bindings, max_forwards)

    # -- what the stages' collaborators ask of the server ---------------------------------
    @property
    def auth(self) -> DigestAuthenticator | None:
        """Digest authentication of REGISTERs and of requests from local domains, or None."""
        return self.admission.auth

    @property
    def transactions(self) -> ClientTransactions:
        """The proxy's client transactions (the cluster hands responses to them)."""
        return self.ctx.transactions

    @property
    def contacts(self) -> ContactIndex:
        """Contact host -> flow (in-dialog routing)."""
        return self.ctx.contacts

    def reply(self, flow: Flow, request: SIPMessage, status: int, reason: str | None = None,
              *, headers: list[tuple[str, str]] | None = None) -> None:
        """Answer ``request`` on ``flow`` (see :meth:`Context.reply`)."""
        self.ctx.reply(flow, request, status, reason, headers=headers)

    # -- life cycle -------------------------------------------------------------------
    async def start(self, *urls: str) -> list[WSListener]:
        try:
            if self.cluster is not None and not self.listeners:
                await self.cluster.start()
            if self.app_router is not None and not self.listeners:
                await self.app_router.start()
            await self.media.start()
            if self.metrics.multiprocess and not self.listeners:
                self.spawn(self._update_gauges())
            bound: list[Any] = []
            for url in urls:
                if is_net_url(url):
                    if self.bridge is None:
                        self.bridge = self.hops.bridge = NetworkSide(
                            self, ssl_context=self.server_options.ssl, advertise=self.advertise,
                            client_ssl=self.client_ssl)
                    bound.append(await self.bridge.listen(url))
                else:
                    listener = await listen(url, self, self._options_for(url))
                    self.listeners.append(listener)
                    bound.append(listener)
        except BaseException:
            await self.close()
            raise
        self.dialogs.own_hostports = self._listening_hostports()   # once, not per request
        return bound

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
        self.ctx.closing = True
        self.hops.close()
        await shut_down(self.listeners, self.connections, self._tasks, code, reason)
        if self.bridge is not None:
            await self.bridge.close()
        self.ctx.transactions.close()
        await self.media.close()
        if self.app_router is not None:
            await self.app_router.close()
        if self.cluster is not None:
            await self.cluster.close()
        await self.events.close()

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
    def connection_made(self, conn: Any) -> None:
        state = state_of(conn)
        self.connections.add(conn)
        if self.events.wants(ConnectionOpened):
            self.events.publish(ConnectionOpened(conn))
        if self.cluster is not None:
            self.cluster.connection_made(conn)
        if self.edge is not None:
            self.edge.flow_made(conn)
        identity = getattr(conn, 'identity', None)
        if isinstance(identity, Identity) and identity.expires_at is not None:
            # the connection lives as long as the token that opened it
            delay = max(0.0, identity.expires_at - time.time())
            state.expiry = asyncio.get_running_loop().call_later(
                delay, self._token_expired, conn)

    def _events_wanted(self) -> None:
        """The registrar tells its changes only while a consumer wants them."""
        self.registrar.on_change = (self._registration_changed
                                    if self.events.wants(RegistrationChanged) else None)
        self.wire_tap.sink = self._wire if self.events.wants(WireMessage) else None

    def _wire(self, direction: str, flow: Any, data: bytes) -> None:
        self.events.emit(WireMessage, direction, flow, data)

    def _registration_changed(self, change: str, binding: Binding, why: str) -> None:
        flow = binding.connection
        self.events.publish(RegistrationChanged(
            change, binding.aor, str(binding.contact), binding.instance, flow,
            getattr(flow, 'remote_addr', None), why))

    def flow_made(self, flow: Flow) -> None:
        """A UDP peer seen for the first time: the per-flow state, without a connection to
        count or close (what it registers expires by time)."""
        state_of(flow)

    def media_ended(self, call_id: str) -> None:
        """Another node ended a call this one anchored (the cluster's bus)."""
        self.media.ended_elsewhere(call_id)

    def _token_expired(self, conn: WSConnection) -> None:
        logger.info('%r: its token expired: closing with 1008', conn)
        self.spawn(conn.close(1008, 'token expired'))

    def handshake_refused(self, status: int) -> None:
        self.metrics.handshake_refused(status)

    def message_dropped(self, conn: WSConnection, count: int) -> None:
        self.metrics.dropped.inc(count)

    def connection_lost(self, conn: Any, exc: BaseException | None) -> None:
        self.connections.discard(conn)
        if self.events.wants(ConnectionClosed):
            self.events.publish(ConnectionClosed(conn, conn.close_code))
        if self.cluster is not None:             # first: it reads the bindings and hosts
            self.cluster.connection_lost(conn)
        state = conn.flow_state
        if state.expiry is not None:
            state.expiry.cancel()
            state.expiry = None
        if self.edge is not None:
            self.edge.flow_gone(conn)
        if self.ctx.calls:
            self._calls_lost(conn)
        self.ctx.contacts.release(conn)
        self.ctx.transactions.flow_closed(conn)
        self.media.flow_closed(conn)
        keep = reachable_at_contact if conn.transport_name in ('tcp', 'tls') else None
        removed = self.registrar.remove_connection(conn, keep)   # TCP without Outbound: by time
        if removed:
            logger.info('%r closed: removed %d binding(s)', conn, removed)

    def _calls_lost(self, conn: Any) -> None:
        """A party's connection went during calls it was in: those calls ended (no BYE)."""
        book = self.ctx.calls
        for record in book.flow_lost(conn):
            if self.events.wants(CallChanged):
                self.events.publish(book.event('ended', record, None, conn,
                                               'caller' if conn is record.origin else 'callee'))

    def message_received(self, conn: Any, message: SIPMessage) -> None:
        events = self.events
        if MessageIn in events.wanted:
            events.emit(MessageIn, conn, message)
        if message.method is not None:
            self._request_received(conn, message)
        else:
            self._responses(conn, message)
