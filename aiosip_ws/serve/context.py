"""What every stage of serve's request pipeline may use: one small object.

The stages (:mod:`~aiosip_ws.serve.admission`, :mod:`~aiosip_ws.serve.register`,
:mod:`~aiosip_ws.serve.fork`, :mod:`~aiosip_ws.serve.dialogs`,
:mod:`~aiosip_ws.serve.hops`, :mod:`~aiosip_ws.serve.edge`) each receive a
:class:`Context`, never the server: answering a request, sending one as a proxy (the
client transactions), relaying responses back, spawning a task, the metrics, the
Contact-host index, the limits, and the few names serve writes into what it sends (its
branches and Record-Routes).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..core.codec import SIPMessage, make_response
from ..core.grammar import MAGIC_COOKIE
from ..core.transaction import loop_key, new_branch, new_tag
from ..errors import SIPParseError
from ..options import RelayLimits
from .callbook import CallBook
from .contacts import ContactIndex
from .events import EventStream, MessageOut
from .flow import NETWORK_TRANSPORTS, Flow
from .observe import Metrics
from .transactions import ClientTransactions, without_top_via

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ['Context', 'SERVER_HEADER', 'ALLOWED_METHODS', 'max_forwards_of',
           'forwarding_refusal', 'Rewrite']

logger = logging.getLogger(__name__)

#: Methods the relay answers or relays (the Allow header of its responses).
ALLOWED_METHODS = ('REGISTER', 'OPTIONS', 'MESSAGE', 'SUBSCRIBE', 'NOTIFY', 'PUBLISH', 'INFO',
                   'REFER', 'INVITE')
#: what the media relay does to a 2xx with SDP before serve relays it (``rewrite(response)``)
Rewrite = Callable[[SIPMessage], Awaitable[None]]
#: the Server header of the responses serve builds itself
SERVER_HEADER = 'aiosip-ws/%s' % __version__


def max_forwards_of(message: SIPMessage) -> int | None:
    """Max-Forwards (70 when absent, RFC 3261 §8.1.1.6); None when malformed."""
    try:
        return message.max_forwards()
    except SIPParseError:
        return None


def forwarding_refusal(max_forwards: int | None) -> tuple[int, str | None] | None:
    """Why a request that came with ``max_forwards`` (:func:`max_forwards_of`) cannot be
    relayed (RFC 3261 §16.3 step 3): ``(400, reason)`` when it is malformed, ``(483,
    None)`` at 0; None when it may go on."""
    if max_forwards is None:
        return 400, 'Bad Request (Max-Forwards must be a number 0-255)'
    if max_forwards == 0:
        return 483, None
    return None


class Context:
    """See the module."""

    def __init__(self, metrics: Metrics, limits: RelayLimits, *, timer_c: float,
                 spawn: Callable[[Awaitable[Any]], asyncio.Task[Any]],
                 events: EventStream | None = None) -> None:
        self.metrics = metrics
        #: what happens, for whoever listens (the metrics count from it)
        self.events = events if events is not None else EventStream()
        #: what one client may cost: pending-transaction caps and the request rate
        self.limits = limits
        #: RFC 3261 §16.6 Timer C: how long an INVITE branch may ring (more than 3 min)
        self.timer_c = timer_c
        self.spawn = spawn
        #: the proxy's client transactions
        self.transactions = ClientTransactions(limits.max_pending, send=self.send)
        #: Contact host -> flow, for in-dialog requests
        self.contacts = ContactIndex()
        #: the nodes sharing bindings and forwarding through Redis, or None
        self.cluster: Cluster | None = None
        #: True when branches carry loop keys (next hops: RFC 3261 §16.6 step 8)
        self.loop_detection = False
        #: True once the server is closing: answers that cannot be sent are not logged
        self.closing = False
        #: the calls in progress, while a consumer wants CallChanged
        self.calls = CallBook()

    # -- sending ---------------------------------------------------------------------------
    def send(self, flow: Flow, message: SIPMessage) -> bool:
        """Send ``message`` over ``flow``, published as a :class:`MessageOut`: every SIP
        message serve sends goes this way."""
        sent = flow.send(message)
        events = self.events
        if MessageOut in events.wanted:
            events.emit(MessageOut, flow, message, sent)
        return sent

    # -- answering ------------------------------------------------------------------------
    def reply(self, flow: Flow, request: SIPMessage, status: int, reason: str | None = None, *,
              headers: list[tuple[str, str]] | None = None) -> None:
        """Answer ``request`` on ``flow`` (RFC 3261 §8.2.6): Vias, From, To with a tag,
        Call-ID, CSeq, plus ``headers`` and our Server header.  ACKs get no answer."""
        if request.method == 'ACK':
            return
        response = self.answer(request, status, reason, headers=headers)
        if flow.is_open:
            self.send(flow, response)
        elif not self.closing:         # RFC 3261 §18.2.2: a WebSocket client cannot be reached
            logger.info('dropped %d %s to %s: the WebSocket connection is gone', status,
                        response.reason, request.method)

    @staticmethod
    def answer(request: SIPMessage, status: int, reason: str | None = None, *,
               headers: list[tuple[str, str]] | None = None, body: bytes = b'') -> SIPMessage:
        """serve's own response to ``request`` (not sent): a To tag, ``headers``, our Server
        header, ``body``."""
        return make_response(request, status, reason, to_tag=new_tag(),
                             headers=list(headers or ()) + [('Server', SERVER_HEADER)],
                             body=body)

    def bad_request(self, flow: Flow, request: SIPMessage, error: SIPParseError) -> None:
        """400 for a header that cannot be parsed: the one place serve writes it."""
        self.reply(flow, request, 400, 'Bad Request (%s)' % error)

    def busy(self, flow: Flow, request: SIPMessage, why: str) -> None:
        """503 with Retry-After: serve itself is out of room for this request."""
        self.reply(flow, request, 503, 'Service Unavailable (%s)' % why,
                   headers=[('Retry-After', str(self.limits.retry_after))])

    # -- relaying -------------------------------------------------------------------------
    def send_request(self, flow: Flow, request: SIPMessage, *,
                     on_provisional: Callable[[SIPMessage], None] | None = None,
                     branch: str | None = None) -> asyncio.Future[SIPMessage]:
        """Send ``request`` as a stateful proxy does: our Via on top, tracked by its
        branch (see :meth:`ClientTransactions.send`)."""
        return self.transactions.send(flow, request, branch or self.new_branch(),
                                      on_provisional=on_provisional)

    def relay_final(self, origin: Flow, peer: Flow, request: SIPMessage,
                    response: SIPMessage) -> None:
        """Send a downstream final response back upstream, our Via removed; a 503 becomes
        500 (RFC 3261 §16.7: a downstream overload is not ours to advertise)."""
        self.upstream_final(peer, response)
        self.send_response(origin, request, response)

    def upstream_final(self, peer: Flow, response: SIPMessage) -> None:
        """Make a downstream final response one for upstream: its Contact learnt, our Via
        removed, a 503 made 500."""
        self.contacts.learn_contact(peer, response)
        response.headers = without_top_via(response.headers)
        if response.status == 503:
            response.status, response.reason = 500, 'Server Internal Error (downstream 503)'
            response.remove('Retry-After')

    def send_response(self, origin: Flow, request: SIPMessage, response: SIPMessage) -> None:
        """Send a response to ``request`` over ``origin``, unless the requester left."""
        if origin.is_open:
            self.send(origin, response)
        elif not self.closing:
            logger.info('dropped the %d response to %s: the requester left', response.status,
                        request.method)

    def relay_provisional(self, origin: Flow, response: SIPMessage) -> None:
        if response.status == 100 or not origin.is_open:
            return                                     # 100 Trying is hop-by-hop
        relayed = SIPMessage(status=response.status, reason=response.reason,
                             headers=without_top_via(response.headers), body=response.body)
        self.send(origin, relayed)

    # -- what serve writes ----------------------------------------------------------------
    def record_route(self, flow: Flow, token: str | None = None) -> str:
        """The Record-Route serve puts on a dialog-creating request it sends over ``flow``;
        in a cluster its user part names the node that holds ``flow``; an edge puts the
        flow token of its client there (``token``, RFC 5626 §5.3)."""
        transport = flow.transport_name
        if transport in NETWORK_TRANSPORTS:                     # a bridged UDP/TCP/TLS side
            user = token + '@' if token else ''
            if transport == 'tls':
                return '<sips:%s%s;lr>' % (user, flow.via_host)
            return '<sip:%s%s;transport=%s;lr>' % (user, flow.via_host, transport)
        if self.cluster is None:
            return '<sip:%s;transport=ws;lr>' % flow.via_host
        node = getattr(flow, 'node', None) or self.cluster.node
        return '<sip:%s@%s;transport=ws;lr>' % (node, flow.via_host)

    def new_branch(self, request: SIPMessage | None = None) -> str:
        """The branch of a request serve relays (in a cluster it names this node, so that
        the node holding the callee's connection sends the responses back here; with next
        hops it carries the loop key of ``request``, RFC 3261 §16.6 step 8)."""
        if self.cluster is not None:
            return self.cluster.branch()
        if request is not None and self.loop_detection:
            return '%s%s.%s' % (MAGIC_COOKIE, loop_key(request), new_branch()[-8:])
        return new_branch()
