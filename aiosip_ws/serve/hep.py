"""HEP export (``--hep``): every SIP message serve receives or sends, to Homer or sngrep.

:class:`HepExport` is a consumer of the event stream's
:class:`~aiosip_ws.serve.events.WireMessage` events: the bytes each transport received
or sent (WebSocket and TLS decrypted, UDP and TCP), with the addresses serve's sockets
saw (behind nginx, the proxy's; with ``--proxy-protocol``, the client's from the PROXY
header).  Each becomes one HEP v3 packet (:mod:`aiosip_ws.core.hep`): IP protocol 17 for
UDP, 6 for WebSocket, TCP and TLS; protocol type SIP; the time the transport saw it; the
capture agent id (``--hep-id``); the auth key (``--hep-password``); the Call-ID as the
correlation id; the node's name in a cluster.  What leaves is redacted first
(:func:`aiosip_ws.core.capture.redact`: credentials, cookies and MESSAGE bodies stay in
unless ``--trace-secrets`` / ``--trace-bodies``).

Nothing here holds up the relay: events wait in the subscription's bounded queue (beyond
``queue`` they are dropped, counted in ``aiosip_ws_event_drops_total{consumer="hep"}``),
are encoded in batches from the event loop, and each collector's
:class:`~aiosip_ws.transport.hep.HepSender` drops what its socket will not take.  A
message that does not fit a HEP packet (64 KiB) is not sent and is counted.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from ..core import capture, hep
from ..errors import HepError
from ..transport.hep import HepSender
from ..transport.throttle import LogThrottle
from .events import EventStream, Subscription, WireMessage

__all__ = ['HepExport']

logger = logging.getLogger(__name__)
peer_log = LogThrottle(logger)

#: WireMessage events that may wait for the exporter before they are dropped
QUEUE = 20000


class HepExport:
    """Sends each WireMessage to every collector of ``urls`` (see the module)."""

    def __init__(self, urls: Iterable[str], *, capture_id: int = 1,
                 password: str | None = None, node: str | None = None,
                 secrets: bool = False, bodies: bool = False, queue: int = QUEUE) -> None:
        self.senders = [HepSender(url) for url in urls]
        self.capture_id = capture_id
        self.password = password
        self.node = node
        self.secrets, self.bodies = secrets, bodies
        self.queue = queue
        #: messages not sent for being larger than a HEP packet
        self.too_large = 0
        #: messages encoded and handed to the senders
        self.exported = 0
        self._subscription: Subscription | None = None

    async def start(self, events: EventStream) -> None:
        """Open the collectors' sockets, then follow ``events``."""
        for sender in self.senders:
            await sender.start()
        self._subscription = events.subscribe('hep', self.consume, (WireMessage,),
                                              maxsize=self.queue)

    def consume(self, event: WireMessage) -> None:
        """One message to every collector (called by the event stream, in batches)."""
        if getattr(event.flow, 'is_remote', False):
            return                   # over the bus: the node holding the client exports it
        data = capture.redact(event.data, secrets=self.secrets, bodies=self.bodies)
        try:
            packet = hep.encode_message(
                event.source, event.destination,
                hep.IPPROTO_UDP if event.transport == 'udp' else hep.IPPROTO_TCP,
                event.time, data, capture_id=self.capture_id, password=self.password,
                correlation_id=capture.call_id_of(data) or None, node=self.node)
        except HepError as exc:
            self.too_large += 1
            peer_log.warning('hep not sent', 'a SIP message was not exported as HEP: %s', exc)
            return
        self.exported += 1
        for sender in self.senders:
            sender.send(packet)

    def counts(self) -> dict[tuple[str, str], int]:
        """(collector, outcome) -> packets so far: ``sent``, ``dropped`` (the collector
        is down or slow), ``too_large`` (the collector ``*``)."""
        counts = {('*', 'too_large'): self.too_large}
        for sender in self.senders:
            counts[(sender.url, 'sent')] = sender.sent
            counts[(sender.url, 'dropped')] = sender.dropped
        return counts

    async def close(self) -> None:
        """Leave the stream (what it queued is sent first), close the collectors."""
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None
        for sender in self.senders:
            await sender.close()
