"""The transaction layer on asyncio: the one table of client transactions in the project
(serve's proxy, the aiosip adapter, the bridge to UDP/TCP/TLS and the probe all send
their requests through a :class:`TransactionLayer`), and the server transactions of UDP.

Client transactions are matched by RFC 3261 §17.1.3 keys (top Via branch, CSeq method)
and indexed by flow too, so that a closing flow ends what it carries without a scan.
Over a reliable flow (WebSocket, TCP, TLS, another cluster node) a client transaction is
a future and one timer handle: no retransmission, nothing to absorb (§17.1.1.2 and
§17.1.2.2 leave only Timer B/F there), so no state machine is built, and the ACK of a
failure to INVITE (one message, never repeated) is left to the transaction user that
reads the failure.  The timer is re-armed for a proxy's Timer C
(:meth:`TransactionLayer.rearm`).

Over UDP it carries out what :mod:`aiosip_ws.core.transaction`'s state machines ask: it
sends and retransmits (Timers A, E, G), absorbs retransmitted requests and responses,
ACKs non-2xx final responses to INVITE, keeps INVITE transactions in RFC 6026's Accepted
state so that 2xx retransmissions reach the caller (Timers L, M), and times out (Timers
B, F, H).  A flow is anything with ``send(message) -> bool`` and a ``reliable``
attribute.  Everything is bounded by ``max_transactions``.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ..core import codec
from ..core.codec import SIPMessage
from ..core.transaction import (
    T1,
    T2,
    T4,
    Action,
    ClientTransaction,
    Deliver,
    Send,
    ServerTransaction,
    Start,
    Stop,
    Timeout,
    client_key,
    server_key,
)
from ..errors import ConnectionLost, SIPParseError, TransactionTimeout, TransportError

__all__ = ['Flow', 'TransactionLayer', 'MAX_TRANSACTIONS']

logger = logging.getLogger(__name__)

#: transactions kept at once by default, client and server together
MAX_TRANSACTIONS = 20000


class Flow(Protocol):
    """Where a transaction's messages go: a UDP peer, a TCP/TLS or WebSocket connection."""

    @property
    def reliable(self) -> bool: ...

    def send(self, message: SIPMessage) -> bool: ...


class _Entry:
    """A transaction run by a state machine (server transactions, and client ones over
    UDP)."""

    __slots__ = ('txn', 'flow', 'timers', 'future', 'on_response', 'key', 'server')

    def __init__(self, txn: ClientTransaction | ServerTransaction, flow: Flow, key: Any,
                 server: bool) -> None:
        self.txn, self.flow, self.key, self.server = txn, flow, key, server
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.future: asyncio.Future[SIPMessage] | None = None
        self.on_response: Callable[[SIPMessage], None] | None = None


class _Reliable:
    """A client transaction over a reliable flow: its future and one timer."""

    __slots__ = ('key', 'flow', 'future', 'on_response', 'timer', 'request')

    def __init__(self, key: tuple[str, str], flow: Flow, future: asyncio.Future[SIPMessage],
                 on_response: Callable[[SIPMessage], None] | None,
                 request: SIPMessage) -> None:
        self.key, self.flow, self.future, self.on_response = key, flow, future, on_response
        self.request = request
        self.timer: asyncio.TimerHandle | None = None


def _flow_send(flow: Flow, message: SIPMessage) -> bool:
    return flow.send(message)


class TransactionLayer:
    """The client and server transactions of one transaction user.

    ``send(flow, message) -> bool`` is how the client side puts a message on the wire
    (requests, their retransmissions, the ACKs it makes): serve passes its own, which
    publishes each message as an event.  Server transactions answer through
    ``flow.send``."""

    def __init__(self, *, max_transactions: int = MAX_TRANSACTIONS, t1: float = T1,
                 t2: float = T2, t4: float = T4,
                 send: Callable[[Flow, SIPMessage], bool] | None = None) -> None:
        self.max_transactions = max_transactions
        self.t1, self.t2, self.t4 = t1, t2, t4
        self._send: Callable[[Flow, SIPMessage], bool] = send or _flow_send
        self._client: dict[tuple[str, str], _Entry | _Reliable] = {}
        self._server: dict[tuple[str, str, str], _Entry] = {}
        #: flow -> its client transactions waiting for a final response, in the order
        #: they were sent
        self._by_flow: dict[Flow, dict[Any, _Entry | _Reliable]] = {}
        #: flow -> its client transactions over UDP that have their final response and
        #: linger for retransmissions (Timers D, K; RFC 6026's Accepted state, 32 s)
        self._answered_by_flow: dict[Flow, dict[Any, _Entry | _Reliable]] = {}
        #: flow -> its server transactions
        self._server_by_flow: dict[Flow, dict[Any, _Entry | _Reliable]] = {}

    def __len__(self) -> int:
        return len(self._client) + len(self._server)

    @property
    def clients(self) -> int:
        """How many client transactions are open."""
        return len(self._client)

    @property
    def full(self) -> bool:
        return len(self) >= self.max_transactions

    def pending_on(self, flow: Flow) -> int:
        """How many client transactions over ``flow`` wait for their final response (those
        that have it and only absorb retransmissions do not count: a trunk carrying 25
        calls a second has 800 INVITEs in RFC 6026's Accepted state)."""
        entries = self._by_flow.get(flow)
        return 0 if entries is None else len(entries)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._client

    # -- client transactions --------------------------------------------------------------
    def send_request(self, flow: Flow, request: SIPMessage, *,
                     on_response: Callable[[SIPMessage], None] | None = None,
                     branch: str | None = None, timeout: float | None = None
                     ) -> asyncio.Future[SIPMessage]:
        """Send ``request`` (its top Via, with a fresh branch, already added; pass that
        ``branch`` when it is known, to spare parsing the Via) in a new client
        transaction.  The future gets the first final response, or fails with
        :class:`TransactionTimeout` (Timer B/F, after ``timeout`` over a reliable flow:
        64*T1 unless given) or :class:`ConnectionLost`; ``on_response`` sees every
        response passed up: provisionals, the final one, and (INVITE over UDP) 2xx
        retransmissions and forked 2xx in the Accepted state."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SIPMessage] = loop.create_future()
        if request.method == 'ACK':
            if not self._send(flow, request):
                future.set_exception(ConnectionLost('the ACK could not be sent'))
            else:
                future.set_result(request)
            return future
        key = (branch, request.method or '') if branch else client_key(request)
        if not key[0]:
            raise SIPParseError('a request sent in a transaction needs a Via with a branch')
        client = self._client
        if key in client:
            raise TransportError('a client transaction with branch %s is already open' % key[0])
        if self.full:
            future.set_exception(TransportError(
                'too many transactions open (%d): the request was not sent' % len(self)))
            return future
        if flow.reliable:
            return self._reliable(loop, future, flow, request, key, timeout, on_response)
        entry = _Entry(ClientTransaction(request, reliable=False, t1=self.t1, t2=self.t2,
                                         t4=self.t4), flow, key, server=False)
        entry.future, entry.on_response = future, on_response
        client[key] = entry
        self._index(self._by_flow, flow, key, entry)
        assert isinstance(entry.txn, ClientTransaction)
        self._run(entry, entry.txn.start())
        return future

    def send_reliable(self, flow: Flow, request: SIPMessage, branch: str,
                      timeout: float | None = None) -> asyncio.Future[SIPMessage]:
        """:meth:`send_request` of a request other than ACK over a reliable flow, with its
        branch known and no ``on_response``: the WebSocket path, with nothing to decide."""
        loop = asyncio.get_running_loop()
        key = (branch, request.method or '')
        if key in self._client or self.full:
            return self.send_request(flow, request, branch=branch, timeout=timeout)
        return self._reliable(loop, loop.create_future(), flow, request, key, timeout, None)

    def _reliable(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[SIPMessage],
                  flow: Flow, request: SIPMessage, key: tuple[str, str], timeout: float | None,
                  on_response: Callable[[SIPMessage], None] | None
                  ) -> asyncio.Future[SIPMessage]:
        entry = _Reliable(key, flow, future, on_response, request)
        entry.timer = loop.call_later(64 * self.t1 if timeout is None else timeout,
                                      self._expire, entry, 'Timer F', timeout)
        self._client[key] = entry
        on_flow = self._by_flow.get(flow)
        if on_flow is None:
            on_flow = self._by_flow[flow] = {}
        on_flow[key] = entry                       # (_index, inlined: the WebSocket path)
        if not self._send(flow, request):         # closed, or its peer stopped reading
            self._end(entry, ConnectionLost('%r cannot take more: the request was not sent'
                                            % (flow,)))
        return future

    def response_received(self, response: SIPMessage, flow: Flow | None = None) -> bool:
        """A response from the network (over ``flow``, when known): False when it matches
        no client transaction (a stray, or a 2xx after the transaction ended: the TU
        decides).  Over a reliable flow a response must come over the flow its request
        went out on."""
        try:
            key = (response.top_branch or '', response.cseq[1])
        except SIPParseError:
            return False
        entry = self._client.get(key)
        if entry is None:
            return False
        if type(entry) is _Reliable:
            if flow is not None and entry.flow is not flow:
                return False
            if (response.status or 0) >= 200:
                self._end(entry, response)
            elif entry.on_response is not None:
                self._tell(entry.on_response, response)
            return True
        assert isinstance(entry, _Entry)
        txn = entry.txn
        assert isinstance(txn, ClientTransaction)
        ack = None
        if txn.invite and (response.status or 0) >= 300:
            # RFC 3261 17.1.1.3: the ACK of a non-2xx goes hop by hop, in the transaction
            ack = codec.invite_companion('ACK', txn.request, uri=txn.request.uri or '',
                                         to=response.get('To'))
            routes = txn.request.get_all('Route')
            if routes:
                ack.headers[2:2] = [('Route', value) for value in routes]
        self._run(entry, txn.response(response, ack=ack))
        return True

    def rearm(self, key: tuple[str, str], seconds: float, timer: str) -> None:
        """Give the client transaction ``key`` (branch, method) ``seconds`` more from now
        to get its final response: a proxy's Timer C, re-armed by each provisional
        response to an INVITE (RFC 3261 §16.6 step 11).  Over UDP it runs beside the
        state machine's own timers."""
        entry = self._client.get(key)
        if entry is None:
            return
        loop = asyncio.get_running_loop()
        if type(entry) is _Reliable:
            if entry.timer is not None:
                entry.timer.cancel()
            entry.timer = loop.call_later(seconds, self._expire, entry, timer, seconds)
            return
        assert isinstance(entry, _Entry)
        old = entry.timers.pop(timer, None)
        if old is not None:
            old.cancel()
        entry.timers[timer] = loop.call_later(seconds, self._tu_timeout, entry, timer, seconds)

    def finish(self, key: tuple[str, str], outcome: SIPMessage | BaseException) -> None:
        """End the client transaction ``key`` now, its future getting ``outcome`` (for a
        request another party answered or gave up on: a cluster node gone)."""
        entry = self._client.get(key)
        if entry is None:
            return
        if type(entry) is _Reliable:
            self._end(entry, outcome)
            return
        assert isinstance(entry, _Entry)
        if entry.future is not None and not entry.future.done():
            _settle(entry.future, outcome)
        self._forget(entry)

    def _end(self, entry: _Reliable, outcome: SIPMessage | BaseException) -> None:
        key = entry.key
        if self._client.get(key) is entry:
            del self._client[key]
        on_flow = self._by_flow.get(entry.flow)    # (_unindex, inlined)
        if on_flow is not None:
            on_flow.pop(key, None)
            if not on_flow:
                del self._by_flow[entry.flow]
        if entry.timer is not None:
            entry.timer.cancel()
        future = entry.future
        if isinstance(outcome, BaseException):
            if not future.done():
                future.set_exception(outcome)
            return
        if entry.on_response is not None:
            self._tell(entry.on_response, outcome)
        if not future.done():
            future.set_result(outcome)

    def _expire(self, entry: _Reliable, timer: str, seconds: float | None) -> None:
        entry.timer = None
        request = entry.request
        self._end(entry, TransactionTimeout('no final response to %s %s within %.0f s (%s)' % (
            request.method, request.uri, 64 * self.t1 if seconds is None else seconds, timer)))

    def _tu_timeout(self, entry: _Entry, timer: str, seconds: float) -> None:
        entry.timers.pop(timer, None)
        future = entry.future
        if future is not None and not future.done():
            request = entry.txn.request
            future.set_exception(TransactionTimeout(
                'no final response to %s %s within %.0f s (%s)' % (request.method, request.uri,
                                                                   seconds, timer)))

    @staticmethod
    def _tell(on_response: Callable[[SIPMessage], None], response: SIPMessage) -> None:
        try:
            on_response(response)
        except Exception:  # noqa: BLE001
            logger.exception('an on_response callback failed')

    # -- server transactions --------------------------------------------------------------
    def request_received(self, flow: Flow, request: SIPMessage) -> SIPMessage | None:
        """A request from the network.  Returns it when the TU is to handle it (a new
        request, or the ACK of a 2xx), None when the transaction layer took it (a
        retransmission, answered again if need be, or the ACK of a non-2xx)."""
        try:
            key = server_key(request)
        except SIPParseError:
            return request
        entry = self._server.get(key)
        if entry is not None:
            assert isinstance(entry.txn, ServerTransaction)
            actions = entry.txn.request_again(request)
            self._run(entry, [a for a in actions if not isinstance(a, Deliver)])
            # the ACK of a 2xx (RFC 6026 Accepted state) is the TU's
            return request if any(isinstance(a, Deliver) for a in actions) else None
        if request.method == 'ACK' or not key[0]:
            return request                                  # an ACK of a 2xx: end to end
        if self.full:
            flow.send(codec.make_response(request, 503, headers=[('Retry-After', '5')]))
            logger.warning('%d transactions open: a %s got 503', len(self), request.method)
            return None
        txn = ServerTransaction(request, reliable=flow.reliable, t1=self.t1, t2=self.t2,
                                t4=self.t4)
        entry = self._server[key] = _Entry(txn, flow, key, server=True)
        self._index(self._server_by_flow, flow, key, entry)
        return request

    def respond(self, response: SIPMessage, flow: Flow | None = None) -> None:
        """Send ``response`` through the server transaction it answers (found by its Via
        and CSeq), which resends it as the RFC says.  Without one (it ended, or the
        request had no RFC 3261 branch) it goes straight to ``flow``."""
        try:
            entry = self._server.get(server_key(response))
        except SIPParseError:
            entry = None
        if entry is None:
            if flow is not None:
                flow.send(response)
            return
        assert isinstance(entry.txn, ServerTransaction)
        self._run(entry, entry.txn.respond(response))

    # -- the machinery ------------------------------------------------------------------
    @staticmethod
    def _index(index: dict[Flow, dict[Any, _Entry | _Reliable]], flow: Flow, key: Any,
               entry: _Entry | _Reliable) -> None:
        on_flow = index.get(flow)
        if on_flow is None:
            on_flow = index[flow] = {}
        on_flow[key] = entry

    @staticmethod
    def _unindex(index: dict[Flow, dict[Any, _Entry | _Reliable]], flow: Flow,
                 key: Any) -> None:
        on_flow = index.get(flow)
        if on_flow is not None:
            on_flow.pop(key, None)
            if not on_flow:
                del index[flow]

    def _run(self, entry: _Entry, actions: list[Action]) -> None:
        loop = asyncio.get_running_loop()
        send = entry.flow.send if entry.server else functools.partial(self._send, entry.flow)
        for action in actions:
            if isinstance(action, Send):
                if not send(action.message):
                    self._run(entry, entry.txn.transport_error())
                    return
            elif isinstance(action, Start):
                old = entry.timers.pop(action.name, None)
                if old is not None:
                    old.cancel()
                entry.timers[action.name] = loop.call_later(action.seconds, self._fire, entry,
                                                            action.name)
            elif isinstance(action, Stop):
                handle = entry.timers.pop(action.name, None)
                if handle is not None:
                    handle.cancel()
            elif isinstance(action, Deliver):
                self._deliver(entry, action.message)
            elif isinstance(action, Timeout):
                self._timed_out(entry, action.timer)
        if entry.txn.terminated:
            self._forget(entry)

    def _fire(self, entry: _Entry, name: str) -> None:
        entry.timers.pop(name, None)
        self._run(entry, entry.txn.timer(name))

    def _deliver(self, entry: _Entry, message: SIPMessage) -> None:
        if entry.on_response is not None:
            self._tell(entry.on_response, message)
        future = entry.future
        if future is not None and not future.done() and (message.status or 0) >= 200:
            future.set_result(message)
            if not entry.server and not entry.txn.terminated:     # it lingers: answered
                self._unindex(self._by_flow, entry.flow, entry.key)
                self._index(self._answered_by_flow, entry.flow, entry.key, entry)

    def _timed_out(self, entry: _Entry, timer: str) -> None:
        future = entry.future
        if future is None or future.done():
            if entry.server and timer == 'H':
                logger.info('no ACK for the %s response (Timer H)', entry.txn.method)
            return
        request = entry.txn.request
        if timer == 'transport':
            future.set_exception(ConnectionLost('%s %s could not be sent' % (request.method,
                                                                             request.uri)))
        else:
            future.set_exception(TransactionTimeout(
                'no final response to %s %s within %.0f s (Timer %s)' % (
                    request.method, request.uri, 64 * self.t1, timer)))

    def _forget(self, entry: _Entry, why: str | None = None) -> None:
        for handle in entry.timers.values():
            handle.cancel()
        entry.timers.clear()
        table: dict[Any, _Entry | _Reliable] = (self._server if entry.server  # type: ignore[assignment]
                                                else self._client)
        if table.get(entry.key) is entry:
            del table[entry.key]
        if entry.server:
            self._unindex(self._server_by_flow, entry.flow, entry.key)
        else:
            self._unindex(self._by_flow, entry.flow, entry.key)
            self._unindex(self._answered_by_flow, entry.flow, entry.key)
        if entry.future is not None and not entry.future.done():
            entry.future.set_exception(ConnectionLost(
                why or 'the %s transaction ended without a final response' % entry.txn.method))

    def flow_lost(self, flow: Flow, why: str | None = None) -> None:
        """A connection closed: its transactions end at once (the TU sees
        :class:`ConnectionLost`, saying ``why`` when given)."""
        for index in (self._by_flow, self._answered_by_flow, self._server_by_flow):
            for entry in list(index.pop(flow, {}).values()):
                if type(entry) is _Reliable:
                    self._end(entry, ConnectionLost(
                        why or 'the connection %r closed before the final response' % (flow,)))
                else:
                    assert isinstance(entry, _Entry)
                    if why is not None:
                        self._forget(entry, why)
                    else:
                        self._run(entry, entry.txn.transport_error())

    def close(self, why: str = 'the transaction layer closed') -> None:
        """End every transaction (waiting futures fail with ConnectionLost)."""
        for entry in list(self._client.values()) + list(self._server.values()):
            if type(entry) is _Reliable:
                self._end(entry, ConnectionLost(why))
            else:
                assert isinstance(entry, _Entry)
                self._forget(entry, why)


def _settle(future: asyncio.Future[SIPMessage], outcome: SIPMessage | BaseException) -> None:
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
