"""What an operator sees of ``aiosip-ws serve``: Prometheus metrics, health, registrations.

On the same port as the WebSocket service, plain HTTP ``GET`` (no ``Upgrade``):

``/healthz``
    ``200 ok`` while serving (to anyone: load balancers probe it).
``/metrics``
    the Prometheus text format (``prometheus_client``, a registry of this server's own).
``/registrations``
    JSON: every binding with its AOR, Contact, the client's address and the seconds left.

``/metrics`` and ``/registrations`` answer only clients in the allowed networks
(``--metrics-allow``, loopback by default), 403 to others.  Every label has a bounded
set of values: the SIP methods serve knows and ``other``, the standard close codes and
``other``, the refusal statuses and ``other``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Iterable
from typing import Any, Protocol

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..core.codec import SIPMessage
from ..core.grammar import address_in, parse_networks
from .events import (
    ConnectionClosed,
    ConnectionOpened,
    EventStream,
    MediaCommand,
    MessageIn,
    MessageOut,
    RequestAnswered,
    RequestRelayed,
    Subscription,
)
from .registrar import Registrar


class Observed(Protocol):
    """What the metrics and the admin pages read of a server."""

    @property
    def connections(self) -> Collection[Any]: ...

    @property
    def registrar(self) -> Registrar: ...

    @property
    def metrics(self) -> Metrics: ...

__all__ = ['Metrics', 'AdminEndpoints', 'METHODS', 'CLOSE_CODES']

#: method label values (anything else is ``other``)
METHODS = ('REGISTER', 'INVITE', 'ACK', 'CANCEL', 'BYE', 'OPTIONS', 'MESSAGE', 'SUBSCRIBE',
           'NOTIFY', 'PUBLISH', 'INFO', 'REFER', 'PRACK', 'UPDATE')
#: close-code label values (RFC 6455 §7.4.1; 1006: no close frame)
CLOSE_CODES = ('1000', '1001', '1002', '1003', '1006', '1007', '1008', '1009', '1011')
#: refusal-status label values
REFUSALS = ('400', '403', '404', '426', '503')
#: ng command label values, and their outcomes
NG_COMMANDS = ('offer', 'answer', 'delete')
NG_OUTCOMES = ('ok', 'error', 'timeout')
#: transaction latency buckets (seconds)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 32.0)


# No ``*_created`` series: a timestamp per series doubles the scrape and says nothing here.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


def _bounded(value: str, known: Iterable[str]) -> str:
    return value if value in known else 'other'


class Metrics:
    """The counters of one RelayServer, in a registry of its own.

    With ``$PROMETHEUS_MULTIPROC_DIR`` set (``serve --workers``: prometheus_client's
    multiprocess mode) the values live in files there, and :meth:`exposition` sums every
    process's: a scrape answered by any worker counts them all.  The gauges are then the
    sum over the live workers, each worker setting its own when it is scraped and at
    least once a second (:meth:`update_gauges`).
    """

    def __init__(self, server: Observed) -> None:
        self.server = server
        self.multiprocess = bool(os.environ.get('PROMETHEUS_MULTIPROC_DIR'))
        registry: CollectorRegistry | None
        self.registry = registry = CollectorRegistry(auto_describe=True)
        if self.multiprocess:
            from prometheus_client import multiprocess
            multiprocess.MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
            registry = None          # the values go to the files; the collector reads them
            self._gauges = (
                Gauge('aiosip_ws_connections', 'Open WebSocket connections',
                      multiprocess_mode='livesum'),
                Gauge('aiosip_ws_bindings', 'Registered bindings', multiprocess_mode='livesum'),
                Gauge('aiosip_ws_aors', 'Addresses-of-record with bindings',
                      multiprocess_mode='livesum'))
        else:
            Gauge('aiosip_ws_connections', 'Open WebSocket connections',
                  registry=registry).set_function(lambda: len(server.connections))
            Gauge('aiosip_ws_bindings', 'Registered bindings',
                  registry=registry).set_function(lambda: len(server.registrar))
            Gauge('aiosip_ws_aors', 'Addresses-of-record with bindings',
                  registry=registry).set_function(lambda: server.registrar.aor_count)
        self.opened = Counter('aiosip_ws_connections_opened', 'WebSocket connections accepted',
                              registry=registry)
        self.closed = Counter('aiosip_ws_connections_closed',
                              'WebSocket connections closed, by close code', ['code'],
                              registry=registry)
        self.refused = Counter('aiosip_ws_handshakes_refused',
                               'WebSocket handshakes refused, by HTTP status', ['status'],
                               registry=registry)
        self.requests = Counter('aiosip_ws_sip_requests', 'SIP requests received, by method',
                                ['method'], registry=registry)
        self.responses = Counter('aiosip_ws_sip_responses',
                                 'SIP responses sent to clients, by class', ['class'],
                                 registry=registry)
        self.relayed = Counter('aiosip_ws_relayed_requests',
                               'Requests relayed to registered clients, by method', ['method'],
                               registry=registry)
        self.auth_failures = Counter('aiosip_ws_auth_failures',
                                     'Digest answers refused (wrong, replayed, unknown user)',
                                     registry=registry)
        self.dropped = Counter('aiosip_ws_send_queue_drops',
                               'Messages not sent: the connection was closed or its send '
                               'queue full', registry=registry)
        self.event_drops = Counter('aiosip_ws_event_drops',
                                   'Events a consumer of the event stream lost to its full '
                                   'queue, by consumer', ['consumer'], registry=registry)
        self.ng_commands = Counter('aiosip_ws_rtpengine_commands',
                                   'ng commands sent to rtpengine, by command and outcome',
                                   ['command', 'outcome'], registry=registry)
        self.ng_latency = Histogram('aiosip_ws_rtpengine_seconds',
                                    'ng commands: from sent to rtpengine\'s reply (or failure), '
                                    'by command', ['command'], buckets=BUCKETS,
                                    registry=registry)
        self.mismatches = Counter('aiosip_ws_media_mismatch',
                                  'INVITEs towards a callee whose media profile (WebRTC or plain '
                                  'RTP) differs from the caller\'s with no media relay to join '
                                  'them, by what serve did (warn, refuse)', ['action'],
                                  registry=registry)
        self._media_calls = (Gauge('aiosip_ws_media_calls', 'Calls whose media rtpengine '
                                   'relays for serve now', multiprocess_mode='livesum')
                             if self.multiprocess else
                             Gauge('aiosip_ws_media_calls', 'Calls whose media rtpengine '
                                   'relays for serve now', registry=registry))
        self.hep_packets = Counter('aiosip_ws_hep_packets',
                                   'SIP messages exported as HEP, by collector and outcome: '
                                   'sent, dropped (the collector is down or slow), too_large '
                                   '(collector "*": larger than a HEP packet)',
                                   ['collector', 'outcome'], registry=registry)
        self.app_hooks = Counter('aiosip_ws_app_hooks',
                                 'Calls of the routing app\'s hooks (--app), by hook and '
                                 'outcome: reply, relay, default, error, timeout',
                                 ['hook', 'outcome'], registry=registry)
        self.loop_blocked = Counter('aiosip_ws_loop_blocked',
                                    'Times the event loop was held longer than 100 ms (with '
                                    '--app), by whose code held it: app or other',
                                    ['culprit'], registry=registry)
        self._hep: Any = None
        self._hep_seen: dict[tuple[str, str], int] = {}
        self._media: Any = None
        self._stream: EventStream | None = None
        self._subscription: Subscription | None = None
        self._drops_seen: dict[str, int] = {}
        self.latency = Histogram('aiosip_ws_transaction_seconds',
                                 'Relayed requests: from arrival to the final response sent '
                                 'back, by method', ['method'], buckets=BUCKETS,
                                 registry=registry)
        # label children cached at first use: one dict lookup per message, and series
        # only for the values seen (the scrape stays small)
        self._children: dict[tuple[Any, ...], Any] = {}
        #: counts of the per-message counters not yet added to their series, by (metric,
        #: label value): a dict update per message instead of a call into
        #: prometheus_client and its lock.  Added at each scrape (:meth:`exposition`)
        #: and, with ``serve --workers``, every second (:meth:`update_gauges`).
        self._pending: dict[tuple[Any, ...], int] = {}
        #: the keys of _pending for each method, and for each response class
        self._request_keys = {method: (self.requests, method) for method in METHODS}
        self._relay_keys = {method: (self.relayed, method) for method in METHODS}
        self._class_keys = {klass: (self.responses, '%dxx' % klass) for klass in range(1, 7)}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def _count(self, key: tuple[Any, ...]) -> None:
        pending = self._pending
        pending[key] = pending.get(key, 0) + 1

    def response(self, status: int | None) -> None:
        key = self._class_keys.get((status or 0) // 100)
        if key is not None:
            self._count(key)

    def relay(self, method: str | None) -> None:
        self._count(self._relay_keys.get(method or '') or (self.relayed, 'other'))

    def app_hook(self, hook: str, outcome: str) -> None:
        """A call of a routing app's hook, by what came of it (counted per request: kept
        here until the next scrape, as the per-message counts are)."""
        self._count((self.app_hooks, hook, outcome))

    def flush(self) -> None:
        """Add the per-message counts to their Prometheus series."""
        pending, self._pending = self._pending, {}
        for (metric, *values), count in pending.items():
            self._child(metric, *values).inc(count)

    def transaction(self, method: str | None, seconds: float) -> None:
        self._child(self.latency, _bounded(method or '', METHODS)).observe(seconds)

    def connection_closed(self, code: int | None) -> None:
        self._child(self.closed, _bounded(str(code if code is not None else 1006),
                                          CLOSE_CODES)).inc()

    def handshake_refused(self, status: int) -> None:
        self._child(self.refused, _bounded(str(status), REFUSALS)).inc()

    # -- the event stream's consumer ------------------------------------------------------
    #: the events the metrics count
    KINDS = (MessageIn, MessageOut, ConnectionOpened, ConnectionClosed, RequestRelayed,
             RequestAnswered, MediaCommand)

    def follow(self, stream: EventStream) -> Subscription:
        """Count from ``stream``'s events from now on (a subscription of its own)."""
        self._stream = stream
        self._subscription = stream.subscribe(
            'metrics', self.consume, self.KINDS, inline=True, handlers={
                MessageIn: self._message_in, MessageOut: self._message_out,
                ConnectionOpened: self._opened, ConnectionClosed: self._closed,
                RequestRelayed: self._relayed, RequestAnswered: self._answered,
                MediaCommand: self._media_command})
        return self._subscription

    def follow_media(self, media: Any) -> None:
        """``aiosip_ws_media_calls`` is the number of ``media.calls``."""
        self._media = media
        if not self.multiprocess:
            self._media_calls.set_function(lambda: len(media.calls))

    def follow_hep(self, export: Any) -> None:
        """``aiosip_ws_hep_packets_total`` counts what ``export`` (a
        :class:`~aiosip_ws.serve.hep.HepExport`) did, as of each scrape."""
        self._hep = export

    def consume(self, event: Any) -> None:
        """Count one event (of :attr:`KINDS`)."""
        handler = self._subscription.handlers.get(type(event)) if self._subscription else None
        if handler is not None:
            handler(*(getattr(event, name) for name in event.FIELDS))

    # each takes an event's fields (EventStream.emit: no event object is made for them)
    def _message_in(self, flow: Any, message: SIPMessage) -> None:
        method = message.method
        if method is not None:
            key = self._request_keys.get(method) or (self.requests, 'other')
            pending = self._pending
            pending[key] = pending.get(key, 0) + 1

    def _message_out(self, flow: Any, message: SIPMessage, sent: bool) -> None:
        if message.method is None and sent:
            self.response(message.status)

    def _opened(self, flow: Any) -> None:
        self.opened.inc()

    def _closed(self, flow: Any, code: int | None) -> None:
        self.connection_closed(code)

    def _relayed(self, method: str | None, flow: Any) -> None:
        self.relay(method)

    def _answered(self, method: str | None, status: int, seconds: float) -> None:
        self.transaction(method, seconds)

    def _media_command(self, command: str, call_id: str, outcome: str, seconds: float) -> None:
        if command == 'mismatch':
            self._child(self.mismatches, _bounded(outcome, ('warn', 'refuse'))).inc()
            return
        command = _bounded(command, NG_COMMANDS)
        self._child(self.ng_commands, command, _bounded(outcome, NG_OUTCOMES)).inc()
        self._child(self.ng_latency, command).observe(seconds)

    def _catch_up(self) -> None:
        """What the event queue holds, counted now; the consumers' drops since the last
        look added to their counter."""
        if self._subscription is not None:
            self._subscription.drain()
        if self._stream is not None:
            for name, dropped in self._stream.dropped_by_name().items():
                seen = self._drops_seen.get(name, 0)
                if dropped > seen:
                    self._child(self.event_drops, name).inc(dropped - seen)
                    self._drops_seen[name] = dropped
        if self._hep is not None:
            for key, count in self._hep.counts().items():
                seen = self._hep_seen.get(key, 0)
                if count > seen:
                    self._child(self.hep_packets, *key).inc(count - seen)
                    self._hep_seen[key] = count

    def update_gauges(self) -> None:
        """Multiprocess mode: this worker's share of the gauges and its counts, now."""
        self._catch_up()
        self.flush()
        if self.multiprocess:
            connections, bindings, aors = self._gauges
            connections.set(len(self.server.connections))
            bindings.set(len(self.server.registrar))
            aors.set(self.server.registrar.aor_count)
            if self._media is not None:
                self._media_calls.set(len(self._media.calls))

    def exposition(self) -> bytes:
        self.update_gauges()
        return bytes(generate_latest(self.registry))


class AdminEndpoints:
    """The plain-HTTP side of the listener (``ServerOptions.http_handler``)."""

    def __init__(self, server: Observed, allow: Iterable[str] = ('127.0.0.0/8', '::1/128'),
                 *, healthy: Callable[[], bool] | None = None) -> None:
        self.server = server
        self.allow = parse_networks(allow, '--metrics-allow')
        self.healthy = healthy or (lambda: True)
        #: the console's pages (``/calls``: :class:`~aiosip_ws.serve.console.Console`, set
        #: by serve's life cycle with ``--admin-token``; None: no /calls)
        self.console: Any = None

    def allowed(self, address: str) -> bool:
        return address_in(address, self.allow)

    def __call__(self, path: str, headers: Any, address: str) -> tuple[Any, ...] | None:
        route = path.split('?', 1)[0]
        if route == '/healthz':
            if self.healthy():
                return 200, 'text/plain; charset=utf-8', b'ok\n'
            return 503, 'text/plain; charset=utf-8', b'draining\n'
        if route in ('/calls', '/calls.json') or route.startswith('/calls/'):
            if self.console is None:
                return 404, 'text/plain; charset=utf-8', b'no console here (--admin-token)\n'
            return self.console(path, headers, address)  # type: ignore[no-any-return]
        if route not in ('/metrics', '/registrations'):
            return None
        if not self.allowed(address):
            return 403, 'text/plain; charset=utf-8', b'not from this address\n'
        if route == '/metrics':
            return 200, CONTENT_TYPE_LATEST, self.server.metrics.exposition()
        now = self.server.registrar.clock()
        rows = [{'aor': b.aor, 'contact': str(b.contact), 'q': b.q,
                 'remote': '%s:%s' % getattr(b.connection, 'remote_addr', ('?', 0)),
                 'expires': b.remaining(now)}
                for b in self.server.registrar.bindings()]
        return 200, 'application/json', (json.dumps(rows, indent=1) + '\n').encode()
