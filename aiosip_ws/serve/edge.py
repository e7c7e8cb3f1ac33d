"""RFC 5626 edge mode (``--registrar``): serve keeps no bindings; REGISTERs go upstream
with a Path naming the client's connection by a flow token (RFC 3327, RFC 5626 §5.1),
and requests that come back with that token in their top Route go over that connection
(§5.3: 403 for a forged token, 430 when the flow is gone)."""
from __future__ import annotations

import itertools
import logging
from typing import Any

from ..core.codec import SIPMessage
from ..core.flowtoken import FlowTokenError, FlowTokens
from ..core.sipuri import SipURI
from ..errors import SIPParseError
from ..transport.throttle import LogThrottle
from .context import Context, forwarding_refusal, max_forwards_of
from .dialogs import Dialogs
from .flow import Flow
from .fork import LEARN_FROM
from .hops import Hops

__all__ = ['Edge', 'route_token']

logger = logging.getLogger(__name__)
peer_log = LogThrottle(logger)


def route_token(message: SIPMessage) -> str | None:
    """The flow token in the user part of the top Route, if it has one."""
    if message.get('Route') is None:
        return None
    route = message.first_name_addr('Route')
    user = route.uri.user if route is not None else None
    return user if user and FlowTokens.looks_like(user) else None


class Edge:
    """See the module."""

    def __init__(self, ctx: Context, hops: Hops, dialogs: Dialogs, registrar: SipURI,
                 flow_secret: bytes | None) -> None:
        self.ctx = ctx
        self.hops = hops
        self.dialogs = dialogs
        #: the registrar REGISTERs go to
        self.registrar = registrar
        self.flow_tokens = FlowTokens(flow_secret)
        self._flows: dict[int, Flow] = {}
        self._flow_ids = itertools.count(1)

    def flow_made(self, flow: Flow) -> None:
        flow_id = flow.flow_state.flow_id = next(self._flow_ids)
        self._flows[flow_id] = flow

    def flow_gone(self, flow: Flow) -> None:
        self._flows.pop(flow.flow_state.flow_id, None)

    def token_of(self, flow: Flow) -> str | None:
        """The flow token naming ``flow`` (None for a flow serve numbered none)."""
        flow_id = flow.flow_state.flow_id
        return self.flow_tokens.issue(flow_id) if flow_id else None

    # -- REGISTER upstream -------------------------------------------------------------
    async def register(self, flow: Flow, request: SIPMessage) -> None:
        """The route of REGISTER: relayed to the registrar with our Path,
        ``<sip:TOKEN@EDGE;lr>``, ``;ob`` when the Contact asks for Outbound (``reg-id``)."""
        token = self.flow_tokens.issue(flow.flow_state.flow_id)
        max_forwards = max_forwards_of(request)
        refusal = forwarding_refusal(max_forwards)
        if refusal is not None:
            self.ctx.reply(flow, request, *refusal)
            return
        assert max_forwards is not None
        outbound = any('reg-id=' in value.replace(' ', '') for value in request.get_all('Contact'))

        def add_path(hop: Any) -> None:
            path = '<sip:%s@%s;lr%s>' % (token, hop.via_host, ';ob' if outbound else '')
            first = next((i for i, (k, _) in enumerate(request.headers) if k == 'Path'), None)
            request.headers.insert(first if first is not None else len(request.headers),
                                   ('Path', path))

        await self.hops.to_hop(flow, request, self.registrar, max_forwards,
                               what='the registrar', prepare=add_path)

    # -- the edge-token stage ----------------------------------------------------------
    def inbound(self, flow: Flow, message: SIPMessage) -> bool:
        """A request whose top Route is one of our flow tokens goes over that client's
        connection (True: taken or answered)."""
        token = route_token(message)
        if token is None:
            return False
        try:
            flow_id = self.flow_tokens.check(token)
        except FlowTokenError:
            peer_log.warning('bad flow tokens', '%r: a request with a forged flow token', flow)
            self.ctx.reply(flow, message, 403, 'Forbidden (bad flow token)')
            return True
        peer = self._flows.get(flow_id) if flow_id is not None else None
        if peer is None or not peer.is_open:
            self.ctx.reply(flow, message, 430)
            return True
        try:
            to_tag = message.to_addr().tag
        except SIPParseError as exc:
            self.ctx.bad_request(flow, message, exc)
            return True
        record = None
        if to_tag is None and message.method in LEARN_FROM:
            # both sides, the upstream one with the token: the dialog's requests come back
            record = [self.ctx.record_route(peer), self.ctx.record_route(flow, token)]
        self.dialogs.forward(flow, message, peer, to_tag, record_route=record)
        return True
