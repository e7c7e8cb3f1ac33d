"""An open-loop SIP-over-WebSocket load generator: the engine of ``aiosip-ws bench``.

``N`` client connections share one asyncio loop (one :class:`~aiosip_ws.Application`,
one WebSocket connection per client).  Transactions are scheduled at fixed
*intended* send times ``t0 + k / rate`` and assigned to clients round-robin;
each latency is measured from the intended time to the final response, so a
server that stalls, or a load generator that falls behind its schedule, shows
up in the latency figures instead of silently lowering the offered load
("coordinated omission").  How late the scheduler actually sent is reported
separately as *send lag*, which tells an overloaded client from a slow server.

Scenarios:

* ``options``: OPTIONS to the server itself (Request-URI ``sip:<domain>``);
* ``register``: each client refreshes its own registration (same Call-ID,
  increasing CSeq), with digest authentication when a password is given; every
  client un-registers at the end;
* ``message``: every client registers first (not measured), then sends MESSAGE
  to the next client's AOR (or to ``to`` when given); the receiving client
  answers 200 itself.  The transaction ends with the final response relayed
  back, so one MESSAGE is four WebSocket messages through a relay;
* ``call``: every client registers first, then calls the next client (or ``to``):
  INVITE with an SDP offer, the callee answers 180 then 200 with an SDP answer by
  itself, ACK, ``hold`` seconds of call, then the caller's BYE and its 200.  One call
  is one "transaction": the rate is calls per second, the latency is the set-up time
  (INVITE to its 200), and a failed INVITE, a BYE not answered 2xx or a time-out is
  a failure.  ACK and BYE follow the route set of the 200 (RFC 3261 §12.2), so they
  cross whatever proxy record-routed the INVITE.

The client side is kept lean on purpose so that a single Python process can load
a server harder than the aiosip dialog API would allow: requests are built with
the codec and sent on aiosip-ws connections, responses are matched to their
transaction by the branch of the top Via (``SIPMessage.top_branch``: no full Via
parse), unanswered transactions are failed by one sweeper task (Timer F), and
incoming MESSAGEs are answered without a dialog.

Percentiles are exact (the latencies of a bounded run are kept and sorted);
``max_transactions`` bounds a run's memory.  ``rate=0`` selects a closed loop
("saturation": every client keeps ``window`` transactions outstanding), where
latency is measured from the real send time, for capacity estimates only.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import math
import socket
import ssl as _ssl
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..adapter.application import Application
from ..core import codec
from ..core.codec import SIPMessage
from ..core.dialog import DialogState
from ..core.digest import Challenge, authorization, choose_challenge
from ..core.grammar import DEFAULT_MAX_FORWARDS, is_net_url, is_sip_uri, split_net_url
from ..core.sipuri import NameAddr, ws_contact
from ..core.transaction import new_branch, new_call_id, new_tag
from ..errors import AiosipWSError, ConfigurationError, DigestError, SIPParseError
from ..options import ClientOptions
from ..transport.connect import connect
from ..transport.discovery import Resolver, Target
from ..transport.tcp import StreamConnection, connect_tcp
from ..transport.udp import UDPEndpoint, listen_udp
from ..transport.websocket import WSConnection, split_ws_url
from .probe import target_domain

__all__ = ['SCENARIOS', 'BenchConfig', 'BenchResult', 'LatencySummary', 'Progress',
           'LoadGenerator', 'percentile', 'summarize', 'run_bench']

logger = logging.getLogger(__name__)

SCENARIOS = ('register', 'message', 'options', 'call')

#: A transaction due within this many seconds is sent now.  The epoll selector
#: rounds every sleep up to the next millisecond, so waiting for the exact
#: instant would make nearly every send ~1 ms late.  Latency is measured from
#: max(intended time, actual send time), so an early send never flatters it.
SEND_TOLERANCE = 0.0005


# ---------------------------------------------------------------------------- statistics
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted values, nearest-rank method (exact)."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    if q <= 0:
        return sorted_values[0]
    rank = math.ceil(q / 100.0 * n)
    return sorted_values[min(n, max(1, rank)) - 1]


@dataclass(frozen=True)
class LatencySummary:
    """Latency figures in seconds (NaN when there is no sample)."""

    count: int
    min: float
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    def as_ms(self) -> dict[str, float | int | None]:
        def ms(v: float) -> float | None:
            return None if math.isnan(v) else round(v * 1000.0, 3)
        return {'count': self.count, 'min': ms(self.min), 'p50': ms(self.p50),
                'p90': ms(self.p90), 'p99': ms(self.p99), 'max': ms(self.max),
                'mean': ms(self.mean)}


def summarize(values: Sequence[float]) -> LatencySummary:
    ordered = sorted(values)
    if not ordered:
        nan = math.nan
        return LatencySummary(0, nan, nan, nan, nan, nan, nan)
    return LatencySummary(len(ordered), ordered[0], percentile(ordered, 50),
                          percentile(ordered, 90), percentile(ordered, 99), ordered[-1],
                          math.fsum(ordered) / len(ordered))


# ---------------------------------------------------------------------------- config
@dataclass
class BenchConfig:
    """What to run.  ``rate`` is transactions per second in total (0: closed loop)."""

    target: str
    clients: int = 10
    rate: float = 100.0
    duration: float = 10.0
    scenario: str = 'options'
    #: seconds before an unanswered transaction counts as a ``timeout`` error (Timer F)
    timeout: float = 5.0
    #: SIP domain of AORs and of OPTIONS (default: the target's host)
    domain: str | None = None
    #: AOR of client ``i`` (``{i}`` and ``{domain}`` are replaced)
    aor_template: str = 'sip:bench{i}@{domain}'
    #: message scenario: send every MESSAGE to this URI instead of to the next client
    to: str | None = None
    #: digest user of client ``i`` (default: the AOR user); ``{i}`` is replaced
    user_template: str | None = None
    password: str | None = None
    expires: int = 300
    body: str = 'aiosip-ws bench'
    #: call scenario: seconds an answered call lasts before the caller's BYE
    hold: float = 1.0
    #: closed loop only: outstanding transactions per client
    window: int = 1
    #: connections opened at the same time during set-up
    connect_concurrency: int = 100
    #: local addresses to bind client sockets to, round-robin (e.g. 127.0.0.2)
    source_addresses: Sequence[str] = ()
    #: seconds allowed for set-up (connections and, for ``message``, registrations)
    setup_timeout: float = 60.0
    max_transactions: int = 2_000_000
    client_options: ClientOptions | None = None
    resolver: Resolver | None = None
    #: un-register the clients at the end (register and message scenarios)
    unregister: bool = True
    #: wall-clock time (``time.time()``) at which to start measuring, after set-up: lets
    #: several generator processes (or machines with synchronised clocks) measure the
    #: same window; None starts as soon as set-up is done
    start_at: float | None = None
    #: ``gc.freeze()`` what set-up created (the connections) for the measurement, so that
    #: the generator's own full collections, which would scan every connection object,
    #: do not pause it and show up as server latency; undone afterwards
    freeze_gc: bool = True

    def validate(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ConfigurationError('scenario must be one of %s, not %r'
                                     % (', '.join(SCENARIOS), self.scenario))
        if self.clients < 1:
            raise ConfigurationError('clients must be at least 1')
        if self.rate < 0 or not math.isfinite(self.rate):
            raise ConfigurationError('rate must be a positive number (0: closed loop)')
        if self.duration <= 0 or not math.isfinite(self.duration):
            raise ConfigurationError('duration must be a positive number of seconds')
        if self.timeout <= 0:
            raise ConfigurationError('timeout must be a positive number of seconds')
        if self.hold < 0 or not math.isfinite(self.hold):
            raise ConfigurationError('hold must be a number of seconds, 0 or more')
        if self.window < 1:
            raise ConfigurationError('window must be at least 1')
        if self.rate and self.rate * self.duration > self.max_transactions:
            raise ConfigurationError('rate x duration = %d transactions, more than the limit of %d'
                                     % (self.rate * self.duration, self.max_transactions))
        if self.connect_concurrency < 1:
            raise ConfigurationError('connect_concurrency must be at least 1')
        if is_net_url(self.target):
            split_net_url(self.target)                 # raises ConfigurationError
        elif not is_sip_uri(self.target):
            split_ws_url(self.target)                  # raises ConfigurationError

    @property
    def sip_domain(self) -> str:
        return self.domain or target_domain(self.target)


# ---------------------------------------------------------------------------- results
@dataclass
class Progress:
    """One progress report (every ``progress_interval`` seconds during the run)."""

    elapsed: float
    sent: int
    answered: int
    errors: int
    outstanding: int
    #: transactions completed per second over the last interval
    rate: float
    #: latency percentiles over the last interval (seconds, NaN if none)
    p50: float
    p99: float

    def line(self) -> str:
        def ms(v: float) -> str:
            return '-' if math.isnan(v) else '%.1f' % (v * 1000.0)
        return ('[%6.1fs] sent %d  answered %d  errors %d  in flight %d  rate %.0f/s  '
                'p50 %s ms  p99 %s ms' % (self.elapsed, self.sent, self.answered, self.errors,
                                          self.outstanding, self.rate, ms(self.p50), ms(self.p99)))


@dataclass
class BenchResult:
    """Everything a run measured; :meth:`as_dict` is the ``--json`` output."""

    config: BenchConfig
    sent: int = 0
    answered: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: array = field(default_factory=lambda: array('d'))
    send_lag: array = field(default_factory=lambda: array('d'))
    connections_opened: int = 0
    connections_failed: int = 0
    connections_lost: int = 0
    connect_errors: list[str] = field(default_factory=list)
    setup_failed: Counter[str] = field(default_factory=Counter)
    requests_received: int = 0
    elapsed: float = 0.0             # from the first intended send to the last completion
    send_window: float = 0.0         # from the first to the last intended send
    setup_seconds: float = 0.0
    #: CPU seconds this process used during the measurement (near ``elapsed``: the
    #: load generator itself was the bottleneck)
    cpu_seconds: float = 0.0

    @property
    def answered_total(self) -> int:
        return sum(self.answered.values())

    @property
    def errors_total(self) -> int:
        return sum(self.errors.values())

    @property
    def ok(self) -> bool:
        """Every connection opened and every transaction got a 2xx."""
        return (self.connections_failed == 0 and self.errors_total == 0 and self.sent > 0
                and all(200 <= code < 300 for code in self.answered)
                and not self.setup_failed)

    def latency(self) -> LatencySummary:
        return summarize(self.latencies)

    def lag(self) -> LatencySummary:
        return summarize(self.send_lag)

    def as_dict(self) -> dict[str, Any]:
        cfg = self.config
        elapsed = self.elapsed or math.nan
        return {
            'target': cfg.target, 'scenario': cfg.scenario, 'clients': cfg.clients,
            'rate': cfg.rate, 'duration': cfg.duration,
            'mode': 'open' if cfg.rate else 'closed',
            'sent': self.sent,
            'answered': {str(code): n for code, n in sorted(self.answered.items())},
            'answered_total': self.answered_total,
            'errors': dict(sorted(self.errors.items())),
            'errors_total': self.errors_total,
            'latency_ms': self.latency().as_ms(),
            'send_lag_ms': self.lag().as_ms(),
            'connections': {'opened': self.connections_opened, 'failed': self.connections_failed,
                            'lost': self.connections_lost},
            'connect_errors': self.connect_errors[:10],
            'setup_failed': dict(self.setup_failed),
            'requests_received': self.requests_received,
            'elapsed_s': round(self.elapsed, 4),
            'setup_s': round(self.setup_seconds, 4),
            'generator_cpu_pct': round(100.0 * self.cpu_seconds / self.elapsed, 1)
            if self.elapsed else None,
            'offered_rate': round(self.sent / self.send_window, 2) if self.send_window else None,
            'achieved_rate': round(self.answered_total / elapsed, 2) if self.elapsed else None,
            'ok': self.ok,
        }

    def table(self) -> str:
        """The human summary: counts, status codes, errors, latencies, connections."""
        d = self.as_dict()
        cfg = self.config
        lines = []
        mode = ('open loop, %g/s offered' % cfg.rate if cfg.rate
                else 'closed loop, window %d per client' % cfg.window)
        lines.append('aiosip-ws bench: %s against %s, %d clients, %s, %g s'
                     % (cfg.scenario, cfg.target, cfg.clients, mode, cfg.duration))
        rows: list[tuple[str, str, str]] = []
        rows.append(('sent', str(self.sent), '%s/s' % _fmt(d['offered_rate'])))
        rows.append(('answered', str(self.answered_total), '%s/s' % _fmt(d['achieved_rate'])))
        for code, n in sorted(self.answered.items()):
            rows.append(('  %d %s' % (code, codec.REASONS.get(code, '')), str(n),
                         _pct(n, self.sent)))
        rows.append(('errors', str(self.errors_total), _pct(self.errors_total, self.sent)))
        for kind, n in sorted(self.errors.items()):
            rows.append(('  ' + kind, str(n), _pct(n, self.sent)))
        width = max(len(r[0]) for r in rows) + 2
        for name, value, extra in rows:
            lines.append('%-*s %10s  %s' % (width, name, value, extra))
        lat, lag = d['latency_ms'], d['send_lag_ms']
        header = '%-*s %10s %10s %10s %10s %10s' % (width, 'ms', 'min', 'p50', 'p90', 'p99', 'max')
        lines.append(header)
        for name, values in (('latency', lat), ('send lag', lag)):
            lines.append('%-*s %10s %10s %10s %10s %10s' % (
                width, name, *(_fmt(values[k]) for k in ('min', 'p50', 'p90', 'p99', 'max'))))
        lines.append('%-*s opened %d, failed %d, lost %d' % (
            width, 'connections', self.connections_opened, self.connections_failed,
            self.connections_lost))
        if d['generator_cpu_pct'] is not None:
            lines.append('%-*s %.0f %% of one core%s' % (
                width, 'generator CPU', d['generator_cpu_pct'],
                ' (saturated: results may be limited by this client)'
                if d['generator_cpu_pct'] >= 90 else ''))
        for error in self.connect_errors[:3]:
            lines.append('  ' + error)
        if self.setup_failed:
            lines.append('%-*s %s' % (width, 'set-up failures', ', '.join(
                '%s: %d' % item for item in sorted(self.setup_failed.items()))))
        if cfg.scenario in ('message', 'call') and not cfg.to:
            lines.append('%-*s %d' % (width, 'MESSAGEs received' if cfg.scenario == 'message'
                                      else 'INVITEs answered', self.requests_received))
        return '\n'.join(lines)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '-'
    if isinstance(value, float):
        return '%.2f' % value if value < 100 else '%.1f' % value
    return str(value)


def _pct(n: int, total: int) -> str:
    return '%.2f %%' % (100.0 * n / total) if total else ''


# ---------------------------------------------------------------------------- clients
class _Client:
    """The SIP identity and per-connection state of one simulated client."""

    __slots__ = ('index', 'conn', 'aor', 'user', 'host', 'contact', 'reg_call_id',
                 'msg_call_id', 'tag', 'cseq', 'peer', 'challenge', 'nc', 'auth_header')

    def __init__(self, index: int, aor: str, user: str) -> None:
        self.index = index
        self.conn: WSConnection | None = None
        self.aor = aor
        self.user = user
        uri = NameAddr.parse(aor).uri
        self.host = uri.host
        self.contact = ''
        self.reg_call_id = new_call_id()
        self.msg_call_id = new_call_id()
        self.tag = new_tag()
        self.cseq = 0
        self.peer: str | None = None
        self.challenge: Challenge | None = None
        self.nc = 0
        self.auth_header = 'Authorization'

    def attach(self, conn: Any) -> None:
        self.conn = conn
        self.contact = _contact_of(conn, NameAddr.parse(self.aor).uri.user or 'bench')


def _contact_of(conn: Any, user: str) -> str:
    """The Contact a client of ``conn`` puts in its requests and 2xx (for WebSocket, the
    ``.invalid`` host of the connection: RFC 7118 §5.1)."""
    transport = getattr(conn, 'transport_name', 'ws')
    if transport == 'udp':
        return '<sip:%s@%s>' % (user, conn.via_host)
    if transport in ('tcp', 'tls'):
        return '<sip:%s@%s;transport=%s>' % (user, conn.via_host, transport)
    return ws_contact(conn.via_host, user)


#: The SDP of the call scenario: audio the generator never sends (port 9, RFC 6335's
#: discard), enough for a proxy or a B2BUA to see an offer and an answer.
_OFFER = (b'v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=aiosip-ws bench\r\nc=IN IP4 127.0.0.1\r\n'
          b't=0 0\r\nm=audio 9 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n'
          b'a=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n')
_ANSWER = _OFFER.replace(b' 0 8\r\n', b' 0\r\n').replace(b'a=rtpmap:8 PCMA/8000\r\n', b'')


class _Call:
    """A call of the call scenario, from its INVITE to the 200 of its BYE."""

    __slots__ = ('call_id', 'invite', 'dialog', 'setup')

    def __init__(self) -> None:
        self.call_id = new_call_id()
        self.invite: SIPMessage | None = None
        self.dialog: DialogState | None = None
        #: seconds from the INVITE (its intended time in an open loop) to its 200
        self.setup = 0.0


#: outcome of an unmeasured transaction: (status, None) or (None, error kind)
_Outcome = tuple['int | None', 'str | None']

class _Txn:
    """One transaction in flight (kept across a digest retry, which keeps its intended time)."""

    __slots__ = ('client', 'method', 'intended', 'sent_at', 'auth_tries', 'measure', 'expires',
                 'done', 'branch', 'conn', 'call')

    def __init__(self, client: _Client, method: str, intended: float, measure: bool,
                 expires: int, done: asyncio.Future[_Outcome] | None = None) -> None:
        self.client = client
        self.method = method
        self.intended = intended
        self.sent_at = intended
        self.auth_tries = 0
        self.measure = measure
        self.expires = expires
        self.done = done
        self.branch = ''
        self.conn: WSConnection | None = None
        self.call: _Call | None = _Call() if method == 'INVITE' else None


class _BenchApplication(Application):
    """Answers incoming MESSAGE/OPTIONS with 200 at once, without aiosip dialogs."""

    def __init__(self, generator: LoadGenerator, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._generator = generator

    def message_received(self, conn: WSConnection, message: SIPMessage) -> None:
        if not message.is_request:
            self._generator._response_received(message)
        elif not _answer(self._generator, conn, message):
            super().message_received(conn, message)

    def ws_connection_lost(self, conn: WSConnection, exc: BaseException | None) -> None:
        self._generator._connection_lost(conn)


class _NetHandler:
    """What the UDP and TCP/TLS transports report, for the load generator."""

    def __init__(self, generator: LoadGenerator) -> None:
        self._generator = generator

    def connection_made(self, conn: Any) -> None:
        pass

    def message_received(self, conn: Any, message: SIPMessage) -> None:
        if not message.is_request:
            self._generator._response_received(message)
        elif not _answer(self._generator, conn, message) and message.method != 'ACK':
            conn.send(codec.make_response(message, 405, to_tag=new_tag()))

    def connection_lost(self, conn: Any, exc: BaseException | None) -> None:
        self._generator._connection_lost(conn)


def _answer(generator: LoadGenerator, conn: Any, request: SIPMessage) -> bool:
    """What a client answers by itself, without a dialog: MESSAGE, OPTIONS and BYE get
    200, an INVITE 180 then 200 with an SDP answer, an ACK nothing.  False for the rest."""
    method = request.method
    if method in ('MESSAGE', 'OPTIONS', 'INVITE'):
        generator.result.requests_received += 1
    if method in ('MESSAGE', 'OPTIONS', 'BYE'):
        conn.send(codec.make_response(request, 200, to_tag=new_tag()))
    elif method == 'INVITE':
        tag, contact = new_tag(), [('Contact', _contact_of(conn, 'bench'))]
        conn.send(codec.make_response(request, 180, to_tag=tag, headers=contact))
        conn.send(codec.make_response(request, 200, to_tag=tag, headers=[
            *contact, ('Content-Type', 'application/sdp')], body=_ANSWER))
    return method in ('MESSAGE', 'OPTIONS', 'BYE', 'INVITE', 'ACK')


ProgressCallback = Callable[[Progress], None]


class LoadGenerator:
    """Runs one benchmark: ``result = await LoadGenerator(config).run()``."""

    def __init__(self, config: BenchConfig, *, on_progress: ProgressCallback | None = None,
                 progress_interval: float = 1.0) -> None:
        config.validate()
        self.config = config
        self.on_progress = on_progress
        self.progress_interval = progress_interval
        self.result = BenchResult(config)
        self.clients: list[_Client] = []
        self._app: _BenchApplication | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outstanding = 0
        self._pending: dict[str, _Txn] = {}
        self._idle: asyncio.Event | None = None
        self._running = False
        self._closed_loop_end = 0.0
        self._targets: list[Target] | None = None
        self._first_intended = 0.0
        self._last_done = 0.0
        #: the UDP sockets and TCP/TLS connections of a udp://, tcp:// or tls:// target
        self._endpoints: list[UDPEndpoint] = []
        self._streams: list[StreamConnection] = []
        #: progress bookkeeping: (latencies seen, answered, errors, perf_counter time)
        self._mark: tuple[int, int, int, float] = (0, 0, 0, time.perf_counter())

    # -- public -------------------------------------------------------------------
    async def run(self) -> BenchResult:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        options = cfg.client_options or ClientOptions()
        self._app = _BenchApplication(self, client_options=options, resolver=cfg.resolver)
        sweeper = self._loop.create_task(self._sweep())
        try:
            started = time.perf_counter()
            await asyncio.wait_for(self._setup(), cfg.setup_timeout)
            self.result.setup_seconds = time.perf_counter() - started
            if any(c.conn is not None for c in self.clients):
                if cfg.start_at is not None:
                    wait = cfg.start_at - time.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    else:
                        logger.warning('set-up ended %.1f s after start_at', -wait)
                frozen = cfg.freeze_gc and gc.isenabled()
                if frozen:
                    gc.collect()
                    gc.freeze()
                try:
                    await self._measure()
                finally:
                    if frozen:
                        gc.unfreeze()
            else:
                logger.warning('no client connected: nothing to measure')
            await self._teardown()
        finally:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
            await self._app.close(1000, 'bench done')
            for conn in self._streams:
                conn.close()
                await conn.wait_closed()
            for endpoint in self._endpoints:
                endpoint.close()
                await endpoint.wait_closed()
            for txn in list(self._pending.values()):
                self._completed(txn, None, 'connection lost')
        return self.result

    # -- set-up -------------------------------------------------------------------
    async def _setup(self) -> None:
        cfg = self.config
        domain = cfg.sip_domain
        for i in range(cfg.clients):
            aor = cfg.aor_template.format(i=i, domain=domain)
            user = (cfg.user_template.format(i=i) if cfg.user_template
                    else NameAddr.parse(aor).uri.user or 'bench')
            self.clients.append(_Client(i, aor, user))
        if is_sip_uri(cfg.target):
            assert self._app is not None
            self._targets = await self._app.resolver.resolve(cfg.target)
        semaphore = asyncio.Semaphore(cfg.connect_concurrency)

        async def connect(client: _Client) -> None:
            async with semaphore:
                try:
                    client.attach(await self._open(client.index))
                except (AiosipWSError, OSError, asyncio.TimeoutError) as exc:
                    self.result.connections_failed += 1
                    if len(self.result.connect_errors) < 10:
                        self.result.connect_errors.append('%s: %s' % (type(exc).__name__, exc))
                else:
                    self.result.connections_opened += 1

        await asyncio.gather(*(connect(c) for c in self.clients))
        if cfg.scenario in ('message', 'call'):
            live = [c for c in self.clients if c.conn is not None]
            if not cfg.to:
                for i, client in enumerate(live):
                    client.peer = live[(i + 1) % len(live)].aor
                await self._register_all(live, cfg.expires, measure_failures=True)

    async def _open(self, index: int) -> Any:
        cfg = self.config
        assert self._app is not None
        if is_net_url(cfg.target):
            return await self._open_net(index)
        options = self._app.client_options
        extra: dict[str, Any] = {}
        if cfg.source_addresses:
            extra['local_addr'] = (cfg.source_addresses[index % len(cfg.source_addresses)], 0)
        return await connect(self._targets or cfg.target, self._app, options,
                             resolver=self._app.resolver, connect_kwargs=extra, logger=logger)

    async def _open_net(self, index: int) -> Any:
        """A UDP socket or a TCP/TLS connection of its own for client ``index`` (no
        retransmission over UDP: a lost message counts as a timeout)."""
        cfg = self.config
        scheme, host, port = split_net_url(cfg.target)
        handler = _NetHandler(self)
        local = cfg.source_addresses[index % len(cfg.source_addresses)] \
            if cfg.source_addresses else '127.0.0.1' if host in ('127.0.0.1', 'localhost') \
            else '0.0.0.0'
        if scheme == 'udp':
            endpoint = await listen_udp(local, 0, handler)
            self._endpoints.append(endpoint)
            loop = asyncio.get_running_loop()
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            return endpoint.flow((infos[0][4][0], infos[0][4][1]))
        ssl_context = None
        if scheme == 'tls':
            options = self._app.client_options if self._app is not None else ClientOptions()
            ssl_context = options.ssl or _ssl.create_default_context()
        conn = await connect_tcp(host, port, handler, ssl_context=ssl_context,
                                 timeout=cfg.timeout)
        self._streams.append(conn)
        return conn

    async def _register_all(self, clients: list[_Client], expires: int,
                            measure_failures: bool) -> None:
        """Register (or un-register) ``clients`` outside the measurement."""
        assert self._loop is not None
        futures = []
        for client in clients:
            if client.conn is None or not client.conn.is_open:
                continue
            done: asyncio.Future[_Outcome] = self._loop.create_future()
            futures.append((client, done))
            self._send(_Txn(client, 'REGISTER', self._loop.time(), False, expires, done))
        for client, done in futures:
            try:
                status, error = await asyncio.wait_for(done, self.config.timeout + 1)
            except asyncio.TimeoutError:
                status, error = None, 'timeout'
            if measure_failures and not (status is not None and 200 <= status < 300):
                kind = 'REGISTER %d' % status if status is not None else 'REGISTER %s' % error
                self.result.setup_failed[kind] += 1
                logger.info('client %d: registration failed: %s', client.index, kind)

    async def _teardown(self) -> None:
        cfg = self.config
        if cfg.unregister and cfg.scenario in ('register', 'message', 'call') and not (
                cfg.scenario in ('message', 'call') and cfg.to):
            self._running = False
            await self._register_all([c for c in self.clients if c.conn is not None], 0,
                                     measure_failures=False)

    # -- measurement --------------------------------------------------------------
    async def _measure(self) -> None:
        cfg = self.config
        assert self._loop is not None and self._idle is not None
        loop = self._loop
        self._running = True
        self._mark = (0, 0, 0, time.perf_counter())
        cpu_started = time.process_time()
        reporter = loop.create_task(self._report()) if self.on_progress else None
        try:
            if cfg.rate:
                await self._open_loop()
            else:
                await self._closed_loop()
            # Let outstanding transactions finish; Timer F ends them after cfg.timeout.
            if self._outstanding:
                self._idle.clear()
                try:
                    await asyncio.wait_for(self._idle.wait(), cfg.timeout + 2 + (
                        cfg.hold + cfg.timeout if cfg.scenario == 'call' else 0))
                except asyncio.TimeoutError:
                    self.result.errors['unfinished'] += self._outstanding
                    logger.warning('%d transaction(s) never finished', self._outstanding)
        finally:
            self._running = False
            self.result.cpu_seconds = time.process_time() - cpu_started
            if reporter is not None:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
        end = loop.time() if self._outstanding else self._last_done
        self.result.elapsed = max(0.0, end - self._first_intended)
        if self.on_progress:
            self.on_progress(self._progress_now(final=True))

    async def _open_loop(self) -> None:
        cfg = self.config
        loop = self._loop
        assert loop is not None
        total = int(round(cfg.rate * cfg.duration))
        interval = 1.0 / cfg.rate
        clients = self.clients
        n = len(clients)
        start = loop.time() + 0.01
        self._first_intended = start
        self._last_done = start
        self.result.send_window = max(interval, (total - 1) * interval) if total > 1 else interval
        lag = self.result.send_lag
        k = 0
        while k < total:
            now = loop.time()
            horizon = now + SEND_TOLERANCE
            while k < total:
                intended = start + k * interval
                if intended > horizon:
                    break
                if intended < now:
                    lag.append(now - intended)
                    self._start(clients[k % n], intended)
                else:
                    lag.append(0.0)
                    self._start(clients[k % n], now)       # a little early: measure from now
                k += 1
            if k < total:
                delay = start + k * interval - SEND_TOLERANCE - loop.time()
                await asyncio.sleep(delay if delay > 0 else 0)

    async def _closed_loop(self) -> None:
        cfg = self.config
        loop = self._loop
        assert loop is not None
        start = loop.time()
        self._first_intended = start
        self._last_done = start
        self._closed_loop_end = start + cfg.duration
        self.result.send_window = cfg.duration
        for client in self.clients:
            for _ in range(cfg.window):
                self.result.send_lag.append(0.0)
                self._start(client, loop.time())
        await asyncio.sleep(cfg.duration)

    def _start(self, client: _Client, intended: float) -> None:
        """Begin one measured transaction of ``client`` intended at ``intended``."""
        self.result.sent += 1
        conn = client.conn
        if conn is None or not conn.is_open:
            self.result.errors['no connection'] += 1
            return
        scenario = self.config.scenario
        method = {'register': 'REGISTER', 'message': 'MESSAGE', 'options': 'OPTIONS',
                  'call': 'INVITE'}[scenario]
        self._send(_Txn(client, method, intended, True, self.config.expires))

    def _request(self, txn: _Txn) -> SIPMessage:
        cfg = self.config
        client = txn.client
        client.cseq += 1
        method = txn.method
        if method == 'REGISTER':
            uri = 'sip:%s' % client.host
            to = '<%s>' % client.aor
            call_id = client.reg_call_id
        elif method == 'MESSAGE':
            uri = cfg.to or client.peer or client.aor
            to = '<%s>' % uri
            call_id = client.msg_call_id
        elif method == 'INVITE':
            assert txn.call is not None
            uri = cfg.to or client.peer or client.aor
            to = '<%s>' % uri
            call_id = txn.call.call_id
        else:
            uri = 'sip:%s' % cfg.sip_domain
            to = '<%s>' % uri
            call_id = client.msg_call_id
        conn = txn.conn
        assert conn is not None
        headers = [('Via', conn.via(txn.branch)),
                   ('Max-Forwards', str(DEFAULT_MAX_FORWARDS)),
                   ('From', '<%s>;tag=%s' % (client.aor, client.tag)),
                   ('To', to), ('Call-ID', call_id), ('CSeq', '%d %s' % (client.cseq, method))]
        body = b''
        if method == 'REGISTER':
            headers.append(('Contact', client.contact))
            headers.append(('Expires', str(txn.expires)))
        if client.challenge is not None and cfg.password is not None and (
                method == 'REGISTER' or client.auth_header == 'Proxy-Authorization'):
            client.nc += 1
            headers.append((client.auth_header, authorization(
                client.challenge, method=method, uri=uri, username=client.user,
                password=cfg.password, nc=client.nc)))
        if method == 'MESSAGE':
            headers.append(('Content-Type', 'text/plain'))
            body = cfg.body.encode('utf-8')
        elif method == 'INVITE':
            headers += [('Contact', client.contact), ('Content-Type', 'application/sdp')]
            body = _OFFER
        request = SIPMessage(method=method, uri=uri, headers=headers, body=body)
        if txn.call is not None:
            txn.call.invite = request
        return request

    def _send(self, txn: _Txn) -> None:
        """Send ``txn`` (again, after a challenge) on its client's connection."""
        assert self._loop is not None
        conn = txn.client.conn
        if conn is None or not conn.is_open:
            self._finish(txn, None, 'no connection')
            return
        txn.conn = conn
        txn.branch = new_branch()
        request = self._request(txn)
        txn.sent_at = self._loop.time()
        self._pending[txn.branch] = txn
        self._outstanding += 1
        conn.send(request)

    def _response_received(self, response: SIPMessage) -> None:
        branch = response.top_branch
        if not branch:
            logger.debug('dropped a response without a Via branch')
            return
        status = response.status or 0
        txn = self._pending.get(branch)
        if txn is None or status < 200:                 # late (timed out) or provisional
            return
        del self._pending[txn.branch]
        if txn.call is not None:
            self._call_progress(txn, txn.call, response, status)
            return
        self._completed(txn, response, None)

    # -- the call scenario ---------------------------------------------------------
    def _call_progress(self, txn: _Txn, call: _Call, response: SIPMessage, status: int) -> None:
        """The final response to a call's INVITE or BYE."""
        assert self._loop is not None and call.invite is not None
        conn = txn.conn
        if txn.method == 'BYE':
            if 200 <= status < 300:
                self._completed(txn, None, None, status=200)
            else:
                self._completed(txn, None, 'BYE %d' % status)
            return
        if status >= 300:
            # the ACK of a failure is hop-by-hop, in the INVITE's transaction (§17.1.1.3)
            if conn is not None and conn.is_open:
                conn.send(codec.invite_companion('ACK', response, uri=call.invite.uri or '',
                                                 to=response.get('To')))
            self._completed(txn, response, None)       # a digest retry, or a failure
            return
        call.setup = self._loop.time() - (txn.intended if self.config.rate else txn.sent_at)
        try:
            call.dialog = DialogState.as_uac(call.invite, response)
        except SIPParseError as exc:
            logger.info('a 2xx to INVITE made no dialog: %s', exc)
            self._completed(txn, None, '2xx without a Contact')
            return
        self._in_dialog(txn, call.dialog.request('ACK', cseq=call.invite.cseq[0]))
        self._loop.call_later(self.config.hold, self._hang_up, txn)

    def _hang_up(self, txn: _Txn) -> None:
        call = txn.call
        assert call is not None and call.dialog is not None and self._loop is not None
        conn = txn.client.conn
        if conn is None or not conn.is_open:
            self._completed(txn, None, 'connection lost')
            return
        txn.method = 'BYE'
        txn.branch = new_branch()
        txn.sent_at = self._loop.time()
        self._pending[txn.branch] = txn            # Timer F for the BYE too, by the sweeper
        self._in_dialog(txn, call.dialog.request('BYE'))

    def _in_dialog(self, txn: _Txn, request: SIPMessage) -> None:
        conn = txn.client.conn
        if conn is None or not conn.is_open:
            return                          # the BYE, if any, will find it gone
        branch = txn.branch if request.method == 'BYE' else new_branch()
        request.headers.insert(0, ('Via', conn.via(branch)))
        txn.conn = conn
        conn.send(request)

    async def _sweep(self) -> None:
        """Timer F for every transaction: fail those unanswered for ``timeout`` seconds.

        Transactions are kept in send order and share one timeout, so only the
        oldest ones need looking at.
        """
        assert self._loop is not None
        timeout = self.config.timeout
        pending = self._pending
        while True:
            await asyncio.sleep(min(0.1, timeout / 4))
            deadline = self._loop.time() - timeout
            while pending:
                txn = next(iter(pending.values()))
                if txn.sent_at > deadline:
                    break
                del pending[txn.branch]
                self._completed(txn, None, 'timeout')

    def _completed(self, txn: _Txn, response: SIPMessage | None, error: str | None, *,
                   status: int | None = None) -> None:
        self._outstanding -= 1
        if status is not None:                     # a call hung up cleanly
            self._finish(txn, status, None)
        elif response is not None:
            status = response.status or 0
            if (status in (401, 407) and self.config.password is not None and txn.auth_tries < 2
                    and self._take_challenge(txn.client, response, status)):
                txn.auth_tries += 1
                self._send(txn)                        # same intended time: counts in latency
                return
            self._finish(txn, status, None)
        else:
            self._finish(txn, None, error)
        if self._outstanding == 0 and self._idle is not None:
            self._idle.set()

    def _take_challenge(self, client: _Client, response: SIPMessage, status: int) -> bool:
        proxy = status == 407
        values = response.get_all('Proxy-Authenticate' if proxy else 'WWW-Authenticate')
        if not values:
            return False
        try:
            client.challenge = choose_challenge(values, proxy=proxy)
        except DigestError as exc:
            logger.info('cannot answer the challenge: %s', exc)
            return False
        client.nc = 0
        client.auth_header = 'Authorization' if status == 401 else 'Proxy-Authorization'
        return True

    def _finish(self, txn: _Txn, status: int | None, error: str | None) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        done = txn.done
        if done is not None and not done.done():
            done.set_result((status, error))
        if not txn.measure:
            return
        result = self.result
        self._last_done = now
        if status is None:
            result.errors[error or 'unknown'] += 1
        else:
            result.answered[status] += 1
            if txn.call is not None and status < 300:
                result.latencies.append(txn.call.setup)
            else:
                result.latencies.append(now - (txn.intended if self.config.rate else txn.sent_at))
        if not self.config.rate and self._running and now < self._closed_loop_end:
            result.send_lag.append(0.0)
            self._start(txn.client, now)

    def _connection_lost(self, conn: WSConnection) -> None:
        if self._running:
            self.result.connections_lost += 1
        for txn in [t for t in self._pending.values() if t.conn is conn]:
            del self._pending[txn.branch]
            self._completed(txn, None, 'connection lost')

    # -- progress -----------------------------------------------------------------
    async def _report(self) -> None:
        assert self.on_progress is not None
        while True:
            await asyncio.sleep(self.progress_interval)
            self.on_progress(self._progress_now())

    def _progress_now(self, final: bool = False) -> Progress:
        result = self.result
        assert self._loop is not None
        index, answered0, errors0, at = self._mark
        now = time.perf_counter()
        answered, errors = result.answered_total, result.errors_total
        if final:
            window = sorted(result.latencies)
            rate = answered / result.elapsed if result.elapsed else 0.0
        else:
            window = sorted(result.latencies[index:])
            rate = (answered + errors - answered0 - errors0) / max(1e-9, now - at)
        self._mark = (len(result.latencies), answered, errors, now)
        return Progress(elapsed=self._loop.time() - self._first_intended, sent=result.sent,
                        answered=answered, errors=errors, outstanding=self._outstanding,
                        rate=rate, p50=percentile(window, 50), p99=percentile(window, 99))


async def run_bench(config: BenchConfig, *, on_progress: ProgressCallback | None = None,
                    progress_interval: float = 1.0) -> BenchResult:
    """Convenience wrapper: ``await run_bench(BenchConfig(...))``."""
    return await LoadGenerator(config, on_progress=on_progress,
                               progress_interval=progress_interval).run()
