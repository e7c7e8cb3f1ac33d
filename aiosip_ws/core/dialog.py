"""Dialogs as data (RFC 3261 §12): the state a user agent keeps for a call, and the
requests it sends inside one.

:class:`DialogState` is built from the request and response that created the dialog
(as the UAS, §12.1.1, or the UAC, §12.1.2) and writes in-dialog requests (§12.2.1.1):
Request-URI from the remote target, Route from the route set (loose or strict
routing), From/To with both tags, the local CSeq.  It checks the remote CSeq of
requests received (§12.2.2) and follows target refreshes.  No I/O: the caller adds
its Via and sends.  :func:`new_request` writes a request outside any dialog.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from ..errors import SIPParseError
from .codec import SIPMessage
from .grammar import DEFAULT_MAX_FORWARDS
from .sipuri import NameAddr
from .transaction import new_call_id, new_tag

__all__ = ['DialogState', 'new_request']


def new_request(method: str, uri: str, *, from_: str, to: str, contact: str | None = None,
                call_id: str | None = None, cseq: int = 1, body: bytes = b'',
                content_type: str | None = None,
                headers: list[tuple[str, str]] | None = None) -> SIPMessage:
    """A request outside any dialog (RFC 3261 §8.1.1), without its Via (the sender adds
    it).  ``from_`` gets a fresh tag unless it has one."""
    sender = NameAddr.parse(from_)
    if sender.tag is None:
        sender = sender.with_param('tag', new_tag())
    out = [('Max-Forwards', str(DEFAULT_MAX_FORWARDS)), ('From', str(sender)), ('To', to),
           ('Call-ID', call_id or new_call_id()), ('CSeq', '%d %s' % (cseq, method))]
    if contact:
        out.append(('Contact', contact))
    out.extend(headers or ())
    if content_type:
        out.append(('Content-Type', content_type))
    return SIPMessage(method=method, uri=uri, headers=out, body=body)


def _route_set(message: SIPMessage) -> list[str]:
    return [value.strip() for value in message.get_all('Record-Route')]


def _contact_uri(message: SIPMessage) -> str | None:
    contacts = message.get_all('Contact')
    return str(NameAddr.parse(contacts[0]).uri) if contacts else None


@dataclass
class DialogState:
    """One dialog, seen from our side (RFC 3261 §12)."""

    call_id: str
    #: our name-addr with our tag (the From of what we send)
    local: str
    #: the peer's name-addr with its tag (the To of what we send)
    remote: str
    #: the peer's Contact URI: the Request-URI of what we send
    remote_target: str
    #: Route values, in the order our requests carry them
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 0
    remote_cseq: int | None = None
    #: our Contact header value (sent on target-refresh requests)
    contact: str | None = None

    @property
    def local_tag(self) -> str | None:
        return NameAddr.parse(self.local).tag

    @property
    def remote_tag(self) -> str | None:
        return NameAddr.parse(self.remote).tag

    @classmethod
    def as_uas(cls, request: SIPMessage, local_tag: str, contact: str | None = None
               ) -> DialogState:
        """The dialog a 2xx/18x to ``request`` creates at its UAS (§12.1.1)."""
        target = _contact_uri(request)
        if target is None:
            raise SIPParseError('%s has no Contact: no dialog can be made' % request.method)
        local = NameAddr.parse(request.get('To') or '')
        if local.tag is None:
            local = local.with_param('tag', local_tag)
        return cls(call_id=request.get('Call-ID') or '', local=str(local),
                   remote=request.get('From') or '', remote_target=target,
                   route_set=_route_set(request),
                   local_cseq=secrets.randbelow(1 << 16), remote_cseq=request.cseq[0],
                   contact=contact)

    @classmethod
    def as_uac(cls, request: SIPMessage, response: SIPMessage) -> DialogState:
        """The dialog ``response`` (a 2xx/18x with a To tag) creates at the UAC (§12.1.2)."""
        target = _contact_uri(response)
        if target is None:
            raise SIPParseError('the %d to %s has no Contact: no dialog can be made'
                                % (response.status or 0, request.method))
        return cls(call_id=request.get('Call-ID') or '', local=request.get('From') or '',
                   remote=response.get('To') or '', remote_target=target,
                   route_set=list(reversed(_route_set(response))),
                   local_cseq=request.cseq[0], contact=request.get('Contact'))

    def request(self, method: str, *, body: bytes = b'', content_type: str | None = None,
                headers: list[tuple[str, str]] | None = None, cseq: int | None = None
                ) -> SIPMessage:
        """The next request of this dialog (§12.2.1.1), without its Via.

        The CSeq goes up by one, except for ACK (give the INVITE's ``cseq``).
        """
        if cseq is None:
            if method == 'ACK':
                raise ValueError('an ACK repeats its INVITE\'s CSeq number: pass cseq')
            self.local_cseq += 1
            cseq = self.local_cseq
        uri, routes = self.remote_target, list(self.route_set)
        if routes and not NameAddr.parse(routes[0]).uri.has_param('lr'):
            # strict routing (§12.2.1.1): the first route becomes the Request-URI
            uri = str(NameAddr.parse(routes.pop(0)).uri)
            routes.append('<%s>' % self.remote_target)
        out = [('Max-Forwards', str(DEFAULT_MAX_FORWARDS))]
        out += [('Route', route) for route in routes]
        out += [('From', self.local), ('To', self.remote), ('Call-ID', self.call_id),
                ('CSeq', '%d %s' % (cseq, method))]
        if self.contact and method in ('INVITE', 'UPDATE', 'SUBSCRIBE', 'NOTIFY', 'REFER'):
            out.append(('Contact', self.contact))
        out.extend(headers or ())
        if content_type:
            out.append(('Content-Type', content_type))
        return SIPMessage(method=method, uri=uri, headers=out, body=body)

    def accepts(self, request: SIPMessage) -> bool:
        """Whether ``request``'s CSeq may come now (§12.2.2: lower than the last one gets a
        500); ACK and CANCEL repeat their INVITE's number and are always accepted."""
        number = request.cseq[0]
        if request.method in ('ACK', 'CANCEL'):
            return True
        if self.remote_cseq is not None and number <= self.remote_cseq:
            return False
        self.remote_cseq = number
        return True

    def refresh_target(self, message: SIPMessage) -> None:
        """A target refresh (re-INVITE, UPDATE, or its 2xx) updates the remote target
        (§12.2.1.2, §12.2.2)."""
        target = _contact_uri(message)
        if target is not None:
            self.remote_target = target
