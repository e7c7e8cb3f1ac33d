"""SIP over UDP on asyncio (RFC 3261 §18), on the project's own codec.

:func:`listen_udp` binds a socket and returns a :class:`UDPEndpoint`.  Every datagram
holds one message (:func:`aiosip_ws.core.framing.receive` parses it, exactly as a
WebSocket message; CR/LF-only datagrams are keep-alives).  Each peer address is a
:class:`UDPFlow`, the object a handler is given and sends through, as it would a
connection: the same ``send``, ``via`` and ``state`` as a WebSocket connection, with
``reliable`` False so that the transaction layer
(:class:`aiosip_ws.transport.transactions.TransactionLayer`) retransmits.  Requests get
``received``/``rport`` on their top Via (RFC 3581).  The flows are bounded: the least
recently used one is forgotten past ``max_flows``.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from typing import Any, Protocol, cast

from ..core import framing
from ..core.codec import SIPMessage, mark_received, serialize
from ..core.grammar import show_address
from ..errors import ConfigurationError
from .tap import tap_of
from .throttle import LogThrottle, wire_logger

__all__ = ['UDPEndpoint', 'UDPFlow', 'UDPHandler', 'listen_udp', 'MAX_DATAGRAM']

logger = logging.getLogger(__name__)
peer_log = LogThrottle(logger)

#: the socket buffers asked for, bytes (the kernel may give less)
SOCKET_BUFFER = 4 << 20
#: the largest datagram sent or taken (RFC 3261 §18.1.1 would move bigger requests to TCP)
MAX_DATAGRAM = 65507

Address = tuple[str, int]


class UDPHandler(Protocol):
    def message_received(self, flow: UDPFlow, message: SIPMessage) -> None: ...


class UDPFlow:
    """One UDP peer of an endpoint: where its messages come from and go to."""

    reliable = False
    via_transport = 'UDP'
    transport_name = 'udp'

    def __init__(self, endpoint: UDPEndpoint, remote_addr: Address) -> None:
        self.endpoint = endpoint
        self.remote_addr = remote_addr
        self.local_addr = endpoint.local_addr
        #: free-form per-flow state for applications (as on a WebSocket connection)
        self.state: dict[str, Any] = {}
        #: what the layer above keeps for it (serve's bridge: its BridgedFlow)
        self.flow_state: Any = None

    def __repr__(self) -> str:
        return '<UDPFlow %s>' % show_address(self.remote_addr)

    @property
    def is_open(self) -> bool:
        return self.endpoint.is_open

    @property
    def via_host(self) -> str:
        return self.endpoint.via_host

    def via(self, branch: str) -> str:
        """Our Via on a request sent to this peer, asking for ``rport`` (RFC 3581)."""
        return 'SIP/2.0/UDP %s;branch=%s;rport' % (self.endpoint.via_host, branch)

    def send(self, message: SIPMessage) -> bool:
        return self.endpoint.send_to(message, self.remote_addr)


class UDPEndpoint(asyncio.DatagramProtocol):
    """A bound UDP socket carrying SIP."""

    def __init__(self, handler: UDPHandler, *, max_flows: int = 20000,
                 advertise: str | None = None) -> None:
        self.handler = handler
        #: where the bytes of each SIP message go (see :mod:`aiosip_ws.transport.tap`)
        self.tap = tap_of(handler)
        self.max_flows = max_flows
        self.advertise = advertise
        self.transport: asyncio.DatagramTransport | None = None
        self.local_addr: Address = ('0.0.0.0', 0)
        self._flows: collections.OrderedDict[Address, UDPFlow] = collections.OrderedDict()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (Python 3.10's selector transport does not inherit from DatagramTransport)
        self.transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info('socket')
        if sock is not None:
            # bursts of datagrams while the loop is busy: room for them rather than loss
            # (and retransmissions); the kernel caps this at net.core.rmem_max / wmem_max
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        sockname = transport.get_extra_info('sockname')
        self.local_addr = (sockname[0], sockname[1])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the transaction's timers handle the loss
        peer_log.info('udp-error', 'UDP %s: %s', show_address(self.local_addr), exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        remote: Address = (addr[0], addr[1])
        flow = self.flow(remote)
        event = framing.receive(data)
        sink = self.tap.sink
        if sink is not None and isinstance(event, (framing.MessageReceived,
                                                   framing.MessageRejected)):
            sink('in', flow, data)
        if isinstance(event, framing.MessageReceived):
            message = event.message
            if wire_logger.isEnabledFor(logging.DEBUG):
                wire_logger.debug('%r received:\n%s', flow, data.decode('utf-8', 'replace'))
            if message.is_request:
                mark_received(message, remote[0], remote[1])
            self.handler.message_received(flow, message)
        elif isinstance(event, framing.MessageRejected):
            peer_log.info('udp-bad', '%s sent a message that was refused: %s',
                          show_address(remote), event.error)
            if event.response is not None:
                self.send_to(event.response, remote)
        elif isinstance(event, framing.KeepAlivePing):
            self._sendto(framing.CRLF_PONG.encode(), remote)

    # -- ours ---------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.closed.done()

    @property
    def via_host(self) -> str:
        """The sent-by of our Vias: ``--advertise`` or the bound address."""
        return self.advertise or show_address(self.local_addr)

    def flow(self, remote: Address) -> UDPFlow:
        """The flow of peer ``remote`` (made on first use; the oldest forgotten past
        ``max_flows``)."""
        flow = self._flows.get(remote)
        if flow is None:
            flow = self._flows[remote] = UDPFlow(self, remote)
            if len(self._flows) > self.max_flows:
                self._flows.popitem(last=False)
        else:
            self._flows.move_to_end(remote)
        return flow

    def send_to(self, message: SIPMessage, remote: Address) -> bool:
        data = serialize(message)
        if len(data) > MAX_DATAGRAM:
            peer_log.warning('udp-big', 'a %d-byte message to %s does not fit a datagram: '
                             'dropped', len(data), show_address(remote))
            return False
        if wire_logger.isEnabledFor(logging.DEBUG):
            wire_logger.debug('<UDPFlow %s> sent:\n%s', show_address(remote),
                              data.decode('utf-8', 'replace'))
        sink = self.tap.sink
        if sink is not None and self.is_open:
            sink('out', self.flow(remote), data)
        return self._sendto(data, remote)

    def _sendto(self, data: bytes, remote: Address) -> bool:
        if not self.is_open:
            return False
        assert self.transport is not None
        self.transport.sendto(data, remote)
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        await self.closed


async def listen_udp(host: str, port: int, handler: UDPHandler, *, max_flows: int = 20000,
                     advertise: str | None = None) -> UDPEndpoint:
    """Bind ``host``:``port`` (0: any free port) for SIP over UDP."""
    loop = asyncio.get_running_loop()
    try:
        _, endpoint = await loop.create_datagram_endpoint(
            lambda: UDPEndpoint(handler, max_flows=max_flows, advertise=advertise),
            local_addr=(host, port))
    except OSError as exc:
        raise ConfigurationError('cannot listen on udp://%s:%d: %s' % (host, port,
                                                                       exc.strerror)) from exc
    return endpoint
