"""The calls serve relayed that have not ended: when each started and was answered, who
called, and the flows of its parties, so that the ``ended`` :class:`CallChanged
<aiosip_ws.serve.events.CallChanged>` says how long a call lasted and who ended it.

Kept only while a consumer of the event stream wants CallChanged (the app's
``on_event``, a program's subscription): otherwise nothing is written here.  Bounded: at
most ``size`` calls, the oldest forgotten first (its end then has no start).
"""
from __future__ import annotations

import collections
import time
from typing import Any

from ..core.sipuri import NameAddr
from ..errors import SIPParseError
from .events import CallChanged

__all__ = ['CallBook', 'CallRecord']


class CallRecord:
    """One call in progress."""

    __slots__ = ('call_id', 'caller', 'callee', 'caller_tag', 'started', 'answered',
                 'origin', 'peer')

    def __init__(self, call_id: str, caller: str, callee: str, origin: Any) -> None:
        self.call_id, self.caller, self.callee = call_id, caller, callee
        try:
            self.caller_tag = NameAddr.parse(caller).tag
        except SIPParseError:
            self.caller_tag = None
        self.started: float = time.time()
        self.answered: float | None = None
        #: the caller's flow, and the callee's once answered
        self.origin = origin
        self.peer: Any = None


class CallBook:
    """See the module."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        #: the node's name written into the events (``--node-id``, the cluster's), or None
        self.node: str | None = None
        self._calls: collections.OrderedDict[str, CallRecord] = collections.OrderedDict()
        #: answered calls by the flows of their parties
        self._by_flow: dict[Any, set[str]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def get(self, call_id: str) -> CallRecord | None:
        return self._calls.get(call_id)

    def event(self, change: str, record: CallRecord | None, status: int | None, flow: Any,
              ended_by: str | None = None, *, call_id: str = '', caller: str = '',
              callee: str = '') -> CallChanged:
        """The :class:`CallChanged` of a call: its parties and times from ``record``, or,
        when the book has none, the ``call_id``, ``caller`` and ``callee`` given."""
        if record is None:
            return CallChanged(change, call_id, caller, callee, status, flow, None, None,
                               ended_by, self.node)
        return CallChanged(change, record.call_id, record.caller, record.callee, status, flow,
                           record.started, record.answered, ended_by, self.node)

    def attempted(self, call_id: str, caller: str, callee: str, origin: Any) -> CallRecord:
        record = self._calls.get(call_id)
        if record is None:
            record = self._calls[call_id] = CallRecord(call_id, caller, callee, origin)
            while len(self._calls) > self.size:
                _, oldest = self._calls.popitem(last=False)
                self._unindex(oldest)
        return record

    def answered(self, call_id: str, peer: Any) -> CallRecord | None:
        record = self._calls.get(call_id)
        if record is not None and record.answered is None:
            record.answered = time.time()
            record.peer = peer
            for flow in (record.origin, peer):
                self._by_flow.setdefault(flow, set()).add(call_id)
        return record

    def ended(self, call_id: str) -> CallRecord | None:
        record = self._calls.pop(call_id, None)
        if record is not None:
            self._unindex(record)
        return record

    def flow_lost(self, flow: Any) -> list[CallRecord]:
        """The answered calls ``flow`` was a party of, forgotten (its connection is gone)."""
        records = [self._calls.pop(call_id) for call_id in self._by_flow.pop(flow, ())
                   if call_id in self._calls]
        for record in records:
            self._unindex(record)
        return records

    def _unindex(self, record: CallRecord) -> None:
        for flow in (record.origin, record.peer):
            ids = self._by_flow.get(flow)
            if ids is not None:
                ids.discard(record.call_id)
                if not ids:
                    del self._by_flow[flow]
