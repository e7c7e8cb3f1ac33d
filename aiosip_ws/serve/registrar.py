"""An in-memory location service and REGISTER processing (RFC 3261 10.3, RFC 5626 6).

Bindings map an address-of-record to the Contacts registered for it, each
tied to the WebSocket connection the REGISTER arrived on: a WebSocket client
can only be reached over the connection it opened (RFC 7118 Appendix
B.1), so when that connection closes its bindings go too (RFC 5626 §5.3).

With SIP Outbound (RFC 5626), a Contact that carries ``+sip.instance`` and
``reg-id`` names a *flow*: a new REGISTER for the same instance and reg-id
replaces the old binding instead of adding one (RFC 5626 6, step 3).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..core.codec import SIPMessage
from ..core.sipuri import NameAddr, SipURI
from ..errors import SIPParseError

__all__ = ['Binding', 'Registrar', 'RegisterResult']

logger = logging.getLogger(__name__)


@dataclass
class Binding:
    aor: str
    contact: NameAddr                 # as registered, without the expires parameter
    connection: Any                   # the WSConnection it was registered over
    expires_at: float
    call_id: str
    cseq: int
    instance: str | None = None
    reg_id: str | None = None
    registered_at: float = field(default_factory=time.monotonic)

    @property
    def uri(self) -> SipURI:
        return self.contact.uri

    @property
    def flow_key(self) -> tuple[str, str] | None:
        if self.instance and self.reg_id:
            return (self.instance, self.reg_id)
        return None

    def remaining(self, now: float) -> int:
        return max(0, int(round(self.expires_at - now)))


@dataclass
class RegisterResult:
    status: int
    reason: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


class Registrar:
    """Bindings by AOR, with expiry; no I/O.  ``clock`` is injectable for tests."""

    def __init__(self, *, default_expires: int = 3600, min_expires: int = 1,
                 max_expires: int = 3600, clock: Callable[[], float] = time.monotonic) -> None:
        self.default_expires = default_expires
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.clock = clock
        self._bindings: dict[str, list[Binding]] = {}
        #: connection -> the AORs it holds bindings of, so that a closing connection
        #: costs what it owns, not what the registrar holds
        self._aors_of: dict[Any, set[str]] = {}

    # -- queries --------------------------------------------------------------------
    def lookup(self, aor: str) -> list[Binding]:
        """Live bindings of ``aor`` (open connection, not expired), newest first."""
        now = self.clock()
        live = [b for b in self._bindings.get(aor, ())
                if b.expires_at > now and getattr(b.connection, 'is_open', True)]
        if live:
            self._bindings[aor] = list(live)
        else:
            self._bindings.pop(aor, None)
        return sorted(live, key=lambda b: b.registered_at, reverse=True)

    def aors(self) -> list[str]:
        return [aor for aor in list(self._bindings) if self.lookup(aor)]

    def __len__(self) -> int:
        return sum(len(v) for v in self._bindings.values())

    # -- updates --------------------------------------------------------------------
    def remove_connection(self, connection: Any) -> int:
        """Drop every binding registered over ``connection``; returns how many."""
        removed = 0
        for aor in self._aors_of.pop(connection, ()):
            if aor not in self._bindings:
                continue
            kept = [b for b in self._bindings[aor] if b.connection is not connection]
            removed += len(self._bindings[aor]) - len(kept)
            if kept:
                self._bindings[aor] = kept
            else:
                del self._bindings[aor]
        return removed

    def register(self, request: SIPMessage, connection: Any) -> RegisterResult:
        """Apply a REGISTER as RFC 3261 10.3 says; the result says what to answer."""
        try:
            aor = NameAddr.parse(request.get('To') or '').uri.aor
            contacts = [NameAddr.parse(value) for value in request.get_all('Contact')]
        except SIPParseError as exc:
            return RegisterResult(400, 'Bad Request (%s)' % exc)
        call_id = request.get('Call-ID') or ''
        cseq, _ = request.cseq
        header_expires = self._int(request.get('Expires'))
        now = self.clock()
        current = self._bindings.setdefault(aor, [])

        if any(c.star for c in contacts):                          # RFC 3261 10.3 step 6
            if len(contacts) != 1 or header_expires != 0:
                return RegisterResult(400, 'Bad Request (Contact: * needs Expires: 0 and no '
                                      'other Contact)')
            current.clear()
            return self._ok(aor, now, request)

        outbound = self._supports_outbound(request)
        with_reg_id = [c for c in contacts if c.param('reg-id') is not None
                       and self._expires_of(c, header_expires) != 0]
        if outbound and len(with_reg_id) > 1:                      # RFC 5626 §6
            return RegisterResult(400, 'Bad Request (more than one Contact with reg-id)')
        for contact in contacts:
            expires = self._expires_of(contact, header_expires)
            if expires is None:
                return RegisterResult(400, 'Bad Request (bad expires value)')
            if 0 < expires < self.min_expires:
                return RegisterResult(423, headers=[('Min-Expires', str(self.min_expires))])
        for contact in contacts:
            expires = min(self._expires_of(contact, header_expires) or 0, self.max_expires)
            bare = NameAddr(contact.uri, contact.display_name,
                            tuple(p for p in contact.params if p[0].lower() != 'expires'))
            instance = contact.param('+sip.instance') if outbound else None
            reg_id = contact.param('reg-id') if outbound else None
            same = [b for b in current if self._same_binding(b, bare, instance, reg_id)]
            for old in same:
                if old.call_id == call_id and old.cseq >= cseq:       # RFC 3261 10.3 step 7
                    return RegisterResult(500, 'Server Internal Error (CSeq out of order)')
            for old in same:
                current.remove(old)
            if expires > 0:
                current.append(Binding(aor, bare, connection, now + expires, call_id, cseq,
                                       instance, reg_id, registered_at=now))
                self._aors_of.setdefault(connection, set()).add(aor)
        return self._ok(aor, now, request)

    # -- helpers --------------------------------------------------------------------
    @staticmethod
    def _int(value: str | None) -> int | None:
        if value is None:
            return None
        value = value.strip()
        return int(value) if value.isdigit() else -1

    def _expires_of(self, contact: NameAddr, header_expires: int | None) -> int | None:
        value = self._int(contact.param('expires'))
        if value is None:
            value = header_expires
        if value is None:
            value = self.default_expires
        return None if value < 0 else value

    @staticmethod
    def _supports_outbound(request: SIPMessage) -> bool:
        tokens = {t.strip().lower() for v in request.get_all('Supported') for t in v.split(',')}
        return 'outbound' in tokens

    @staticmethod
    def _same_binding(old: Binding, contact: NameAddr, instance: str | None,
                      reg_id: str | None) -> bool:
        if instance and reg_id:
            return old.flow_key == (instance, reg_id)
        return old.flow_key is None and str(old.uri) == str(contact.uri)

    def _ok(self, aor: str, now: float, request: SIPMessage) -> RegisterResult:
        headers = [('Contact', '%s;expires=%d' % (b.contact, b.remaining(now)))
                   for b in self.lookup(aor)]
        if any(b.flow_key for b in self._bindings.get(aor, ())) and self._supports_outbound(request):
            headers.append(('Require', 'outbound'))                     # RFC 5626 6
        return RegisterResult(200, headers=headers)

    def snapshot(self) -> dict[str, list[str]]:
        """AOR -> registered Contacts, for logs and tests."""
        return {aor: [str(b.contact) for b in self.lookup(aor)] for aor in list(self._bindings)}

    def bindings(self) -> Iterable[Binding]:
        for aor in list(self._bindings):
            yield from self.lookup(aor)
