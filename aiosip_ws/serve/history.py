"""The call history (``--call-history``): recent calls and transactions, for the console.

:class:`CallHistory` is a consumer of the event stream: every
:class:`~aiosip_ws.serve.events.WireMessage` (the bytes of a SIP message serve received
or sent), every :class:`~aiosip_ws.serve.events.ConnectionClosed` of a connection a call
used, and every :class:`~aiosip_ws.serve.events.MediaCommand` (what serve asked
rtpengine) lands in the record of its Call-ID.  Everything is bounded:

* at most ``size`` records, the least recently active forgotten first, and none older
  than ``age`` seconds since its last message;
* at most ``per_call`` entries in a record (beyond, the entries are counted as lost);
* at most ``max_bytes`` in all (the messages' bytes and about :data:`ENTRY_COST` per
  entry, measured with tracemalloc: a call of 7 messages of 500 bytes takes 6.5 KB),
  the least recently active calls forgotten first;
* the events wait in the subscription's own queue (a full queue drops them, counted in
  ``aiosip_ws_event_drops_total{consumer="history"}``): the relay never waits for it.

What is kept is redacted as HEP and traces are (:func:`aiosip_ws.core.capture.redact`).
Each record can be had as a pcap (:meth:`CallHistory.pcap`).  In a cluster each node
keeps its own history, labelled with the node's name.
"""
from __future__ import annotations

import collections
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from ..core import pcap
from ..core.capture import redact, summary, user_host
from ..core.grammar import ip_of
from .events import ConnectionClosed, EventStream, MediaCommand, Subscription, WireMessage

__all__ = ['CallHistory', 'CallRecord', 'Entry']

#: events that may wait for the history before they are dropped
QUEUE = 20000
#: what an entry costs beyond its message's bytes (tracemalloc, CPython 3.12)
ENTRY_COST = 450


@dataclass
class Entry:
    """One thing that happened in a call: a message (``kind`` ``message``), a WebSocket
    connection it used that opened (``opened``: when, even before the call) or closed
    (``closed``, ``label`` its close code), or a media relay command (``media``)."""

    time: float
    kind: str
    label: str
    direction: str = ''
    transport: str = ''
    source: tuple[str, int] = ('', 0)
    destination: tuple[str, int] = ('', 0)
    data: bytes = b''

    def as_json(self) -> dict[str, Any]:
        return {'time': self.time, 'kind': self.kind, 'label': self.label,
                'direction': self.direction, 'transport': self.transport,
                'source': list(self.source), 'destination': list(self.destination),
                'text': self.data.decode('utf-8', 'replace')}


@dataclass
class CallRecord:
    """What the history keeps of one Call-ID."""

    call_id: str
    started: float
    node: str | None
    method: str | None = None
    from_: str = ''
    to: str = ''
    status: int | None = None
    updated: float = 0.0
    #: (transport, address, port) of every peer that took part (serve's own side excluded)
    peers: set[tuple[str, str, int]] = field(default_factory=set)
    parties: set[str] = field(default_factory=set)
    entries: list[Entry] = field(default_factory=list)
    #: entries not kept: the record was full
    lost: int = 0
    #: what it holds (its messages' bytes, ENTRY_COST each)
    cost: int = 0
    #: the flows its messages crossed (held weakly: a record keeps no connection alive)
    flows: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)

    def __post_init__(self) -> None:
        self.updated = max(self.updated, self.started)

    def summary(self) -> dict[str, Any]:
        return {'call_id': self.call_id, 'started': self.started, 'method': self.method,
                'from': self.from_, 'to': self.to, 'status': self.status,
                'duration': round(self.updated - self.started, 3),
                'peers': ['%s:%s:%d' % peer for peer in sorted(self.peers)], 'node': self.node,
                'messages': sum(1 for e in self.entries if e.kind == 'message'),
                'lost': self.lost}


class CallHistory:
    """See the module."""

    def __init__(self, *, size: int = 1000, age: float = 3600.0, per_call: int = 200,
                 max_bytes: int = 64 << 20, secrets: bool = False, bodies: bool = False,
                 node: str | None = None, clock: Any = time.time) -> None:
        if size < 1 or age <= 0 or per_call < 1 or max_bytes < 1:
            raise ValueError('a call history keeps at least one call, one entry, a while')
        self.size, self.age, self.per_call = size, age, per_call
        self.max_bytes = max_bytes
        #: what the records hold, in all
        self.cost = 0
        self.secrets, self.bodies = secrets, bodies
        self.node = node
        self.clock = clock
        #: Call-ID -> record, least recently active first
        self.calls: collections.OrderedDict[str, CallRecord] = collections.OrderedDict()
        #: a flow (by identity) -> the Call-IDs of the records it appears in
        #: a flow -> the Call-IDs of the records it appears in (a record forgets its
        #: flows when it goes; a flow that goes takes its entry with it)
        self._by_flow: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
        self._subscription: Subscription | None = None

    def follow(self, events: EventStream) -> None:
        """Record from ``events`` from now on."""
        self._subscription = events.subscribe(
            'history', self.consume, (WireMessage, ConnectionClosed, MediaCommand),
            maxsize=QUEUE)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None

    # -- recording ----------------------------------------------------------------------------
    def consume(self, event: Any) -> None:
        if type(event) is WireMessage:
            self._message(event)
        elif type(event) is ConnectionClosed:
            for call_id in self._by_flow.pop(event.flow, ()):
                record = self.calls.get(call_id)
                if record is not None:
                    self._add(record, Entry(event.time, 'closed', str(event.code or 1006),
                                            transport=str(event.flow.transport_name),
                                            source=_peer(event.flow)))
        elif type(event) is MediaCommand:
            record = self.calls.get(event.call_id)
            if record is not None:
                self._add(record, Entry(event.time, 'media', '%s %s' % (event.command,
                                                                         event.outcome)))

    def _message(self, event: WireMessage) -> None:
        about = summary(event.data)
        if not about.call_id:
            return
        record = self.calls.get(about.call_id)
        if record is None:
            record = self.calls[about.call_id] = CallRecord(about.call_id, event.time,
                                                            self.node)
            self._expire(event.time)
        else:
            self.calls.move_to_end(about.call_id)
        data = redact(event.data, secrets=self.secrets, bodies=self.bodies)
        if record.method is None and about.method is not None:
            record.method = about.method
            record.from_, record.to = _header(data, (b'from', b'f')), _header(data, (b'to', b't'))
        if about.status is not None and about.status >= 200 and \
                about.cseq_method == record.method:
            record.status = about.status
        record.parties |= about.parties
        peer = event.peer
        party = (event.transport, str(peer[0]), int(peer[1]))
        if party not in record.peers:
            record.peers.add(party)
            opened = getattr(event.flow, 'opened_time', None)    # a connection's open
            if opened is not None:
                self._add(record, Entry(opened, 'opened', 'opened', transport=event.transport,
                                        source=(str(peer[0]), int(peer[1]))))
        if event.flow not in record.flows:
            record.flows.add(event.flow)
            self._by_flow.setdefault(event.flow, set()).add(about.call_id)
        label = about.method or str(about.status or '?')
        self._add(record, Entry(event.time, 'message', label, event.direction,
                                event.transport, event.source, event.destination, data))

    def _add(self, record: CallRecord, entry: Entry) -> None:
        record.updated = max(record.updated, entry.time)
        if len(record.entries) >= self.per_call:
            record.lost += 1
            return
        record.entries.append(entry)
        cost = len(entry.data) + ENTRY_COST
        record.cost += cost
        self.cost += cost
        if self.cost > self.max_bytes:
            self._expire(entry.time)

    def _expire(self, now: float) -> None:
        calls = self.calls
        while calls:
            call_id, oldest = next(iter(calls.items()))
            if len(calls) <= self.size and now - oldest.updated <= self.age and \
                    (self.cost <= self.max_bytes or len(calls) == 1):
                break
            del calls[call_id]
            self.cost -= oldest.cost
            for flow in oldest.flows:
                ids = self._by_flow.get(flow)
                if ids is not None:
                    ids.discard(call_id)
                    if not ids:
                        del self._by_flow[flow]

    # -- reading ------------------------------------------------------------------------------
    def recent(self, *, aor: str | None = None, address: str | None = None,
               call_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """The newest records first, as summaries, filtered like a trace."""
        self._expire(self.clock())
        wanted_ip = ip_of(address) if address else None
        wanted_aor = user_host(aor) if aor else None
        found = []
        for record in reversed(self.calls.values()):
            if call_id is not None and record.call_id != call_id:
                continue
            if wanted_aor is not None and wanted_aor not in record.parties:
                continue
            if wanted_ip is not None and not any(
                    _same_ip(host, wanted_ip) for _, host, _ in record.peers):
                continue
            found.append(record.summary())
            if len(found) >= limit:
                break
        return found

    def get(self, call_id: str) -> CallRecord | None:
        return self.calls.get(call_id)

    def pcap(self, call_id: str, framing: str = 'udp') -> bytes | None:
        """The call's messages as a pcapng file, or None when the history has no such
        call: one UDP datagram per message (``framing`` ``udp``) or TCP segments with
        consistent sequence numbers (``tcp``), with the real addresses and ports; each
        packet's comment names the transport that carried it (:mod:`aiosip_ws.core.pcap`).
        """
        record = self.calls.get(call_id)
        if record is None:
            return None
        tcp = pcap.TcpFraming() if framing == 'tcp' else None
        out = [pcap.pcapng_header()]
        for entry in record.entries:
            if entry.kind != 'message':
                continue
            try:
                packet = tcp.packet(entry.source, entry.destination, entry.data) if tcp \
                    else pcap.udp_packet(entry.source, entry.destination, entry.data)
            except ValueError:
                continue                            # too large for a packet: left out
            out.append(pcap.pcapng_packet(entry.time, packet, 'transport=%s' % entry.transport))
        return b''.join(out)


def _peer(flow: Any) -> tuple[str, int]:
    peer = getattr(flow, 'peer_addr', None) or flow.remote_addr
    return (str(peer[0]), int(peer[1]))


def _same_ip(text: str, wanted: Any) -> bool:
    try:
        return bool(ip_of(text) == wanted)
    except ValueError:
        return False


def _header(data: bytes, names: tuple[bytes, ...]) -> str:
    head = data.split(b'\r\n\r\n', 1)[0]
    for line in head.split(b'\r\n')[1:]:
        name, colon, value = line.partition(b':')
        if colon and name.strip().lower() in names:
            return value.strip().decode('utf-8', 'replace')[:200]
    return ''
