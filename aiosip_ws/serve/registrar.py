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
from ..core.grammar import parse_delta_seconds, parse_qvalue
from ..core.sipuri import NameAddr, SipURI
from ..errors import ConfigurationError, SIPParseError

__all__ = ['Binding', 'Registrar', 'RegisterResult', 'register_aor']

logger = logging.getLogger(__name__)


@dataclass(slots=True)
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
    #: the Contact's ``q`` (RFC 3261 §10.2.1.2), 1.0 without one: forking goes by it
    q: float = 1.0
    #: kept after its connection closed (TCP without Outbound): it expires by time only
    by_time: bool = False

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

    @property
    def key(self) -> tuple[str, ...]:
        """What a new Contact must match to refresh or replace this binding."""
        return _key(self.contact, self.instance, self.reg_id)

    @property
    def public_contact(self) -> NameAddr:
        """The Contact as other connections may see it: without ``+sip.instance`` and
        ``reg-id``, which would let them replace the flow."""
        hidden = ('+sip.instance', 'reg-id')
        return NameAddr(self.contact.uri, self.contact.display_name,
                        tuple(p for p in self.contact.params if p[0].lower() not in hidden))


def _key(contact: NameAddr, instance: str | None, reg_id: str | None) -> tuple[str, ...]:
    """RFC 5626 §6: a flow is (instance, reg-id); otherwise the Contact URI (RFC 3261 §10.3)."""
    if instance and reg_id:
        return ('flow', instance, reg_id)
    return ('uri', str(contact.uri))


def register_aor(request: SIPMessage) -> str | RegisterResult:
    """The address-of-record a REGISTER is for (its To URI), or the 400 to answer."""
    try:
        return NameAddr.parse(request.get('To') or '').uri.aor     # as to_addr() would
    except SIPParseError as exc:
        return RegisterResult(400, 'Bad Request (%s)' % exc)


def _address(connection: Any) -> str:
    host, port = getattr(connection, 'remote_addr', ('?', 0))
    return '%s:%s' % (host, port)


@dataclass
class RegisterResult:
    status: int
    reason: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


class Registrar:
    """Bindings by AOR, with expiry; no I/O.  ``clock`` is injectable for tests."""

    def __init__(self, *, default_expires: int = 3600, min_expires: int = 1,
                 max_expires: int = 3600, max_contacts: int = 10,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_contacts < 1:
            raise ConfigurationError('max_contacts must be at least 1, not %r' % (max_contacts,))
        self.default_expires = default_expires
        self.min_expires = min_expires
        self.max_expires = max_expires
        #: most bindings one address-of-record may have (``--max-contacts-per-aor``)
        self.max_contacts = max_contacts
        self.clock = clock
        self._bindings: dict[str, list[Binding]] = {}
        #: connection -> the AORs it holds bindings of, so that a closing connection
        #: costs what it owns, not what the registrar holds
        self._aors_of: dict[Any, set[str]] = {}
        #: told of every binding ``added``, ``refreshed`` or ``removed``:
        #: ``on_change(change, binding, why)`` (serve publishes them as events)
        self.on_change: Callable[[str, Binding, str], None] | None = None

    # -- queries --------------------------------------------------------------------
    def lookup(self, aor: str) -> list[Binding]:
        """Live bindings of ``aor`` (open connection, not expired), newest first."""
        now = self.clock()
        current = self._bindings.get(aor, ())
        live = [b for b in current
                if b.expires_at > now and (b.by_time or getattr(b.connection, 'is_open', True))]
        if len(live) != len(current):
            self.store(aor, list(live), why='expired')
        if len(live) < 2:
            return live
        return sorted(live, key=lambda b: b.registered_at, reverse=True)

    def aors(self) -> list[str]:
        return [aor for aor in list(self._bindings) if self.lookup(aor)]

    def __len__(self) -> int:
        return sum(len(v) for v in self._bindings.values())

    @property
    def aor_count(self) -> int:
        """AORs holding bindings (expired ones included until a lookup drops them)."""
        return len(self._bindings)

    # -- updates --------------------------------------------------------------------
    def remove_connection(self, connection: Any,
                          keep: Callable[[Binding], bool] | None = None) -> int:
        """Drop every binding registered over ``connection`` (but those ``keep`` says to
        keep: they expire by time); returns how many."""
        removed = 0
        for aor in self._aors_of.pop(connection, ()):
            if aor not in self._bindings:
                continue
            kept = []
            for binding in self._bindings[aor]:
                if binding.connection is not connection:
                    kept.append(binding)
                elif keep is not None and keep(binding):
                    binding.by_time = True
                    kept.append(binding)
            removed += len(self._bindings[aor]) - len(kept)
            if self.on_change is not None:
                kept_ids = {id(b) for b in kept}
                for binding in self._bindings[aor]:
                    if id(binding) not in kept_ids:
                        self.on_change('removed', binding, 'connection closed')
            if kept:
                self._bindings[aor] = kept
            else:
                del self._bindings[aor]
        return removed

    def register(self, request: SIPMessage, connection: Any, *,
                 authenticated: bool = False) -> RegisterResult:
        """Apply a REGISTER as RFC 3261 §10.3 says (see :meth:`evaluate`); the result says
        what to answer."""
        aor = register_aor(request)
        if isinstance(aor, RegisterResult):
            return aor
        now = self.clock()
        result, bindings = self.evaluate(request, connection, self._bindings.get(aor, []),
                                         authenticated=authenticated, now=now, aor=aor)
        if bindings is None:
            return result
        self.store(aor, bindings)
        return self.accepted(self.lookup(aor), now, request, connection, authenticated)

    def evaluate(self, request: SIPMessage, connection: Any, current: list[Binding], *,
                 authenticated: bool = False, now: float,
                 aor: str | None = None) -> tuple[RegisterResult, list[Binding] | None]:
        """What a REGISTER does to ``current``, the bindings of its AOR (no state is
        changed): an error to answer and None, or 200 and the AOR's new bindings.  The
        in-memory registrar applies it to its own; a shared location service (Redis)
        applies it to what it read, atomically.

        ``authenticated``: the request's user was authenticated as the owner of the AOR,
        so every binding of it is theirs to refresh, replace or remove (``Contact: *``
        removes them all), over any connection.

        Without authentication the connection stands for the client: a binding can be
        refreshed, replaced or removed only over the connection that created it, or by
        an RFC 5626 flow replacement (same ``+sip.instance`` and ``reg-id``: the
        reconnect case).  An AOR holds at most ``max_contacts`` bindings; a REGISTER
        that would add more gets 403, while refreshes and removals always go through;
        so does one with more Contacts than that, before any of them is parsed (no AOR
        has more bindings to refresh or remove).  The work is linear in the Contacts.
        ``aor``: the request's :func:`register_aor`, when the caller has it already.
        """
        values = request.get_all('Contact')
        if len(values) > self.max_contacts:
            return RegisterResult(403, 'Forbidden (%d Contacts in one REGISTER; at most %d '
                                  'bindings per address-of-record)'
                                  % (len(values), self.max_contacts)), None
        try:
            if aor is None:
                aor = request.to_addr().uri.aor
            contacts = [NameAddr.parse(value) for value in values]   # as contacts() would
        except SIPParseError as exc:
            return RegisterResult(400, 'Bad Request (%s)' % exc), None
        expires_header = request.get('Expires')
        try:
            header_expires = (None if expires_header is None
                              else parse_delta_seconds(expires_header, 'Expires'))
        except SIPParseError as exc:              # RFC 3261 §10.2.1.1 deviation: see conformance
            return RegisterResult(400, 'Bad Request (%s)' % exc.reason), None
        call_id = request.get('Call-ID') or ''
        cseq, _ = request.cseq
        current = [b for b in current
                   if b.expires_at > now and getattr(b.connection, 'is_open', True)]

        if any(c.star for c in contacts):                          # RFC 3261 §10.3 step 6
            if len(contacts) != 1:
                return RegisterResult(400, 'Bad Request (Contact: * must be the only Contact)'), None
            if header_expires != 0:
                return RegisterResult(400, 'Bad Request (Contact: * needs Expires: 0)'), None
            # without authentication, "all bindings" are the ones this connection made
            kept = [] if authenticated else [b for b in current if b.connection is not connection]
            return RegisterResult(200), kept

        outbound = self._supports_outbound(request)
        planned: list[tuple[NameAddr, int, str | None, str | None]] = []
        qvalues: list[float] = []
        for contact in contacts:
            value = contact.param('expires')
            q_text = contact.param('q')
            try:
                expires = (header_expires if value is None
                           else parse_delta_seconds(value, 'expires parameter'))
                qvalues.append(1.0 if q_text is None else parse_qvalue(q_text))
            except SIPParseError as exc:
                return RegisterResult(400, 'Bad Request (%s)' % exc.reason), None
            if expires is None:
                expires = self.default_expires
            if 0 < expires < self.min_expires:
                return RegisterResult(423, headers=[('Min-Expires', str(self.min_expires))]), None
            bare = contact if not contact.has_param('expires') else NameAddr(
                contact.uri, contact.display_name,
                tuple(p for p in contact.params if p[0].lower() != 'expires'))
            instance = contact.param('+sip.instance') if outbound else None
            reg_id = contact.param('reg-id') if outbound else None
            planned.append((bare, min(expires, self.max_expires), instance, reg_id))
        if outbound and sum(1 for _, e, _, r in planned if r is not None and e) > 1:
            return RegisterResult(400, 'Bad Request (more than one Contact with reg-id)'), None

        index = {b.key: b for b in current}
        adding = 0
        for bare, expires, instance, reg_id in planned:
            old = index.get(_key(bare, instance, reg_id))
            if old is None:
                adding += 1 if expires > 0 else 0
                continue
            if old.call_id == call_id and old.cseq >= cseq:          # RFC 3261 §10.3 step 7
                return RegisterResult(500, 'Server Internal Error (CSeq out of order)'), None
            if old.connection is not connection and old.flow_key is None and not authenticated:
                return RegisterResult(403, 'Forbidden (%s was registered over another '
                                      'connection)' % old.uri), None
        if adding and len(current) + adding > self.max_contacts:
            return RegisterResult(403, 'Forbidden (at most %d bindings per address-of-record)'
                                  % self.max_contacts), None

        for (bare, expires, instance, reg_id), q in zip(planned, qvalues, strict=True):
            key = _key(bare, instance, reg_id)
            old = index.pop(key, None)
            if old is not None and old.connection is not connection:
                logger.info('%s: flow %s moved from %s to %s (RFC 5626 flow replacement)', aor,
                            old.flow_key, _address(old.connection), _address(connection))
            if expires > 0:
                index[key] = Binding(aor, bare, connection, now + expires, call_id, cseq,
                                     instance, reg_id, registered_at=now, q=q)
        return RegisterResult(200), list(index.values())

    def bindings_of(self, connection: Any) -> list[Binding]:
        """The bindings registered over ``connection`` (at most what it holds)."""
        return [b for aor in self._aors_of.get(connection, ()) for b in self._bindings.get(aor, ())
                if b.connection is connection]

    def replaces_flow(self, request: SIPMessage, owner: Any) -> bool:
        """True if ``request`` is an RFC 5626 flow replacement of a binding held over
        ``owner``: same AOR, a Contact with the same ``+sip.instance`` and ``reg-id``."""
        if not self._supports_outbound(request):
            return False
        try:
            aor = request.to_addr().uri.aor
            contacts = request.contacts()
        except SIPParseError:
            return False
        flows = {(c.param('+sip.instance'), c.param('reg-id')) for c in contacts}
        return any(b.connection is owner and b.flow_key in flows
                   for b in self._bindings.get(aor, ()))

    # -- helpers --------------------------------------------------------------------
    def store(self, aor: str, bindings: list[Binding], *, why: str = 'registered') -> None:
        """``bindings`` become the AOR's; a connection left with none of them no longer
        lists the AOR, so the per-connection index stays as small as what it holds.
        ``why``: what removed the bindings that go (told to :attr:`on_change`)."""
        before = self._bindings.get(aor, ())
        if self.on_change is not None:
            self._changes(before, bindings, why)
        if bindings:
            self._bindings[aor] = bindings
        else:
            self._bindings.pop(aor, None)
        for binding in bindings:
            self._aors_of.setdefault(binding.connection, set()).add(aor)
        holders = {id(b.connection) for b in bindings}
        for gone in before:
            if id(gone.connection) not in holders:
                aors = self._aors_of.get(gone.connection)
                if aors is not None:
                    aors.discard(aor)
                    if not aors:
                        del self._aors_of[gone.connection]

    def _changes(self, before: Iterable[Binding], after: list[Binding], why: str) -> None:
        assert self.on_change is not None
        old = {b.key: b for b in before}
        for binding in after:
            previous = old.pop(binding.key, None)
            if previous is None:
                self.on_change('added', binding, why)
            elif previous is not binding:
                self.on_change('refreshed', binding, why)
        for binding in old.values():
            self.on_change('removed', binding, 'unregistered' if why == 'registered' else why)

    @staticmethod
    def _supports_outbound(request: SIPMessage) -> bool:
        return any(t.strip().lower() == 'outbound'
                   for v in request.get_all('Supported') for t in v.split(','))

    def accepted(self, live: list[Binding], now: float, request: SIPMessage, connection: Any,
            authenticated: bool = False) -> RegisterResult:
        """200 OK with every binding in ``live`` (the AOR's, newest first); unless the user
        was authenticated, the Outbound parameters of bindings that other connections hold
        are left out, so that a query cannot learn them."""
        headers = [('Contact', '%s;expires=%d' % (b.contact if authenticated or b.connection is connection
                                                  else b.public_contact, b.remaining(now)))
                   for b in live]
        if any(b.flow_key for b in live) and self._supports_outbound(request):
            headers.append(('Require', 'outbound'))                     # RFC 5626 §6
        return RegisterResult(200, headers=headers)

    def snapshot(self) -> dict[str, list[str]]:
        """AOR -> registered Contacts, for logs and tests."""
        return {aor: [str(b.contact) for b in self.lookup(aor)] for aor in list(self._bindings)}

    def bindings(self) -> Iterable[Binding]:
        for aor in list(self._bindings):
            yield from self.lookup(aor)
