"""What serve talks over, and what it keeps for each.

A :class:`Flow` is any way to a SIP peer: a WebSocket connection (clients, or a next hop
serve opened), a TCP/TLS connection or a UDP peer behind the bridge
(:class:`~aiosip_ws.serve.bridge.BridgedFlow`), a client connection another cluster node
holds (:class:`~aiosip_ws.serve.cluster.RemoteConnection`).  The pipeline is typed
against this protocol; each kind is a concrete class of its own.

Every flow carries one :class:`FlowState` in ``flow_state``, made when serve first sees
it: what the stages keep per flow, as typed attributes.
"""
from __future__ import annotations

import asyncio
from typing import Any, Protocol

from ..core.codec import SIPMessage
from ..core.ratelimit import TokenBucket
from ..options import ConnectionOptions
from .auth import Identity

__all__ = ['Flow', 'FlowState', 'state_of', 'is_remote', 'NETWORK_TRANSPORTS']

#: the transports of the bridge's flows (RFC 7118 §8.2: the other side of serve)
NETWORK_TRANSPORTS = frozenset({'udp', 'tcp', 'tls'})


class FlowState:
    """What serve keeps for one flow."""

    __slots__ = ('contact_hosts', 'relaying', 'identity', 'cluster_id', 'flow_id',
                 'nc_claim', 'auth_failures', 'rate_closing', 'expiry', 'bucket', 'over_since',
                 'last_refusal')

    def __init__(self) -> None:
        #: the Contact hosts routed to this flow (``.invalid`` names, or ``host:port``)
        self.contact_hosts: set[str] = set()
        #: requests from it that serve is relaying now
        self.relaying: int = 0
        #: who the request in hand acts as (its handshake token, or its Digest credentials)
        self.identity: Identity | None = None
        #: its name on the cluster's bus ('' outside a cluster)
        self.cluster_id: str = ''
        #: its number in the flow tokens of an RFC 5626 edge (0 outside edge mode)
        self.flow_id: int = 0
        #: the Digest nonce and count of the request in hand, for the cluster-wide check
        self.nc_claim: tuple[str, int] | None = None
        #: Digest failures in a row (each makes the next challenge wait longer)
        self.auth_failures: int = 0
        #: closing for being over the request rate too long
        self.rate_closing: bool = False
        #: closes the connection when its handshake token expires
        self.expiry: asyncio.TimerHandle | None = None
        #: the request rate (``max_requests_per_second``), made with its first request
        self.bucket: TokenBucket | None = None
        #: since when it has been over the rate (None: it is not)
        self.over_since: float | None = None
        #: when a request of it was last refused for the rate
        self.last_refusal: float = 0.0


class Flow(Protocol):
    """What the pipeline uses of a flow (a structural type: WebSocket, bridged UDP, TCP and
    TLS flows and remote connections each have these)."""

    #: what serve keeps for it, made when serve first sees it (:func:`state_of`)
    flow_state: FlowState

    @property
    def transport_name(self) -> str:
        """``ws``, ``wss``, ``udp``, ``tcp`` or ``tls``: how serve reaches it."""

    @property
    def via_transport(self) -> str: ...

    @property
    def reliable(self) -> bool:
        """False for a UDP peer: its requests are retransmitted by the transaction layer."""

    @property
    def remote_addr(self) -> tuple[str, int]: ...

    @property
    def options(self) -> ConnectionOptions: ...

    @property
    def is_open(self) -> bool: ...

    @property
    def via_host(self) -> str: ...

    def via(self, branch: str) -> str: ...

    def send(self, message: SIPMessage) -> bool: ...


def state_of(flow: Any) -> FlowState:
    """The :class:`FlowState` of ``flow`` (a transport's connection, whose ``flow_state``
    is None until serve sees it first), made now if it has none.  Every flow that reaches
    the pipeline has one: serve reads ``flow.flow_state`` from then on."""
    state: FlowState | None = flow.flow_state
    if state is None:
        state = flow.flow_state = FlowState()
    return state


def is_remote(flow: Flow) -> bool:
    """Whether ``flow`` is held by another node of the cluster (only
    :class:`~aiosip_ws.serve.cluster.RemoteConnection` says so)."""
    return bool(getattr(flow, 'is_remote', False))
