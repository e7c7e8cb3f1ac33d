"""Forking (RFC 3261 §16.6-16.7): a request to an address-of-record goes to each of its
bindings, and one answer goes back.

:class:`Forker` decides where a request for some bindings goes (none: 404 or the route
for unregistered users; a binding over TCP whose connection is gone: reconnect first;
over the pending-transaction caps: 503) and starts a :class:`Fork`, which keeps the
INVITEs in progress for CANCEL.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.codec import SIPMessage, invite_companion, make_response
from ..core.transaction import cancel_key
from ..errors import AiosipWSError, TransactionTimeout
from ..transport.throttle import LogThrottle
from .context import SERVER_HEADER, Context
from .events import CallChanged, RequestAnswered, RequestRelayed
from .flow import NETWORK_TRANSPORTS, Flow
from .registrar import Binding

if TYPE_CHECKING:
    from .callbook import CallRecord
    from .media import AnchoredCall, Media

__all__ = ['Forker', 'Fork', 'best_response', 'LEARN_FROM']

logger = logging.getLogger(__name__)
peer_log = LogThrottle(logger)

#: responses of one branch waiting for the media relay, at most (beyond: provisionals dropped)
MAX_BACKLOG = 32

#: out-of-dialog requests whose Contact becomes a remote target of a dialog
LEARN_FROM = frozenset({'INVITE', 'SUBSCRIBE', 'REFER'})

#: where a request goes when its AOR has no binding: ``unregistered(flow, request,
#: max_forwards)`` -> True when it took it
Unregistered = Callable[[Flow, SIPMessage, int], bool]
#: bindings over TCP/TLS whose connection is gone, reached at their Contact first:
#: ``reconnect(flow, request, bindings, max_forwards)`` -> True when it took the request
Reconnect = Callable[[Flow, SIPMessage, 'list[Binding]', int], bool]
#: failure routing (``--app``): ``failure(origin, invite, response, by_serve, rounds,
#: deliver, identity)`` -> True when it took the final non-2xx ``response`` (our Via
#: already off) the caller would get; ``deliver(final)`` sends the caller that final
#: response (the same, or another) as the end of the INVITE's transaction; ``identity``
#: is the one the INVITE was admitted with
Failure = Callable[[Flow, SIPMessage, SIPMessage, bool, int, Callable[[SIPMessage], None],
                    Any], bool]


class Forker:
    """Where a request for an AOR's bindings goes (see the module)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        #: INVITEs being relayed, for CANCEL: (Call-ID, CSeq, branch) -> their fork
        self.invites: dict[tuple[str, int, str], Fork] = {}
        self.unregistered: Unregistered | None = None
        self.reconnect: Reconnect | None = None
        #: an edge's flow token for the flow a dialog-creating request came from (its
        #: Record-Route names it, RFC 5626 §5.3), or None
        self.flow_token: Callable[[Flow], str | None] | None = None
        #: the media relay (:mod:`~aiosip_ws.serve.media`): it anchors INVITEs' SDP
        self.media: Media | None = None
        #: failure routing: asked before a final non-2xx goes to the caller of an INVITE
        self.failure: Failure | None = None
        #: INVITEs no fork holds now (an app decides where they go): their CANCEL calls
        #: the function, by (Call-ID, CSeq, branch)
        self.held: dict[tuple[str, int, str], Callable[[], None]] = {}
        #: INVITEs that already got 100 Trying (an app decided first)
        self.tried: set[tuple[str, int, str]] = set()

    def relay(self, flow: Flow, request: SIPMessage, bindings: list[Binding],
              max_forwards: int, *, reconnect: bool = True,
              timeouts: dict[int, float] | None = None, rounds: int = 0,
              identity: Any = None) -> None:
        """Relay ``request`` from ``flow`` to ``bindings`` (``max_forwards`` as it came);
        ``timeouts``: seconds a binding (by ``id()``) may take to answer; ``rounds``: how
        many failures of this INVITE were routed again before; ``identity``: the one it
        was admitted with (default: its flow's now)."""
        if identity is None:
            identity = flow.flow_state.identity
        ctx = self.ctx
        if not bindings:
            if self.unregistered is not None and self.unregistered(flow, request, max_forwards):
                return
            self.refuse(flow, request, 404, rounds=rounds, identity=identity)
            return
        if reconnect and self.reconnect is not None and \
                self.reconnect(flow, request, bindings, max_forwards):
            return
        if self.media is not None and request.method == 'INVITE':
            bindings, refusal = self.media.mismatched(flow, request, bindings)
            if not bindings and refusal is not None:
                status, reason, headers = refusal
                ctx.reply(flow, request, status, reason, headers=headers)
                return
        busy = self.over_pending_caps(flow, bindings[0].connection)
        if busy:
            ctx.busy(flow, request, busy)
            return
        Fork(self, flow, request, bindings, max_forwards - 1, timeouts, rounds,
             identity).start()

    def refuse(self, flow: Flow, request: SIPMessage, status: int, reason: str | None = None,
               headers: list[tuple[str, str]] | None = None, *, rounds: int = 0,
               identity: Any = None) -> None:
        """Answer ``request`` with a failure of serve's own, which failure routing may
        turn into another attempt (an INVITE's)."""
        response = self.ctx.answer(request, status, reason, headers=headers)
        invite = request.method == 'INVITE'
        if invite and rounds == 0:
            self.call_changed('attempted', flow, request)

        def deliver(final: SIPMessage) -> None:
            if invite:
                self.call_changed('ended', flow, request, final.status, 'serve')
            self.ctx.send_response(flow, request, final)
        self.fail(flow, request, response, True, rounds, deliver,
                  identity if identity is not None else flow.flow_state.identity)

    def call_changed(self, change: str, origin: Flow, request: SIPMessage,
                     status: int | None = None, ended_by: str | None = None,
                     peer: Flow | None = None) -> None:
        """Publish what became of an INVITE (:class:`CallChanged`), its times from the
        call book, while some consumer wants it."""
        events = self.ctx.events
        if not events.wants(CallChanged):
            return
        book = self.ctx.calls
        call_id = request.get('Call-ID') or ''
        caller, callee = request.get('From') or '', request.get('To') or ''
        record: CallRecord | None
        if change == 'attempted':
            record = book.attempted(call_id, caller, callee, origin)
        elif change == 'answered':
            record = book.answered(call_id, peer)
        elif change == 'ended':
            record = book.ended(call_id)
        else:
            record = book.get(call_id)
        events.publish(book.event(change, record, status, origin, ended_by, call_id=call_id,
                                  caller=caller, callee=callee))

    def fail(self, origin: Flow, request: SIPMessage, response: SIPMessage, by_serve: bool,
             rounds: int, deliver: Callable[[SIPMessage], None], identity: Any = None) -> None:
        """A final non-2xx for the caller: to failure routing first (an INVITE's)."""
        if self.failure is None or request.method != 'INVITE' or \
                not self.failure(origin, request, response, by_serve, rounds, deliver,
                                 identity):
            deliver(response)

    def over_pending_caps(self, origin: Flow, peer: Flow) -> str | None:
        """Why a new relayed request would exceed a pending-transaction cap, or None."""
        limits = self.ctx.limits
        transactions = self.ctx.transactions
        if transactions.layer.clients >= limits.max_pending:
            return 'too many requests in progress (%d)' % limits.max_pending
        if origin.flow_state.relaying >= limits.max_pending_per_connection:
            return ('too many requests in progress from this connection (%d)'
                    % limits.max_pending_per_connection)
        if transactions.layer.pending_on(peer) >= limits.max_pending_per_connection:
            return 'the callee has too many requests unanswered'
        return None

    def cancel(self, flow: Flow, cancel: SIPMessage) -> None:
        """RFC 3261 §16.10: answer the CANCEL, then cancel the INVITE we forwarded."""
        key = cancel_key(cancel)
        entry = self.invites.get(key)
        if entry is None:
            held = self.held.get(key)
            if held is None:
                self.ctx.reply(flow, cancel, 481)
                return
            self.ctx.reply(flow, cancel, 200)
            held()
            return
        self.ctx.reply(flow, cancel, 200)
        entry.cancel(cancel.get('Reason'))


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

    __slots__ = ('binding', 'peer', 'forwarded', 'branch', 'done', 'provisional', 'anchored',
                 'backlog', 'final', 'timer', 'no_answer')

    def __init__(self, binding: Binding, forwarded: SIPMessage, branch: str,
                 anchored: bool = False) -> None:
        self.binding, self.peer, self.forwarded = binding, binding.connection, forwarded
        self.branch = branch
        self.done = False
        self.provisional = False
        #: its SDP goes through the media relay
        self.anchored = anchored
        #: responses waiting for the media relay, in the order they came (None: none)
        self.backlog: collections.deque[tuple[SIPMessage, Callable[[SIPMessage], None]]] | \
            None = None
        #: its final response came (it may still wait for the media relay)
        self.final = False
        #: the app's no-answer timer of this branch (a Target's timeout), or None
        self.timer: asyncio.TimerHandle | None = None
        #: that timer fired: the branch is CANCELled, its 487 counts as 408
        self.no_answer = False


class Fork:
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
    only, no task per request (but for a call whose media serve anchors: its branches'
    offers, and each response with SDP on an anchored branch, wait for the media relay,
    :mod:`~aiosip_ws.serve.media`).
    """

    __slots__ = ('ctx', 'forker', 'origin', 'request', 'groups', 'max_forwards', 'key', 'branches',
                 'finals', 'answered', 'timed_out', 'finished', 'started', 'ringing', 'call',
                 'cancelled', 'winner', 'refusal', 'timeouts', 'rounds', 'identity')

    def __init__(self, forker: Forker, origin: Flow, request: SIPMessage,
                 bindings: list[Binding], max_forwards: int,
                 timeouts: dict[int, float] | None = None, rounds: int = 0,
                 identity: Any = None) -> None:
        self.forker, self.ctx = forker, forker.ctx
        self.origin, self.request = origin, request
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
        #: a first 18x went upstream (the call is ringing)
        self.ringing = False
        #: the call whose media serve anchors, or None
        self.call: AnchoredCall | None = None
        #: the caller CANCELled
        self.cancelled = False
        #: the branch whose 2xx went upstream first
        self.winner: str | None = None
        #: why serve itself could not launch a branch: (status, reason, headers)
        self.refusal: tuple[int, str, list[tuple[str, str]]] | None = None
        #: seconds a binding (by id()) may take to answer (an app's Target timeouts)
        self.timeouts = timeouts
        #: failures of this INVITE routed again before this fork (failure routing)
        self.rounds = rounds
        #: the identity the request was admitted with (for failure routing)
        self.identity = identity
        origin.flow_state.relaying += 1

    def _answered_now(self, status: int, ended_by: str | None = None,
                      peer: Flow | None = None) -> None:
        """The final response goes upstream now: how long it took, and for an INVITE
        what became of the call (``ended_by`` a failure; ``peer``: who answered)."""
        events = self.ctx.events
        if RequestAnswered in events.wanted:
            events.emit(RequestAnswered, self.request.method, status,
                        asyncio.get_running_loop().time() - self.started)
        if self.key is not None:
            self._call('answered' if status < 300 else 'ended', status, ended_by, peer)

    def _call(self, change: str, status: int | None = None, ended_by: str | None = None,
              peer: Flow | None = None) -> None:
        self.forker.call_changed(change, self.origin, self.request, status, ended_by, peer)

    def start(self) -> None:
        events = self.ctx.events
        if RequestRelayed in events.wanted:
            events.emit(RequestRelayed, self.request.method, self.origin)
        if self.key is not None:
            self.forker.invites[self.key] = self
            tried = self.rounds > 0 or self.key in self.forker.tried
            if self.rounds == 0:
                self._call('attempted')
            if self.origin.is_open and not tried:   # §16.2: at once, hop by hop, no To tag
                self.ctx.send(self.origin, make_response(self.request, 100,
                                                         headers=[('Server', SERVER_HEADER)]))
            if self.forker.media is not None:
                self.call = self.forker.media.begin(self.origin, self.request)
        self._next_group()

    def _next_group(self) -> None:
        while self.groups:
            live = [b for b in self.groups.pop(0) if b.connection.is_open]
            if live and self.call is not None:
                self.ctx.spawn(self._launch_anchoring(live))
                return
            for binding in live:
                self._launch(binding)
            if live:
                return
        self._finish()

    async def _launch_anchoring(self, live: list[Binding]) -> None:
        """A group of a call whose media serve may anchor: the media relay's offers first."""
        media, call = self.forker.media, self.call
        assert media is not None and call is not None
        try:
            launches, refusals = await media.offers(call, self.request, live,
                                                    lambda: self.ctx.new_branch(self.request))
        except (AiosipWSError, OSError) as exc:        # not the relay's answer: a bug
            logger.error('%s: the media relay\'s offers failed: %s', self.request.method, exc)
            launches, refusals = [], [(500, 'Server Internal Error (media relay)', [])]
        if self.finished:
            return
        if self.cancelled:
            self._finish()
            return
        for binding, branch, body, anchored in launches:
            self._launch(binding, branch, body, anchored)
        if refusals and self.refusal is None:
            self.refusal = refusals[0]
        if not launches:
            if self.groups:
                self._next_group()
            else:
                self._finish()

    def _launch(self, binding: Binding, branch_id: str | None = None,
                body: bytes | None = None, anchored: bool = False) -> None:
        ctx, request = self.ctx, self.request
        forwarded = SIPMessage(method=request.method, uri=str(binding.uri),
                               headers=list(request.headers),
                               body=request.body if body is None else body)
        forwarded.set('Max-Forwards', str(self.max_forwards))
        forwarded.remove('Route')                      # loose routes pointing at us end here
        provisional = None
        if request.method in LEARN_FROM:                  # dialog-creating: record-routed
            token = self.forker.flow_token(self.origin) if self.forker.flow_token else None
            forwarded.headers.insert(0, ('Record-Route', ctx.record_route(binding.connection,
                                                                          token)))
            inbound = ctx.record_route(self.origin)
            sides = {c.transport_name for c in (self.origin, binding.connection)}
            if len(sides) > 1 and sides & NETWORK_TRANSPORTS:
                # RFC 5658: crossing transports, one entry per side; the callee's route set
                # then names the side it is on first, the caller's the side it is on
                forwarded.headers.insert(1, ('Record-Route', inbound))
        branch = _Branch(binding, forwarded, branch_id or ctx.new_branch(request), anchored)
        if anchored:
            provisional = lambda response: self._in_order(  # noqa: E731
                branch, response, lambda r: self._provisional(branch, r))
        elif self.key is not None:
            provisional = lambda response: self._provisional(branch, response)  # noqa: E731
        self.branches.append(branch)
        if self.timeouts is not None and id(binding) in self.timeouts:
            branch.timer = asyncio.get_running_loop().call_later(
                self.timeouts[id(binding)], self._no_answer, branch)
            if provisional is None:
                provisional = lambda response: self._provisional(branch, response)  # noqa: E731
        future = ctx.transactions.send(binding.connection, forwarded, branch.branch,
                                       on_provisional=provisional)
        future.add_done_callback(lambda done: self._branch_done(branch, done))

    def _no_answer(self, branch: _Branch) -> None:
        """The app's timeout for this branch: CANCEL it (once it sent a provisional
        response, RFC 3261 §9.1: else at its first); its 487 counts as 408."""
        branch.timer = None
        if branch.final or self.finished:
            return
        branch.no_answer = True
        if branch.provisional:
            self._send_cancel(branch, 'SIP;cause=408;text="No answer"')

    def _provisional(self, branch: _Branch, response: SIPMessage) -> None:
        if branch.no_answer and not branch.provisional:     # CANCEL now allowed (§9.1)
            branch.provisional = True
            self._send_cancel(branch, 'SIP;cause=408;text="No answer"')
            return
        if branch.no_answer:
            return
        if not self.ringing and 180 <= (response.status or 0) < 190 and not self.answered:
            self.ringing = True
            self._call('ringing', response.status)
        branch.provisional = True
        self.ctx.transactions.rearm(branch.branch, self.ctx.timer_c, 'Timer C')
        if not self.answered:
            self.ctx.relay_provisional(self.origin, response)

    def _in_order(self, branch: _Branch, response: SIPMessage,
                  then: Callable[[SIPMessage], None]) -> None:
        """``then(response)``, once the media relay rewrote its SDP if it has to, after the
        branch's earlier responses."""
        media, call = self.forker.media, self.call
        assert media is not None and call is not None
        if branch.backlog is None:
            if not media.rewrites(call, branch.branch, response):
                then(response)
                return
            branch.backlog = collections.deque()
            self.ctx.spawn(self._rewrite_backlog(branch, branch.backlog))   # runs later
        elif len(branch.backlog) >= MAX_BACKLOG and (response.status or 0) < 200:
            peer_log.warning('media backlog', '%s: a callee sends provisional responses '
                             'faster than the media relay answers: one dropped',
                             self.request.get('Call-ID'))
            return                                     # a provisional may be lost; a final not
        branch.backlog.append((response, then))

    async def _rewrite_backlog(self, branch: _Branch, backlog: collections.deque[
            tuple[SIPMessage, Callable[[SIPMessage], None]]]) -> None:
        media, call = self.forker.media, self.call
        assert media is not None and call is not None
        try:
            while backlog:
                response, then = backlog[0]
                if media.rewrites(call, branch.branch, response):
                    await media.rewrite(call, branch.branch, response)
                backlog.popleft()
                then(response)
        finally:
            branch.backlog = None

    def _branch_done(self, branch: _Branch, future: asyncio.Future[SIPMessage]) -> None:
        branch.final = True
        if branch.timer is not None:
            branch.timer.cancel()
            branch.timer = None
        if future.cancelled() or future.exception() is not None or not branch.anchored:
            self._branch_ended(branch, future)
            return
        self._in_order(branch, future.result(),
                       lambda response: self._branch_response(branch, response))

    def _branch_ended(self, branch: _Branch, future: asyncio.Future[SIPMessage]) -> None:
        if future.cancelled():
            branch.done = True
            self._settle()
            return
        exc = future.exception()
        if exc is not None:
            branch.done = True
            logger.info('relaying %s to %s failed: %s', self.request.method, branch.binding.uri,
                        exc)
            timeout = isinstance(exc, TransactionTimeout)
            self.timed_out = self.timed_out or timeout
            if timeout and branch.provisional and branch.peer.is_open:
                self._send_cancel(branch, None)                 # §16.8: Timer C fired
            self._settle()
            return
        self._branch_response(branch, future.result())

    def _branch_response(self, branch: _Branch, response: SIPMessage) -> None:
        branch.done = True
        status = response.status or 500
        if self.key is not None and status >= 300 and branch.peer.reliable:
            # hop by hop, RFC 3261 §17.1.1.3 (over UDP the transaction layer's state
            # machine sends it, and again for each retransmitted failure)
            self.ctx.send(branch.peer, invite_companion(
                'ACK', branch.forwarded, uri=branch.forwarded.uri or '',
                to=response.get('To') or ''))
        if status < 300:
            if self.key is not None or not self.answered:   # every 2xx of an INVITE
                first = not self.answered
                self.answered = True
                if first:
                    self._answered_now(status, peer=branch.peer)
                    self.winner = branch.branch
                    if self.call is not None and self.forker.media is not None:
                        self.forker.media.fork_ended(self.call, branch.branch)
                self.ctx.relay_final(self.origin, branch.peer, self.request, response)
                if self.key is not None and not branch.peer.reliable:
                    self.ctx.transactions.accepted(branch.branch, self.origin)
                if first and self.key is not None:
                    self._cancel_others('SIP;cause=200;text="Call completed elsewhere"')
        elif status >= 600 and not self.answered:
            self.answered = True
            if self.key is not None:
                self._cancel_others('SIP;cause=%d;text="%s"' % (status, response.reason))
            self._fail_upstream(branch.peer, response, False)
        elif not self.answered:
            if status == 487 and branch.no_answer:       # the app's timer CANCELled it
                response.status, response.reason = 408, 'Request Timeout (no answer)'
            self.finals.append(response)
        self._settle()

    def _fail_upstream(self, peer: Flow, response: SIPMessage, by_serve: bool) -> None:
        """A final non-2xx goes to the caller (``by_serve``: serve made it; else it came
        from ``peer``): failure routing may send the INVITE elsewhere first (never after
        the caller's CANCEL)."""
        if not by_serve:
            self.ctx.upstream_final(peer, response)      # our Via off, a 503 made 500

        def deliver(final: SIPMessage) -> None:
            by = 'caller' if self.cancelled else 'serve' if by_serve or final is not response \
                else 'callee'
            self._answered_now(final.status or 500, by)
            self.ctx.send_response(self.origin, self.request, final)
        if self.cancelled or self.key is None:
            deliver(response)
            return
        self.forker.fail(self.origin, self.request, response, by_serve, self.rounds, deliver,
                         self.identity)

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
        invites = self.forker.invites
        if self.key is not None and invites.get(self.key) is self:
            del invites[self.key]
        self.origin.flow_state.relaying -= 1
        if self.call is not None and self.winner is None and self.forker.media is not None:
            self.forker.media.fork_ended(self.call, None)
        for branch in self.branches:
            if branch.timer is not None:
                branch.timer.cancel()
                branch.timer = None
        if self.answered:
            return
        if self.finals:
            response = best_response(self.finals)
            self._fail_upstream(self.branches[-1].peer, response, False)
            return
        if self.refusal is not None and not self.cancelled:
            status, reason, headers = self.refusal
        else:
            status = 487 if self.cancelled else 408 if self.timed_out else 480
            reason, headers = None, []
        self._fail_upstream(self.origin, self.ctx.answer(self.request, status, reason,
                                                         headers=headers), True)

    # -- CANCEL ---------------------------------------------------------------------------
    def cancel(self, reason: str | None) -> None:
        """The caller CANCELled (§16.10): every pending branch is CANCELled; their 487s
        make the answer."""
        self.cancelled = True
        for branch in self.branches:
            if not branch.final:
                self._send_cancel(branch, reason)
        self.groups = []                                   # no later group starts

    def _cancel_others(self, reason: str) -> None:
        for branch in self.branches:
            if not branch.final:
                self._send_cancel(branch, reason)
        self.groups = []

    def _send_cancel(self, branch: _Branch, reason: str | None) -> None:
        cancel = invite_companion('CANCEL', branch.forwarded, uri=branch.forwarded.uri or '')
        if reason is not None:
            cancel.headers.append(('Reason', reason))
        self.ctx.transactions.send_cancel(branch.peer, cancel, branch.branch)
