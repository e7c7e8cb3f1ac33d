"""Which flow a Contact host lives behind: how in-dialog requests find their way.

A WebSocket client's Contact host is a random ``.invalid`` name (RFC 7118 Appendix B.1),
never resolved: serve learns it from the Contacts that cross each connection and routes
requests for it over that connection.  A UDP/TCP/TLS user agent's Contact is an address:
in-dialog requests to it go back the way it came (RFC 3581 through NAT), keyed by
``host:port``.  The index is kept both ways (host -> flow, and each flow's hosts in its
:class:`~aiosip_ws.serve.flow.FlowState`), so a closing flow costs what it owns.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from ..core.codec import SIPMessage
from .flow import NETWORK_TRANSPORTS, Flow, is_remote

__all__ = ['ContactIndex']

logger = logging.getLogger(__name__)


class ContactIndex:
    """Contact host -> the flow behind it."""

    def __init__(self) -> None:
        self._hosts: dict[str, Flow] = {}
        #: in a cluster, tells the other nodes (``claim(host, flow)``); None alone
        self.shared: Callable[[str, Flow], None] | None = None

    def __len__(self) -> int:
        return len(self._hosts)

    def __iter__(self) -> Iterator[str]:
        """The hosts indexed."""
        return iter(self._hosts)

    def get(self, host: str) -> Flow | None:
        """The flow behind ``host`` (lower case), open or not."""
        return self._hosts.get(host)

    def claim(self, host: str, flow: Flow) -> None:
        """``host`` now routes to ``flow``; in a cluster the other nodes learn it too.  A
        flow of another node is not recorded here: that node records it."""
        if not flow.is_open or is_remote(flow):
            return
        previous = self._hosts.get(host)
        if previous is flow:
            if self.shared is not None:
                self.shared(host, flow)                 # its TTL in Redis starts again
            return
        if previous is not None:
            previous.flow_state.contact_hosts.discard(host)
            logger.info('Contact host %s moved from %r to %r', host, previous, flow)
        self._hosts[host] = flow
        flow.flow_state.contact_hosts.add(host)
        if self.shared is not None:
            self.shared(host, flow)

    def claim_free(self, host: str, flow: Flow) -> None:
        """Claim ``host`` unless another open flow holds it."""
        owner = self._hosts.get(host)
        if owner is None or owner is flow or not owner.is_open:
            self.claim(host, flow)

    def learn_contact(self, flow: Flow, message: SIPMessage) -> None:
        """Remember the flow behind the first Contact of ``message`` (a request or response
        that came over ``flow``)."""
        contact = message.first_name_addr('Contact')
        if contact is None:
            return
        uri = contact.uri
        host = uri.host.lower()
        if host.endswith('.invalid'):
            self.claim_free(host, flow)
        elif flow.transport_name in NETWORK_TRANSPORTS:
            self.claim('%s:%d' % (host, uri.port or 5060), flow)

    def learn_record_route(self, flow: Flow, message: SIPMessage) -> None:
        """A proxy that reached us over a WebSocket connection it opened record-routes with
        that connection's ``.invalid`` host: requests of the dialog go back over it."""
        record_route = message.first_name_addr('Record-Route')
        if record_route is None:
            return
        host = record_route.uri.host.lower()
        if host.endswith('.invalid') and self._hosts.get(host) in (None, flow):
            self.claim(host, flow)

    def release(self, flow: Flow) -> list[str]:
        """``flow`` closed: the hosts it held no longer route to it; they are returned."""
        hosts = flow.flow_state.contact_hosts
        released = [host for host in hosts if self._hosts.get(host) is flow]
        for host in released:
            del self._hosts[host]
        hosts.clear()
        return released
