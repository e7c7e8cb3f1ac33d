"""The transaction layer on asyncio: :mod:`aiosip_ws.core.transaction`'s state machines
with real timers, for any flow that can send a message (UDP, TCP, TLS, WebSocket).

:class:`TransactionLayer` keeps the client and server transactions of one transaction
user, matched by RFC 3261 §17.1.3/§17.2.3 keys.  It carries out what the state machines
ask: it sends and retransmits over UDP (Timers A, E, G), absorbs retransmitted requests
and responses, ACKs non-2xx final responses to INVITE, keeps INVITE transactions in RFC
6026's Accepted state so that 2xx retransmissions reach the caller (Timers L, M), and
times out (Timers B, F, H).  A flow is anything with ``send(message) -> bool`` and a
``reliable`` attribute.  Everything is bounded by ``max_transactions``.
"""
from __future__ import annotations

import asyncio
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

    reliable: bool

    def send(self, message: SIPMessage) -> bool: ...


class _Entry:
    __slots__ = ('txn', 'flow', 'timers', 'future', 'on_response', 'key', 'server')

    def __init__(self, txn: ClientTransaction | ServerTransaction, flow: Flow, key: Any,
                 server: bool) -> None:
        self.txn, self.flow, self.key, self.server = txn, flow, key, server
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.future: asyncio.Future[SIPMessage] | None = None
        self.on_response: Callable[[SIPMessage], None] | None = None


class TransactionLayer:
    """The client and server transactions of one transaction user."""

    def __init__(self, *, max_transactions: int = MAX_TRANSACTIONS, t1: float = T1,
                 t2: float = T2, t4: float = T4) -> None:
        self.max_transactions = max_transactions
        self.t1, self.t2, self.t4 = t1, t2, t4
        self._client: dict[tuple[str, str], _Entry] = {}
        self._server: dict[tuple[str, str, str], _Entry] = {}

    def __len__(self) -> int:
        return len(self._client) + len(self._server)

    @property
    def full(self) -> bool:
        return len(self) >= self.max_transactions

    # -- client transactions --------------------------------------------------------------
    def send_request(self, flow: Flow, request: SIPMessage, *,
                     on_response: Callable[[SIPMessage], None] | None = None
                     ) -> asyncio.Future[SIPMessage]:
        """Send ``request`` (its top Via, with a fresh branch, already added) in a new
        client transaction.  The future gets the first final response, or fails with
        :class:`TransactionTimeout` (Timer B/F) or :class:`ConnectionLost`;
        ``on_response`` sees every response passed up: provisionals, the final one, and
        (INVITE) 2xx retransmissions and forked 2xx in the Accepted state."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SIPMessage] = loop.create_future()
        if request.method == 'ACK':
            if not flow.send(request):
                future.set_exception(ConnectionLost('the ACK could not be sent'))
            else:
                future.set_result(request)
            return future
        key = client_key(request)
        if not key[0]:
            raise SIPParseError('a request sent in a transaction needs a Via with a branch')
        if key in self._client:
            raise TransportError('a client transaction with branch %s is already open' % key[0])
        if self.full:
            future.set_exception(TransportError(
                'too many transactions open (%d): the request was not sent' % len(self)))
            return future
        txn = ClientTransaction(request, reliable=flow.reliable, t1=self.t1, t2=self.t2,
                                t4=self.t4)
        entry = _Entry(txn, flow, key, server=False)
        entry.future, entry.on_response = future, on_response
        self._client[key] = entry
        self._run(entry, txn.start())
        return future

    def response_received(self, response: SIPMessage) -> bool:
        """A response from the network: False when it matches no client transaction (a
        stray, or a 2xx after the transaction ended: the TU decides)."""
        try:
            key = client_key(response)
        except SIPParseError:
            return False
        entry = self._client.get(key)
        if entry is None:
            return False
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
        self._server[key] = _Entry(txn, flow, key, server=True)
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

    def acked_by_us(self, ack: SIPMessage) -> bool:
        """Whether ``ack`` is the ACK of a non-2xx this layer already sent itself (its
        INVITE client transaction is in Completed: RFC 3261 §17.1.1.3)."""
        try:
            top = ack.top_via
        except SIPParseError:
            return False
        entry = self._client.get(((top.branch if top else '') or '', 'INVITE'))
        return entry is not None and entry.txn.state == 'completed'

    # -- the machinery ------------------------------------------------------------------
    def _run(self, entry: _Entry, actions: list[Action]) -> None:
        loop = asyncio.get_running_loop()
        for action in actions:
            if isinstance(action, Send):
                if not entry.flow.send(action.message):
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
            try:
                entry.on_response(message)
            except Exception:  # noqa: BLE001
                logger.exception('an on_response callback failed')
        future = entry.future
        if future is not None and not future.done() and (message.status or 0) >= 200:
            future.set_result(message)

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

    def _forget(self, entry: _Entry) -> None:
        for handle in entry.timers.values():
            handle.cancel()
        entry.timers.clear()
        table: dict[Any, _Entry] = self._server if entry.server else self._client
        if table.get(entry.key) is entry:
            del table[entry.key]
        if entry.future is not None and not entry.future.done():
            entry.future.set_exception(ConnectionLost('the %s transaction ended without a final '
                                                      'response' % entry.txn.method))

    def flow_lost(self, flow: Flow) -> None:
        """A connection closed: its transactions end (the TU sees ConnectionLost)."""
        for table in (self._client, self._server):
            for entry in [e for e in table.values() if e.flow is flow]:
                self._run(entry, entry.txn.transport_error())

    def close(self) -> None:
        """End every transaction (waiting futures fail with ConnectionLost)."""
        for table in (self._client, self._server):
            for entry in list(table.values()):
                if entry.future is not None and not entry.future.done():
                    entry.future.set_exception(ConnectionLost('the transaction layer closed'))
                self._forget(entry)
