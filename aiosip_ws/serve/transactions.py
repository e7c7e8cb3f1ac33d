"""The proxy's client transactions: requests serve sent, waiting for their final answer.

They live in the project's one transaction table,
:class:`~aiosip_ws.transport.transactions.TransactionLayer` (shared with the bridge's
UDP side, which retransmits underneath): each is matched by the branch of the Via serve
added and its method, and indexed by its flow, so a closing flow ends what it carries at
once.  :class:`ClientTransactions` is what the proxy adds on top: our Via, provisional
responses handed to the stage that sent the request, Timer C (re-armed by each
provisional response to an INVITE), 2xx retransmissions of a UDP callee forwarded
upstream (RFC 6026 §7.2), responses for requests another cluster node relayed, and the
log line for a response nobody asked for.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..core.codec import SIPMessage
from ..core.sipuri import split_header_values
from ..core.transaction import TIMER_B
from ..errors import ConnectionLost, SIPParseError
from ..transport.throttle import LogThrottle
from ..transport.transactions import MAX_TRANSACTIONS, TransactionLayer
from .flow import Flow

__all__ = ['ClientTransactions', 'without_top_via']

logger = logging.getLogger(__name__)
peer_log = LogThrottle(logger)


class ClientTransactions:
    """The proxy's side of the transaction layer (see the module)."""

    def __init__(self, max_pending: int, *,
                 send: Callable[[Flow, SIPMessage], bool] | None = None) -> None:
        #: how a message goes out (the context's send: published as an event)
        self._send: Callable[[Flow, SIPMessage], bool] = send or _send
        #: the one table: serve's requests on every kind of flow, and UDP's server side
        self.layer = TransactionLayer(max_transactions=2 * max_pending or MAX_TRANSACTIONS,
                                      send=self._send)  # type: ignore[arg-type]
        #: INVITE branches to UDP peers that were answered 2xx, for 64*T1 (RFC 6026 §7.2:
        #: the UAS's retransmissions of its 2xx are forwarded upstream too)
        self._accepted: dict[str, Flow] = {}
        self.max_pending = max_pending
        #: a response for none of ours: is it for a request another node sent?
        #: (``forward(flow, response, branch)`` -> True when it took it)
        self.forward: Callable[[Flow, SIPMessage, str], bool] | None = None

    def __len__(self) -> int:
        return self.layer.clients

    def pending_on(self, flow: Flow) -> int:
        """How many requests serve sent over ``flow`` await their final response."""
        return self.layer.pending_on(flow)

    def send(self, flow: Flow, request: SIPMessage, branch: str, *,
             on_provisional: Callable[[SIPMessage], None] | None = None
             ) -> asyncio.Future[SIPMessage]:
        """Send ``request`` over ``flow`` with our Via (``branch``) on top.  The future gets
        the final response, or fails with :class:`TransactionTimeout` (Timer F) or
        :class:`ConnectionLost`; ``on_provisional`` sees each 1xx.  An ACK is not
        tracked: its future is done at once (with None)."""
        request.headers.insert(0, ('Via', flow.via(branch)))
        if request.method == 'ACK':
            future: asyncio.Future[SIPMessage] = asyncio.get_running_loop().create_future()
            future.set_result(None)  # type: ignore[arg-type]  # (an ACK has no answer)
            self._send(flow, request)
            return future
        if on_provisional is None and flow.reliable:
            return self.layer.send_reliable(flow, request, branch,
                                            flow.options.transaction_timeout)
        return self.layer.send_request(
            flow, request, branch=branch, timeout=flow.options.transaction_timeout,
            on_response=lambda response: self._response(flow, branch, response, on_provisional))

    def send_cancel(self, flow: Flow, cancel: SIPMessage, branch: str) -> None:
        """Send the CANCEL of the INVITE sent with ``branch`` (its Via already on it) in a
        transaction of its own (RFC 3261 §9.1); its 200 ends it, nobody waits on it."""
        self.layer.send_request(flow, cancel, branch=branch,
                                timeout=flow.options.transaction_timeout
                                ).add_done_callback(_retrieve)

    def carry(self, flow: Flow, request: SIPMessage) -> bool:
        """Send a request another cluster node relays (its Via already on it) over
        ``flow`` in a transaction of ours: retransmitted over UDP, each response handed
        to :attr:`forward`.  False when it could not be sent."""
        if request.method == 'ACK':
            return self._send(flow, request)
        branch = request.top_branch or ''
        forward = self.forward

        def pass_back(response: SIPMessage) -> None:
            if forward is not None:
                forward(flow, response, branch)
        future = self.layer.send_request(flow, request, branch=branch, on_response=pass_back,
                                         timeout=flow.options.transaction_timeout)
        future.add_done_callback(_retrieve)
        return not (future.done() and not future.cancelled()
                    and isinstance(future.exception(), ConnectionLost))

    def _response(self, flow: Flow, branch: str, response: SIPMessage,
                  on_provisional: Callable[[SIPMessage], None] | None) -> None:
        status = response.status or 0
        if status < 200:
            if on_provisional is not None:
                on_provisional(response)
        elif status < 300 and branch in self._accepted:
            self._forward_2xx(branch, response)  # a retransmission, in RFC 6026's Accepted

    def _forward_2xx(self, branch: str, response: SIPMessage) -> None:
        origin = self._accepted[branch]
        if origin.is_open and response.cseq[1] == 'INVITE':
            response.headers = without_top_via(response.headers)
            self._send(origin, response)

    def rearm(self, branch: str, seconds: float, timer: str) -> None:
        """Give the pending INVITE ``branch`` ``seconds`` more from now (Timer C, re-armed
        by each provisional response to an INVITE, RFC 3261 §16.6 step 11)."""
        self.layer.rearm((branch, 'INVITE'), seconds, timer)

    def accepted(self, branch: str, origin: Flow) -> None:
        """An INVITE branch to a UDP peer got a 2xx: forward its retransmissions to
        ``origin`` for 64*T1 (RFC 6026 §7.2.2), bounded like the pending transactions."""
        if branch in self._accepted or len(self._accepted) >= self.max_pending:
            return
        self._accepted[branch] = origin
        asyncio.get_running_loop().call_later(TIMER_B, self._accepted.pop, branch, None)

    def finish(self, branch: str, method: str, outcome: SIPMessage | BaseException) -> None:
        """End the request sent with ``branch`` with a final response or an error."""
        self.layer.finish((branch, method), outcome)

    def flow_closed(self, flow: Flow) -> None:
        """``flow`` closed: every request pending on it fails at once."""
        self.layer.flow_lost(flow)

    def close(self) -> None:
        self.layer.close('the server closed')

    def response_received(self, flow: Flow, message: SIPMessage) -> None:
        """A response came over ``flow``: to its request, or dropped (logged)."""
        try:
            if self.layer.response_received(message, flow):
                return
            branch = message.top_branch or ''
        except SIPParseError as exc:
            peer_log.warning('dropped responses with a bad Via',
                             '%r: dropped a response with a bad Via: %s', flow, exc)
            return
        if self.forward is not None and self.forward(flow, message, branch):
            return                                  # to the node that relayed the request
        if branch in self._accepted and 200 <= (message.status or 0) < 300:
            self._forward_2xx(branch, message)      # after the transaction ended (Timer M)
            return
        if (branch, 'INVITE') in self.layer:
            return                                  # e.g. a 200 to a CANCEL not ours
        peer_log.info('dropped stray responses',
                      '%r: dropped a response for no known transaction (%s %s, Call-ID %s)',
                      flow, message.status, message.reason, message.get('Call-ID'))


def _retrieve(future: asyncio.Future[SIPMessage]) -> None:
    if not future.cancelled():
        future.exception()


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
