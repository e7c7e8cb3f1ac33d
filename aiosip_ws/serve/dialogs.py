"""In-dialog requests (ACK, BYE, re-INVITE, ...): routed by the flow behind their
Request-URI's host (the :class:`~aiosip_ws.serve.contacts.ContactIndex`), or along loose
routes that point beyond serve (RFC 3261 §16.12), never by a binding."""
from __future__ import annotations

import asyncio
import logging

from ..core.codec import SIPMessage, make_response
from ..core.sipuri import NameAddr, SipURI
from ..errors import AiosipWSError, SIPParseError, TransactionTimeout
from ..transport.throttle import LogThrottle
from .context import Context, Rewrite, max_forwards_of
from .events import CallChanged
from .flow import Flow
from .hops import Hops

__all__ = ['Dialogs']

logger = logging.getLogger(__name__)
peer_log = LogThrottle(logger)


class Dialogs:
    """The in-dialog stage of the pipeline."""

    def __init__(self, ctx: Context, hops: Hops) -> None:
        self.ctx = ctx
        self.hops = hops
        #: where serve listens, as Route entries name it (``host:port``, ``*:port``)
        self.own_hostports: set[str] = set()

    def in_dialog(self, flow: Flow, request: SIPMessage) -> bool:
        """The in-dialog stage: an ACK, or a request with a To tag (a cheap test; the tag
        is checked in :meth:`route`), is routed in its dialog (True)."""
        if request.method == 'ACK' or 'tag=' in (request.get('To') or ''):
            return self.route(flow, request)
        return False

    def route(self, flow: Flow, message: SIPMessage, rewrite: Rewrite | None = None) -> bool:
        """Route an in-dialog request by the flow behind its Request-URI's host (its 2xx
        with SDP through ``rewrite`` first, when given).  False: ``tag=`` was not the To
        tag, the request is out of dialog after all."""
        self.ctx.contacts.learn_contact(flow, message)
        is_ack = message.method == 'ACK'
        try:
            to_tag = message.to_addr().tag
            target = SipURI.parse(message.uri or '')
        except SIPParseError as exc:
            if not is_ack:
                self.ctx.bad_request(flow, message, exc)
            return True
        if to_tag is None and not is_ack:
            return False
        cluster = self.ctx.cluster
        if cluster is None and message.get('Route') is not None:
            routes = [value for value in message.get_all('Route') if not self.is_ours(value)]
            if routes:                                 # loose routing (RFC 3261 §16.12)
                self.ctx.spawn(self._to_route(flow, message, routes, to_tag, rewrite))
                return True
        host = target.host.lower()
        peer = self.ctx.contacts.get(host)
        if peer is None and not host.endswith('.invalid'):
            peer = self.ctx.contacts.get('%s:%d' % (host, target.port or 5060))
            if peer is None and self.hops.bridge is not None:
                peer = self.hops.bridge.flow_for(target)      # an address: over UDP to it
        if (peer is None or not peer.is_open) and cluster is not None:
            self.ctx.spawn(self._in_dialog_shared(flow, message, host, to_tag, rewrite))
            return True
        self.forward(flow, message, peer, to_tag, rewrite=rewrite)
        return True

    def is_ours(self, route: str) -> bool:
        """Whether a Route entry points at this server (one of its listening addresses)."""
        try:
            uri = NameAddr.parse(route).uri
        except SIPParseError:
            return False
        host = uri.host.lower()
        if host.endswith('.invalid'):     # the sent-by of a connection serve opened itself
            return self.hops.owns_via_host(host)
        port = uri.port or (5061 if uri.scheme == 'sips' else 5060)
        own = self.own_hostports
        return '%s:%d' % (host, port) in own or '*:%d' % port in own

    async def _to_route(self, flow: Flow, message: SIPMessage, routes: list[str],
                        to_tag: str | None, rewrite: Rewrite | None) -> None:
        """An in-dialog request from a client of the edge with a route set beyond us: to
        the first Route entry that is not ours, the rest kept."""
        first = NameAddr.parse(routes[0]).uri
        behind = self.ctx.contacts.get(first.host.lower())  # a proxy's `.invalid` connection
        if behind is not None and behind.is_open:
            self.forward(flow, message, behind, to_tag, routes=routes, rewrite=rewrite)
            return
        try:
            peer = await self.hops.hop_flow(first)
        except (AiosipWSError, OSError) as exc:
            peer_log.warning('next hop unreachable', 'the route %s is unreachable: %s',
                             routes[0], exc)
            if message.method != 'ACK':
                self.ctx.busy(flow, message, 'the next hop is unreachable')
            return
        self.forward(flow, message, peer, to_tag, routes=routes, rewrite=rewrite)

    async def _in_dialog_shared(self, flow: Flow, message: SIPMessage, host: str,
                                to_tag: str | None, rewrite: Rewrite | None) -> None:
        """The Request-URI host is behind a connection of another node (or of none)."""
        assert self.ctx.cluster is not None
        self.forward(flow, message, await self.ctx.cluster.peer_for(host), to_tag,
                     rewrite=rewrite)

    def forward(self, flow: Flow, message: SIPMessage, peer: Flow | None, to_tag: str | None,
                *, routes: list[str] | None = None,
                record_route: list[str] | None = None, rewrite: Rewrite | None = None) -> None:
        """Relay a request over ``peer`` with its Request-URI; its Route headers become
        ``routes`` (none by default: the entries pointing at us end here), and
        ``record_route`` go on top of its Record-Route; a 2xx with SDP goes through
        ``rewrite`` before it is relayed."""
        ctx = self.ctx
        is_ack = message.method == 'ACK'
        if peer is None or not peer.is_open:
            if not is_ack:                 # an ACK here is for a non-2xx we ACKed downstream
                # A WebSocket client's Contact host is .invalid (RFC 7118 §5): its closed
                # connection was the only way to it; any other target serve never knew.
                gone = peer is not None or _uri_host(message.uri or '').endswith('.invalid')
                ctx.reply(flow, message, 480 if gone else 481)
            return
        max_forwards = max_forwards_of(message)
        if max_forwards is None or max_forwards == 0:
            if not is_ack:
                status = 400 if max_forwards is None else 483
                ctx.send(flow, make_response(message, status, to_tag=to_tag))
            return
        forwarded = SIPMessage(method=message.method, uri=message.uri, body=message.body,
                               headers=[(k, v) for k, v in message.headers if k != 'Route'])
        forwarded.set('Max-Forwards', str(max_forwards - 1))
        position = next((i for i, (k, _) in enumerate(forwarded.headers) if k == 'Via'), 0)
        forwarded.headers[position:position] = [('Route', r) for r in routes or ()]
        forwarded.headers[0:0] = [('Record-Route', r) for r in record_route or ()]
        future = ctx.send_request(
            peer, forwarded, on_provisional=lambda r: ctx.relay_provisional(flow, r))
        if not is_ack:
            future.add_done_callback(
                lambda done: self._answered(flow, peer, message, done, rewrite))

    def _answered(self, origin: Flow, peer: Flow, original: SIPMessage,
                  done: asyncio.Future[SIPMessage], rewrite: Rewrite | None = None) -> None:
        if done.cancelled():
            return
        exc = done.exception()
        if exc is None:
            response = done.result()
            if rewrite is not None and response.body and 200 <= (response.status or 0) < 300:
                self.ctx.spawn(self._rewritten(origin, peer, original, response, rewrite))
                return
            if original.method == 'BYE' and self.ctx.events.wants(CallChanged):
                self._ended(origin, original, response.status)
            self.ctx.relay_final(origin, peer, original, response)
            return
        logger.info('relaying in-dialog %s failed: %s', original.method, exc)
        if origin.is_open:
            status = 408 if isinstance(exc, TransactionTimeout) else 480
            self.ctx.send(origin, make_response(original, status))


    def _ended(self, origin: Flow, bye: SIPMessage, status: int | None) -> None:
        """A BYE's final response: the call ended, by whoever sent the BYE."""
        call_id = bye.get('Call-ID') or ''
        book = self.ctx.calls
        record = book.ended(call_id)
        try:
            tag = bye.from_addr().tag
        except SIPParseError:
            tag = None
        ended_by = None if record is None else \
            'caller' if tag is not None and tag == record.caller_tag else 'callee'
        self.ctx.events.publish(book.event('ended', record, status, origin, ended_by,
                                           call_id=call_id, caller=bye.get('From') or '',
                                           callee=bye.get('To') or ''))

    async def _rewritten(self, origin: Flow, peer: Flow, original: SIPMessage,
                         response: SIPMessage, rewrite: Rewrite) -> None:
        await rewrite(response)
        self.ctx.relay_final(origin, peer, original, response)


def _uri_host(uri: str) -> str:
    """The host of a Request-URI, lower-cased ('' when it cannot be parsed)."""
    try:
        return SipURI.parse(uri).host.lower()
    except SIPParseError:
        return ''
