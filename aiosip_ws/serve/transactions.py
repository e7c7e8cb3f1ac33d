"""The proxy's client transactions: requests serve sent, waiting for their final answer.

Each is indexed by the branch of the Via serve added, and by its flow (the branch is in
the flow's :class:`~aiosip_ws.serve.flow.FlowState`), so a closing flow ends what it owns
at once.  Timer F (``transaction_timeout``) or Timer C (re-armed by each provisional
response to an INVITE) fails a request that gets no final answer; so does a flow that
closes first (:class:`~aiosip_ws.errors.ConnectionLost`).  Over a reliable flow that is
all a client transaction needs (RFC 3261 §17.1.2.2: no retransmissions); over UDP the
bridge's transaction layer retransmits underneath.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..core.codec import SIPMessage
from ..core.sipuri import split_header_values
from ..core.transaction import TIMER_B
from ..errors import ConnectionLost, SIPParseError, TransactionTimeout
from ..transport.throttle import LogThrottle
from .flow import Flow

__all__ = ['ClientTransactions', 'without_top_via']

logger = logging.getLogger(__name__)
peer_log = LogThrottle(logger)


class _Pending:
    """A request serve sent and waits on."""

    __slots__ = ('future', 'flow', 'timer', 'method', 'on_provisional')

    def __init__(self, future: asyncio.Future[SIPMessage], flow: Flow,
                 timer: asyncio.TimerHandle, method: str,
                 on_provisional: Callable[[SIPMessage], None] | None) -> None:
        self.future, self.flow, self.timer = future, flow, timer
        self.method, self.on_provisional = method, on_provisional


class ClientTransactions:
    """Branch -> the request serve sent with it (see the module)."""

    def __init__(self, max_pending: int, *,
                 send: Callable[[Flow, SIPMessage], bool] | None = None) -> None:
        self._pending: dict[str, _Pending] = {}
        #: how a message goes out (the context's send: published as an event)
        self._send: Callable[[Flow, SIPMessage], bool] = send or _send
        #: INVITE branches to UDP peers that were answered 2xx, for 64*T1 (RFC 6026 §7.2:
        #: the UAS's retransmissions of its 2xx are forwarded upstream too)
        self._accepted: dict[str, Flow] = {}
        self.max_pending = max_pending
        #: a response for none of ours: is it for a request another node sent?
        #: (``forward(flow, response, branch)`` -> True when it took it)
        self.forward: Callable[[Flow, SIPMessage, str], bool] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, branch: str) -> bool:
        return branch in self._pending

    def send(self, flow: Flow, request: SIPMessage, branch: str, *,
             on_provisional: Callable[[SIPMessage], None] | None = None
             ) -> asyncio.Future[SIPMessage]:
        """Send ``request`` over ``flow`` with our Via (``branch``) on top.  The future gets
        the final response, or fails with :class:`TransactionTimeout` (Timer F) or
        :class:`ConnectionLost`; ``on_provisional`` sees each 1xx.  An ACK is not
        tracked: its future is done at once (with None)."""
        request.headers.insert(0, ('Via', flow.via(branch)))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SIPMessage] = loop.create_future()
        if request.method == 'ACK':
            future.set_result(None)  # type: ignore[arg-type]
        else:
            timeout = flow.options.transaction_timeout
            timer = loop.call_later(timeout, self.finish, branch, TransactionTimeout(
                'no final response to %s %s within %.0f s (Timer F)'
                % (request.method, request.uri, timeout)))
            self._pending[branch] = _Pending(future, flow, timer, request.method or '',
                                             on_provisional)
            flow.flow_state.pending.add(branch)
        if not self._send(flow, request):     # closed, or its peer stopped reading (1008)
            self.finish(branch, ConnectionLost('%r cannot take more: the request was not sent'
                                               % flow))
        return future

    def rearm(self, branch: str, seconds: float, timer: str) -> None:
        """Give the pending request ``branch`` ``seconds`` more from now (Timer C, re-armed
        by each provisional response to an INVITE, RFC 3261 §16.6 step 11)."""
        pending = self._pending.get(branch)
        if pending is None:
            return
        pending.timer.cancel()
        pending.timer = asyncio.get_running_loop().call_later(
            seconds, self.finish, branch, TransactionTimeout(
                'no final response to %s within %.0f s of the last provisional (%s)'
                % (pending.method, seconds, timer)))

    def accepted(self, branch: str, origin: Flow) -> None:
        """An INVITE branch to a UDP peer got a 2xx: forward its retransmissions to
        ``origin`` for 64*T1 (RFC 6026 §7.2.2), bounded like the pending transactions."""
        if branch in self._accepted or len(self._accepted) >= self.max_pending:
            return
        self._accepted[branch] = origin
        asyncio.get_running_loop().call_later(TIMER_B, self._accepted.pop, branch, None)

    def finish(self, branch: str, outcome: SIPMessage | BaseException) -> None:
        """End the request sent with ``branch`` with a final response or an error."""
        pending = self._pending.pop(branch, None)
        if pending is None:
            return
        pending.timer.cancel()
        pending.flow.flow_state.pending.discard(branch)
        if pending.future.done():
            return
        if isinstance(outcome, BaseException):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)

    def flow_closed(self, flow: Flow) -> None:
        """``flow`` closed: every request pending on it fails at once."""
        pending = flow.flow_state.pending
        for branch in list(pending):
            self.finish(branch, ConnectionLost(
                'the connection %r closed before the final response' % flow))
        pending.clear()

    def close(self) -> None:
        for branch in list(self._pending):
            self.finish(branch, ConnectionLost('the server closed'))

    def response_received(self, flow: Flow, message: SIPMessage) -> None:
        """A response came over ``flow``: to its request, or dropped (logged)."""
        try:
            branch = message.top_branch or ''
        except SIPParseError as exc:
            peer_log.warning('dropped responses with a bad Via',
                             '%r: dropped a response with a bad Via: %s', flow, exc)
            return
        pending = self._pending.get(branch)
        if pending is None and self.forward is not None and self.forward(flow, message, branch):
            return                                  # to the node that relayed the request
        if pending is None and branch in self._accepted and 200 <= (message.status or 0) < 300:
            origin = self._accepted[branch]             # a 2xx retransmission (RFC 6026)
            if origin.is_open and message.cseq[1] == 'INVITE':
                message.headers = without_top_via(message.headers)
                self._send(origin, message)
            return
        if pending is None or pending.flow is not flow:
            peer_log.info('dropped stray responses',
                          '%r: dropped a response for no known transaction (%s %s, Call-ID %s)',
                          flow, message.status, message.reason, message.get('Call-ID'))
            return
        if message.cseq[1] != pending.method:
            return                              # e.g. the 200 to our CANCEL: nothing to do
        if (message.status or 0) >= 200:
            self.finish(branch, message)
        elif pending.on_provisional is not None:
            pending.on_provisional(message)


def _send(flow: Flow, message: SIPMessage) -> bool:
    return flow.send(message)


def without_top_via(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
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
