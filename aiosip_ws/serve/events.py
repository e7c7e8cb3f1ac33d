"""The event stream: what happens in serve, told to whoever listens.

The pipeline publishes typed events (:class:`MessageIn`, :class:`MessageOut`,
:class:`ConnectionOpened`, :class:`ConnectionClosed`, :class:`RegistrationChanged`,
:class:`CallChanged`, :class:`RequestRelayed`, :class:`RequestAnswered`,
:class:`MediaCommand`, :class:`WireMessage`) to an
:class:`EventStream`.  Each consumer subscribes with the kinds it wants and gets a
:class:`Subscription` of its own: a bounded queue and a drop counter.  Publishing never
waits: an event for a full queue is dropped and counted, so a slow consumer loses events
and never slows the relay.

A plain function consumer is called from the event loop, a batch at a time, soon after
the events were published: it must be quick and must not block (the metrics count
there).  A coroutine function consumer runs in a task of its own and may take its time
(a collector over the network, an application's hook): while it awaits, its queue fills
and then drops.  Events of a kind no consumer wants are not even made.
"""
from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from ..core.codec import SIPMessage
from ..transport.throttle import LogThrottle

__all__ = ['Event', 'MessageIn', 'MessageOut', 'ConnectionOpened', 'ConnectionClosed',
           'RegistrationChanged', 'CallChanged', 'RequestRelayed', 'RequestAnswered',
           'MediaCommand', 'WireMessage', 'EventStream', 'Subscription', 'DEFAULT_QUEUE']

logger = logging.getLogger(__name__)
peer_log = LogThrottle(logger)

_now = time.time

#: events a consumer's queue holds by default before it drops
DEFAULT_QUEUE = 10000
#: events a plain function consumer is handed in one pass of the event loop
BATCH = 1000


class Event:
    """Something that happened; ``time`` is when (seconds since the epoch)."""

    #: the fields a handler takes (see :meth:`EventStream.subscribe`)
    FIELDS: tuple[str, ...] = ()

    __slots__ = ('time',)

    def __init__(self) -> None:
        self.time = _now()

    def __repr__(self) -> str:
        fields = ', '.join('%s=%r' % (name, getattr(self, name))
                           for cls in type(self).__mro__ for name in getattr(cls, '__slots__', ())
                           if name not in ('time', 'message'))
        return '<%s %s>' % (type(self).__name__, fields)


class MessageIn(Event):
    """A SIP message serve received on ``flow``."""

    #: its fields, in the order its constructor (and a handler) takes them
    FIELDS = ('flow', 'message')
    __slots__ = ('flow', 'message')

    def __init__(self, flow: Any, message: SIPMessage) -> None:
        self.time = _now()
        self.flow = flow
        self.message = message


class MessageOut(Event):
    """A SIP message serve sent (or tried to: ``sent`` False) on ``flow``."""

    #: its fields, in the order its constructor (and a handler) takes them
    FIELDS = ('flow', 'message', 'sent')
    __slots__ = ('flow', 'message', 'sent')

    def __init__(self, flow: Any, message: SIPMessage, sent: bool) -> None:
        self.time = _now()
        self.flow = flow
        self.message = message
        self.sent = sent


class ConnectionOpened(Event):
    """A connection (WebSocket, TCP or TLS) was opened to or by serve."""

    #: its fields, in the order its constructor (and a handler) takes them
    FIELDS = ('flow',)
    __slots__ = ('flow',)

    def __init__(self, flow: Any) -> None:
        self.time = _now()
        self.flow = flow


class ConnectionClosed(Event):
    """A connection closed; ``code`` is its WebSocket close code (1006: none)."""

    #: its fields, in the order its constructor (and a handler) takes them
    FIELDS = ('flow', 'code')
    __slots__ = ('flow', 'code')

    def __init__(self, flow: Any, code: int | None) -> None:
        self.time = _now()
        self.flow = flow
        self.code = code


class RegistrationChanged(Event):
    """A binding ``added``, ``refreshed`` or ``removed``; ``why`` says what did it
    (``registered``, ``unregistered``, ``replaced``, ``connection closed``,
    ``expired``)."""

    #: its fields, in the order its constructor (and a handler) takes them
    FIELDS = ('change', 'aor', 'contact', 'instance', 'flow', 'source', 'why')
    __slots__ = ('change', 'aor', 'contact', 'instance', 'flow', 'source', 'why')

    def __init__(self, change: str, aor: str, contact: str, instance: str | None, flow: Any,
                 source: tuple[str, int] | None, why: str) -> None:
        self.time = _now()
        self.change, self.aor, self.contact, self.instance = change, aor, contact, instance
        self.flow, self.source, self.why = flow, source, why


class CallChanged(Event):
    """An INVITE's progress through serve: ``attempted`` (relayed), ``ringing`` (a first
    18x), ``answered`` (a 2xx), ``ended`` (a final failure, with its ``status``; a BYE,
    with the BYE's final status; or a party's connection lost, status None).

    ``caller`` and ``callee`` are the INVITE's From and To (a BYE's own, when this node
    did not see the INVITE).  ``started`` and ``answered`` are when the INVITE came and
    its 2xx went (seconds since the epoch; None when unknown); ``ended_by`` of an ended
    call is ``caller`` (its BYE, or its CANCEL), ``callee`` (its BYE, or its failure
    response) or ``serve`` (a failure of serve's own: no binding, Timer C); when a party's
    connection went during the call (no BYE, status None), that party.  ``node`` is the
    node that saw it (``--node-id``, the cluster's name), or None."""

    #: its fields, in the order its constructor (and a handler) takes them
    FIELDS = ('change', 'call_id', 'caller', 'callee', 'status', 'flow', 'started',
              'answered', 'ended_by', 'node')
    __slots__ = ('change', 'call_id', 'caller', 'callee', 'status', 'flow', 'started',
                 'answered', 'ended_by', 'node')

    def __init__(self, change: str, call_id: str, caller: str, callee: str,
                 status: int | None, flow: Any, started: float | None = None,
                 answered: float | None = None, ended_by: str | None = None,
                 node: str | None = None) -> None:
        self.time = _now()
        self.change, self.call_id, self.caller, self.callee = change, call_id, caller, callee
        self.status, self.flow = status, flow
        self.started, self.answered, self.ended_by, self.node = started, answered, ended_by, node


class RequestRelayed(Event):
    """serve began relaying a request (to the bindings of an AOR or to a next hop)."""

    #: its fields, in the order its constructor (and a handler) takes them
    FIELDS = ('method', 'flow')
    __slots__ = ('method', 'flow')

    def __init__(self, method: str | None, flow: Any) -> None:
        self.time = _now()
        self.method = method
        self.flow = flow


class RequestAnswered(Event):
    """The final response to a relayed request went back after ``seconds``."""

    #: its fields, in the order its constructor (and a handler) takes them
    FIELDS = ('method', 'status', 'seconds')
    __slots__ = ('method', 'status', 'seconds')

    def __init__(self, method: str | None, status: int, seconds: float) -> None:
        self.time = _now()
        self.method, self.status, self.seconds = method, status, seconds


class MediaCommand(Event):
    """serve asked its media relay something for the call ``call_id``: ``command`` is an ng
    command (``offer``, ``answer``, ``delete``) and ``outcome`` ``ok``, ``error`` or
    ``timeout`` after ``seconds``; or ``command`` is ``mismatch`` (a call whose legs'
    profiles differ, with no relay to anchor it) and ``outcome`` ``warn`` or ``refuse``."""

    #: its fields, in the order its constructor (and a handler) takes them
    FIELDS = ('command', 'call_id', 'outcome', 'seconds')
    __slots__ = ('command', 'call_id', 'outcome', 'seconds')

    def __init__(self, command: str, call_id: str, outcome: str, seconds: float) -> None:
        self.time = _now()
        self.command, self.call_id, self.outcome, self.seconds = (command, call_id, outcome,
                                                                  seconds)


class WireMessage(Event):
    """The bytes of a SIP message as they crossed the wire, ``direction`` ``in`` or
    ``out``, on ``flow`` (a transport's connection or UDP flow: its ``transport_name``,
    ``local_addr`` and ``remote_addr``): every message a transport received (a malformed
    one too) or sent (each retransmission too), WebSocket and TLS decrypted.  What HEP
    export and traces read; made only while a consumer wants it (see
    :mod:`aiosip_ws.transport.tap`)."""

    #: its fields, in the order its constructor (and a handler) takes them
    FIELDS = ('direction', 'flow', 'data')
    __slots__ = ('direction', 'flow', 'data')

    def __init__(self, direction: str, flow: Any, data: bytes) -> None:
        self.time = _now()
        self.direction, self.flow, self.data = direction, flow, data

    @property
    def transport(self) -> str:
        """``ws``, ``wss``, ``udp``, ``tcp`` or ``tls``; ``node NAME`` for a client of
        another node of the cluster (the message went over the Redis bus, not a socket of
        this node: HEP leaves it to that node)."""
        flow = self.flow
        if getattr(flow, 'is_remote', False):
            return 'node %s' % flow.node
        return str(flow.transport_name)

    @property
    def peer(self) -> tuple[str, int]:
        """The other end as serve's socket sees it (behind nginx: nginx; with the PROXY
        protocol: the client the header names)."""
        flow = self.flow
        return getattr(flow, 'peer_addr', None) or flow.remote_addr  # type: ignore[no-any-return]

    @property
    def source(self) -> tuple[str, int]:
        """Who sent it, as serve's socket sees it."""
        if self.direction == 'in':
            return self.peer
        return self.flow.local_addr  # type: ignore[no-any-return]

    @property
    def destination(self) -> tuple[str, int]:
        """Who it went to, as serve's socket sees it."""
        if self.direction == 'in':
            return self.flow.local_addr  # type: ignore[no-any-return]
        return self.peer


Consumer = Callable[[Any], 'Awaitable[None] | None']
_Route = tuple[tuple[tuple[Callable[..., None], 'Subscription'], ...],
               tuple[tuple[Consumer, 'Subscription'], ...], tuple['Subscription', ...]]


class Subscription:
    """One consumer's queue (see the module)."""

    def __init__(self, stream: EventStream, name: str, consumer: Consumer,
                 kinds: frozenset[type[Event]], maxsize: int, inline: bool = False) -> None:
        self.stream = stream
        self.name = name
        self.consumer = consumer
        self.kinds = kinds
        self.maxsize = maxsize
        self.queue: collections.deque[Event] = collections.deque()
        #: events lost to a full queue
        self.dropped = 0
        #: events handed to the consumer
        self.delivered = 0
        #: events the consumer raised on (logged, at most a few lines a minute)
        self.failed = 0
        self.is_async = inspect.iscoroutinefunction(consumer)
        #: called as each event is published, never queued (see :meth:`EventStream.subscribe`)
        self.inline = inline and not self.is_async
        #: a batch is due (a plain function consumer)
        self.scheduled = False
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        #: kind -> what takes its fields instead of ``consumer`` (inline only)
        self.handlers: dict[type[Event], Callable[..., None]] = {}

    def wake(self) -> None:
        """Something was queued for an async consumer: its task runs (made at first)."""
        if self._ready is None:
            self._ready = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._ready.set()

    def drain(self) -> None:
        """Hand everything queued to a plain function consumer now (before a scrape)."""
        while self.queue:
            self._deliver(len(self.queue))

    def run_batch(self) -> None:
        """Hand a plain function consumer a batch of what is queued (from the loop)."""
        self.scheduled = False
        queue = self.queue
        self._deliver(min(len(queue), BATCH))
        if queue and not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.run_batch)

    def _deliver(self, count: int) -> None:
        """The first ``count`` queued events to the consumer."""
        queue, consumer = self.queue, self.consumer
        delivered = count
        for _ in range(count):
            event = queue.popleft()
            try:
                consumer(event)
            except Exception:  # noqa: BLE001 - a consumer's fault is its own
                self._failed()
                delivered -= 1
        self.delivered += delivered

    def failed_now(self) -> None:
        """The consumer raised on an event (inside an ``except``)."""
        self._failed()

    def _failed(self) -> None:
        self.failed += 1
        error = sys.exc_info()[1]
        peer_log.warning('event consumer failures', 'the event consumer %s failed: %s: %s',
                         self.name, type(error).__name__, error)

    async def _run(self) -> None:
        assert self._ready is not None
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self.queue:
                event = self.queue.popleft()
                try:
                    outcome = self.consumer(event)
                    if outcome is not None:
                        await outcome
                    self.delivered += 1
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001
                    self._failed()

    async def stop(self) -> None:
        """A plain consumer gets what is queued now; an async one's task ends (what it
        had not taken is dropped and counted)."""
        if not self.is_async:
            self.drain()
            return
        task, self._task, self._ready = self._task, None, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.dropped += len(self.queue)
        self.queue.clear()

    async def close(self) -> None:
        """Leave the stream (see :meth:`stop`); what it dropped stays counted under its
        name (:meth:`EventStream.dropped_by_name`)."""
        self.stream._unsubscribe(self)
        await self.stop()
        self.stream._retire(self)


class EventStream:
    """Where serve's pipeline publishes its events (see the module)."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        #: event kind -> the subscriptions that want it
        self._by_kind: dict[type[Event], tuple[Subscription, ...]] = {}
        #: the kinds some consumer takes, with their subscriptions (read-only)
        self.wanted: Mapping[type[Event], tuple[Subscription, ...]] = self._by_kind
        #: event kind -> its handlers (with their subscriptions), its inline consumers
        #: (likewise), its queued subscriptions
        self._routes: dict[type[Event], _Route] = {}
        #: called when the kinds wanted change (a publisher may then start or stop
        #: gathering what some kind of event needs)
        self.on_change: Callable[[], None] | None = None
        #: name -> events the closed subscriptions of that name dropped
        self._retired: dict[str, int] = {}

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subscriptions)

    def subscribe(self, name: str, consumer: Consumer, kinds: Iterable[type[Event]], *,
                  maxsize: int = DEFAULT_QUEUE, inline: bool = False,
                  handlers: Mapping[type[Event], Callable[..., None]] | None = None
                  ) -> Subscription:
        """``consumer(event)`` gets each event of ``kinds`` (see the module); at most
        ``maxsize`` wait for it, more are dropped and counted.

        ``inline``: a plain function that costs a few dictionary operations and never
        blocks (serve's own metrics) is called as each event is published instead: no
        queue, nothing kept alive, nothing to drop.  ``handlers`` (inline only): for the
        kinds it names, a function called with the event's fields (its ``FIELDS``, the
        constructor's arguments) in place of ``consumer``, so that an event only such
        handlers want is never made (:meth:`emit`)."""
        if maxsize < 1:
            raise ValueError('an event queue holds at least one event')
        if handlers and not inline:
            raise ValueError('handlers are for inline subscriptions')
        subscription = Subscription(self, name, consumer, frozenset(kinds), maxsize, inline)
        subscription.handlers = dict(handlers or {})
        self._subscriptions.append(subscription)
        self._index()
        return subscription

    def dropped_by_name(self) -> dict[str, int]:
        """Consumer name -> the events its subscriptions, open and closed, dropped."""
        totals = dict(self._retired)
        for subscription in self._subscriptions:
            totals[subscription.name] = totals.get(subscription.name, 0) + subscription.dropped
        return totals

    def _retire(self, subscription: Subscription) -> None:
        name = subscription.name
        self._retired[name] = self._retired.get(name, 0) + subscription.dropped

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
            self._index()

    def _index(self) -> None:
        kinds = {kind for s in self._subscriptions for kind in s.kinds}
        self._by_kind = {kind: tuple(s for s in self._subscriptions if kind in s.kinds)
                         for kind in kinds}
        self._routes = {
            kind: (tuple((s.handlers[kind], s) for s in subscriptions if kind in s.handlers),
                   tuple((s.consumer, s) for s in subscriptions
                         if s.inline and kind not in s.handlers),
                   tuple(s for s in subscriptions if not s.inline))
            for kind, subscriptions in self._by_kind.items()}
        self.wanted = self._by_kind
        if self.on_change is not None:
            self.on_change()

    def wants(self, kind: type[Event]) -> bool:
        """Whether any consumer takes events of ``kind`` (else do not make them; on a hot
        path ``kind in stream.wanted`` says the same without a call)."""
        return kind in self._by_kind


    def emit(self, kind: type[Event], *fields: Any) -> None:
        """Publish an event of ``kind`` made of ``fields`` (its constructor's arguments),
        made only if a consumer takes event objects: the publishers' call on a hot path."""
        route = self._routes.get(kind)
        if route is None:
            return
        handlers, inline, queued = route
        for handler, subscription in handlers:
            try:
                handler(*fields)
            except Exception:  # noqa: BLE001 - a consumer's fault is its own
                subscription.failed_now()
        if inline or queued:
            self._deliver(kind(*fields), inline, queued)

    def publish(self, event: Event) -> None:
        """Publish ``event`` (already made)."""
        route = self._routes.get(type(event))
        if route is None:
            return
        handlers, inline, queued = route
        if handlers:
            fields = tuple(getattr(event, name) for name in event.FIELDS)
            for handler, subscription in handlers:
                try:
                    handler(*fields)
                except Exception:  # noqa: BLE001 - a consumer's fault is its own
                    subscription.failed_now()
        self._deliver(event, inline, queued)

    def _deliver(self, event: Event, inline: tuple[tuple[Consumer, Subscription], ...],
                 queued: tuple[Subscription, ...]) -> None:
        for consume, subscription in inline:
            try:
                consume(event)
            except Exception:  # noqa: BLE001 - a consumer's fault is its own
                subscription.failed_now()
        for subscription in queued:
            queue = subscription.queue                # Subscription.put, inline: it is hot
            if len(queue) >= subscription.maxsize:
                subscription.dropped += 1
                continue
            queue.append(event)
            if subscription.is_async:
                subscription.wake()
            elif not subscription.scheduled:
                subscription.scheduled = True
                asyncio.get_running_loop().call_soon(subscription.run_batch)

    async def close(self) -> None:
        """The server closes: every consumer stops (see :meth:`Subscription.stop`); the
        subscriptions stay, as the metrics' must for a last scrape."""
        for subscription in list(self._subscriptions):
            await subscription.stop()
