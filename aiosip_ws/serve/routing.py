"""Routing in Python: what an app given to ``aiosip-ws serve --app`` sees and returns.

An app is an object (or a module) with any of these coroutine functions, each optional:

``on_request(request)``
    every out-of-dialog request, after admission (rate limits, caps) and authentication;
    returns a :class:`Reply`, a :class:`Relay`, or None for serve's default routing.
``on_failure(request, response)``
    every final non-2xx response the caller of an INVITE would otherwise get (from
    downstream or from serve itself), never after the caller's CANCEL; returns a
    :class:`Relay` (try elsewhere), a :class:`Reply`, or None to send ``response`` as it is.
``on_in_dialog(request)``
    every in-dialog request but ACK; returns None (serve routes it) or a :class:`Reply`
    of 300-699 (refused).
``startup(serve)`` / ``shutdown()``
    when serve starts and stops, and around a reload; ``serve`` (:class:`Serve`) lets
    the app act: send a MESSAGE, look up a user's bindings.
``credentials(user, realm)``
    the :class:`Credentials` of a user, from the operator's own store, in place of
    ``--users FILE`` (cached by serve); None for a user who does not exist.
``token_identity(claims)``
    a plain function: the :class:`TokenUser` a verified JWT's claims stand for, or None
    to refuse the handshake (with ``--jwt-secret``).
``on_event(event)``
    each event of serve's event stream the app asked for (its ``events`` attribute: the
    classes of :mod:`aiosip_ws.serve.events`; by default registrations, calls and
    connections), from a bounded queue of its own: a slow app loses events (counted in
    ``aiosip_ws_event_drops_total{consumer="app"}``), never slows serve.

The :class:`App` base class declares them with their types; subclassing it is optional.
Everything here is plain data: the stage that calls the app is
:mod:`aiosip_ws.serve.app`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.codec import SIPMessage, canonical_name
from ..core.sipuri import NameAddr, SipURI
from ..errors import RoutingError, SIPParseError

__all__ = ['App', 'Request', 'Response', 'Reply', 'Relay', 'Target', 'Registered',
           'Identity', 'Outcome', 'Credentials', 'TokenUser', 'Serve', 'aor_key',
           'PROTECTED_HEADERS', 'HOOKS']

#: headers that stay serve's: the transaction, the hop count, the route serve records and
#: the framing (a change raises :class:`~aiosip_ws.errors.RoutingError` naming the header)
PROTECTED_HEADERS = {
    'via': 'Via is the transaction\'s path: serve adds its own',
    'cseq': 'CSeq belongs to the caller\'s transaction',
    'call-id': 'Call-ID belongs to the caller\'s dialog',
    'max-forwards': 'Max-Forwards is the hop count: serve decrements it',
    'record-route': 'Record-Route is written by serve for the dialogs it stays in',
    'route': 'Route is not for the app: give a next hop with Target(uri, proxy=...)',
    'content-length': 'Content-Length is computed by serve from the body',
    'content-type': 'Content-Type goes with the body: use set_body(body, content_type)',
}


def aor_key(uri: str | SipURI | NameAddr) -> str:
    """An address-of-record as RFC 3261 §19.1.4 compares them: ``sip:user@host`` with the
    host in lower case, ``sips`` as ``sip``, parameters, display name and tags ignored.
    Raises :class:`~aiosip_ws.errors.SIPParseError` for text that is no URI."""
    if isinstance(uri, str):
        uri = NameAddr.parse(uri).uri if '<' in uri else SipURI.parse(uri)
    if isinstance(uri, NameAddr):
        uri = uri.uri
    scheme = 'sip' if uri.scheme == 'sips' else uri.scheme.lower()
    if uri.user is None:
        return '%s:%s' % (scheme, uri.host.lower())
    return '%s:%s@%s' % (scheme, uri.user, uri.host.lower())


@dataclass(frozen=True)
class Identity:
    """Who sent a request, as serve verified it."""

    #: the user name of the credentials (Digest) or the token's subject
    user: str
    #: the address-of-record the request comes from (its From), which the user owns
    aor: str
    #: how it was verified: ``'digest'`` or ``'token'``
    how: str


class Request:
    """One request as the app sees it: read what it carries; change the Request-URI, the
    headers that are not serve's (:data:`PROTECTED_HEADERS`) and the body."""

    __slots__ = ('_message', 'identity', 'source', 'transport', 'attempt')

    def __init__(self, message: SIPMessage, *, identity: Identity | None,
                 source: tuple[str, int] | None, transport: str, attempt: int = 1) -> None:
        self._message = message
        #: who sent it, as verified (``--users`` or ``--jwt-secret``), or None
        self.identity = identity
        #: the address it came from (host, port), as serve's socket saw it
        self.source = source
        #: the transport it came over: ``ws``, ``wss``, ``udp``, ``tcp``, ``tls``
        self.transport = transport
        #: 1 for the first routing of this request, 2 after one failure routed again, ...
        self.attempt = attempt

    # -- reading ------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self._message.method or ''

    @property
    def uri(self) -> SipURI:
        """The Request-URI."""
        return SipURI.parse(self._message.uri or '')

    @property
    def call_id(self) -> str:
        return self._message.get('Call-ID') or ''

    @property
    def from_uri(self) -> SipURI:
        return NameAddr.parse(self._message.get('From') or '').uri

    @property
    def to_uri(self) -> SipURI:
        return NameAddr.parse(self._message.get('To') or '').uri

    @property
    def from_aor(self) -> str:
        """The caller's address-of-record, compared as :func:`aor_key` says."""
        return aor_key(self.from_uri)

    @property
    def to_aor(self) -> str:
        return aor_key(self.to_uri)

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def content_type(self) -> str | None:
        return self._message.get('Content-Type')

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case, compact form allowed), or None."""
        return self._message.get(name)

    def header_values(self, name: str) -> list[str]:
        """Every value of ``name`` (comma-separated values of list headers split)."""
        return self._message.get_all(name)

    # -- changing -----------------------------------------------------------------------
    def set_uri(self, uri: str | SipURI) -> None:
        """Replace the Request-URI (a ``sip:`` or ``sips:`` URI)."""
        text = str(uri)
        try:
            parsed = SipURI.parse(text)
        except SIPParseError as exc:
            raise RoutingError('set_uri(%r): not a SIP URI (%s)' % (text, exc)) from None
        if parsed.scheme not in ('sip', 'sips'):
            raise RoutingError('set_uri(%r): serve routes sip: and sips: URIs only' % text)
        self._message.uri = text

    def set_header(self, name: str, value: str) -> None:
        """Replace every ``name`` header by one with ``value`` (added when absent)."""
        name, value = self._writable(name, value)
        self._message.set(name, value)

    def add_header(self, name: str, value: str) -> None:
        """Add a ``name`` header after the others."""
        name, value = self._writable(name, value)
        self._message.headers.append((name, value))

    def remove_header(self, name: str) -> None:
        """Remove every ``name`` header (From and To cannot be removed)."""
        name = self._name(name)
        if name.lower() in ('from', 'to'):
            raise RoutingError('remove_header(%r): a request needs its %s' % (name, name))
        self._message.remove(name)

    def set_body(self, body: bytes | str, content_type: str | None = None) -> None:
        """Replace the body (empty: none) and its Content-Type (needed with a body)."""
        data = body.encode('utf-8') if isinstance(body, str) else bytes(body)
        if data and not content_type:
            raise RoutingError('set_body(): a body needs its content_type')
        self._message.body = data
        self._message.remove('Content-Type')
        if data and content_type:
            self._message.headers.append(('Content-Type', content_type))

    def _name(self, name: str) -> str:
        canonical = canonical_name(name.strip())
        why = PROTECTED_HEADERS.get(canonical.lower())
        if why is not None:
            raise RoutingError('the %s header cannot be changed by the app: %s'
                               % (canonical, why))
        if not canonical or any(c in canonical for c in ' :\r\n'):
            raise RoutingError('%r is not a header name' % name)
        return canonical

    def _writable(self, name: str, value: str) -> tuple[str, str]:
        name = self._name(name)
        if '\r' in value or '\n' in value:
            raise RoutingError('the value of %s holds a line break' % name)
        lower = name.lower()
        if lower in ('from', 'to'):                   # the tag stays the caller's
            old = NameAddr.parse(self._message.get(name) or '')
            try:
                new = NameAddr.parse(value)
            except SIPParseError as exc:
                raise RoutingError('%s: %r is not a name-addr (%s)' % (name, value, exc)) \
                    from None
            if new.tag is not None and new.tag != old.tag:
                raise RoutingError('the %s tag cannot be changed by the app: it names the '
                                   'caller\'s dialog' % name)
            if old.tag is not None and new.tag is None:
                value = str(new.with_param('tag', old.tag))
        return name, value

    def __repr__(self) -> str:
        return '<Request %s %s>' % (self.method, self._message.uri)


class Response:
    """A final response the caller of an INVITE would get (:meth:`App.on_failure`)."""

    __slots__ = ('status', 'reason', '_message', 'by_serve', 'attempt')

    def __init__(self, message: SIPMessage, *, by_serve: bool, attempt: int) -> None:
        self.status = message.status or 500
        self.reason = message.reason
        self._message = message
        #: serve made it (404 or 480 for no binding, 408 for no answer, 503...), rather than
        #: a downstream user agent or proxy
        self.by_serve = by_serve
        #: which routing of the request failed: 1 for the first, 2 for the one the app
        #: chose after a first failure, ...
        self.attempt = attempt

    def header(self, name: str) -> str | None:
        return self._message.get(name)

    def __repr__(self) -> str:
        return '<Response %d %s>' % (self.status, self.reason)


@dataclass(frozen=True)
class Reply:
    """Answer the request: any status of 300-699 (to an INVITE; 200-699 to others),
    with ``headers`` and a ``body`` (``content_type`` needed with a body)."""

    status: int
    reason: str | None = None
    headers: Sequence[tuple[str, str]] = ()
    body: bytes | str = b''
    content_type: str | None = None


@dataclass(frozen=True)
class Target:
    """A URI to send the request to: it becomes the Request-URI, and the request goes to
    its host (or to ``proxy``, a SIP URI of the next hop) over the transport its
    ``transport`` parameter names (UDP without one; ``ws``/``wss`` and, with serve
    listening there, ``udp``, ``tcp``, ``tls``).  ``timeout``: seconds this target may
    take to answer (then CANCELled, counted as 408), None for serve's Timer C."""

    uri: str
    proxy: str | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class Registered:
    """The bindings of an address-of-record registered at serve (in a cluster: at any
    node), all rung at once; ``timeout`` as for :class:`Target`.  None registered (and no
    other target): serve's 404, which :meth:`App.on_failure` hears."""

    aor: str
    timeout: float | None = None


class Relay:
    """Send the request to ``targets`` (URI strings, :class:`Target` or
    :class:`Registered`): all at once (``parallel``, the default) or one after the other,
    the next when the one before failed."""

    __slots__ = ('targets', 'parallel')

    def __init__(self, *targets: str | Target | Registered, parallel: bool = True) -> None:
        if not targets:
            raise RoutingError('Relay() needs at least one target')
        self.targets: tuple[Target | Registered, ...] = tuple(
            Target(t) if isinstance(t, str) else t for t in targets)
        for target in self.targets:
            if not isinstance(target, (Target, Registered)):
                raise RoutingError('Relay(%r): a target is a URI string, Target or Registered'
                                   % (target,))
            if target.timeout is not None and not target.timeout > 0:
                raise RoutingError('%r: a timeout is a positive number of seconds' % (target,))
        self.parallel = parallel

    def __repr__(self) -> str:
        return 'Relay(%s%s)' % (', '.join(map(repr, self.targets)),
                                '' if self.parallel else ', parallel=False')


#: what :meth:`App.on_request` and :meth:`App.on_failure` return
Outcome = Reply | Relay | None


@dataclass(frozen=True)
class Credentials:
    """What serve needs to check a user's Digest answers (:meth:`App.credentials`): the
    HA1 for each algorithm the store has (``{'MD5': ..., 'SHA-256': ...}``, hex), or the
    password (serve derives both); and the addresses-of-record the user may use (none:
    ``sip:USER@DOMAIN`` for each ``--domain``).  serve challenges a user only with the
    algorithms it can verify for that user."""

    ha1: Mapping[str, str] = field(default_factory=dict)
    password: str | None = None
    aors: Sequence[str] = ()


@dataclass(frozen=True)
class TokenUser:
    """Who a verified JWT stands for (:meth:`App.token_identity`): the user, and the
    addresses-of-record its connection may use."""

    user: str
    aors: Sequence[str]


class Serve(Protocol):
    """What an app may ask of serve (handed to ``startup(serve)``)."""

    @property
    def node(self) -> str | None:
        """This node's name (``--node-id``, the cluster's), or None."""

    @property
    def domains(self) -> frozenset[str]:
        """The local domains (``--domain``, else ``--realm``), lower case."""

    async def send_message(self, sender: str, to: str, body: str | bytes,
                           content_type: str = 'text/plain') -> int:
        """Send a MESSAGE (RFC 3428) from ``sender`` to ``to``: to the bindings of ``to``
        when it is registered here (at any node of a cluster), else to its ``--route``;
        the final status (404 when nobody is there, 408 when no answer came)."""

    async def lookup(self, aor: str) -> list[str]:
        """The Contact URIs registered for ``aor`` (at any node of a cluster)."""

    def spawn(self, coroutine: Any) -> Any:
        """Run ``coroutine`` in a task of serve's (ended at shutdown; what it raises is
        logged): work a hook starts and does not wait for, such as a reply MESSAGE.  At
        most ``--max-pending`` run at once; beyond, :class:`~aiosip_ws.errors.RoutingError`."""


#: the hooks an app may define
HOOKS = ('startup', 'shutdown', 'on_request', 'on_failure', 'on_in_dialog', 'credentials',
         'token_identity', 'on_event')


class App:
    """The hooks an app may define (every one optional; see the module).  Subclass it, or
    give serve any object or module with some of these names."""

    async def startup(self, serve: Serve) -> None:
        """Before serve takes requests (and, on reload, before the new app does); keep
        ``serve`` to act later.  (A ``startup()`` without the parameter is called
        without it.)"""

    async def shutdown(self) -> None:
        """When serve stops (and when a reload retired this app and its requests ended)."""

    async def on_request(self, request: Request) -> Outcome:
        """An out-of-dialog request: a :class:`Reply`, a :class:`Relay` or None (serve's
        default routing)."""
        return None

    async def on_failure(self, request: Request, response: Response) -> Outcome:
        """A final non-2xx to an INVITE: a :class:`Relay` (try elsewhere), a
        :class:`Reply`, or None (``response`` goes to the caller)."""
        return None

    async def on_in_dialog(self, request: Request) -> Reply | None:
        """An in-dialog request (not ACK): None (serve routes it) or a 300-699 Reply."""
        return None

    async def credentials(self, user: str, realm: str) -> Credentials | None:
        """The credentials of ``user`` in ``realm``, or None: no such user."""
        return None

    def token_identity(self, claims: Mapping[str, Any]) -> TokenUser | None:
        """Who a verified token's ``claims`` stand for, or None to refuse it (403).  A
        plain function: it runs in the WebSocket handshake."""
        return None

    async def on_event(self, event: Any) -> None:
        """An event of serve's (see ``events``)."""


def hooks_of(app: Any) -> dict[str, Any]:
    """The hooks ``app`` defines (those of :class:`App` it did not override left out)."""
    found = {}
    for name in HOOKS:
        hook = getattr(app, name, None)
        if hook is None or getattr(hook, '__func__', None) is getattr(App, name):
            continue
        if not callable(hook):
            raise RoutingError('the app\'s %s is not a function' % name)
        found[name] = hook
    return found


def reply_parts(reply: Reply, method: str) -> tuple[int, str | None,
                                                    list[tuple[str, str]], bytes]:
    """Check a :class:`Reply` for a request of ``method``: status, reason, headers, body."""
    if not isinstance(reply.status, int) or not 200 <= reply.status <= 699:
        raise RoutingError('Reply(%r): a status is a number from 200 to 699' % (reply.status,))
    if method == 'INVITE' and reply.status < 300:
        raise RoutingError('Reply(%d) to an INVITE: serve is a proxy, not a user agent; '
                           'relay the call to one (Relay) or refuse it with 300-699'
                           % reply.status)
    headers: list[tuple[str, str]] = []
    for name, value in reply.headers:
        canonical = canonical_name(name)
        if canonical.lower() in ('via', 'cseq', 'call-id', 'from', 'to', 'content-length',
                                 'content-type'):
            raise RoutingError('Reply headers: %s is written by serve' % canonical)
        if '\r' in value or '\n' in value:
            raise RoutingError('Reply headers: the value of %s holds a line break' % canonical)
        headers.append((canonical, value))
    body = reply.body.encode('utf-8') if isinstance(reply.body, str) else bytes(reply.body)
    if body:
        if not reply.content_type:
            raise RoutingError('Reply with a body needs its content_type')
        headers.append(('Content-Type', reply.content_type))
    if reply.reason is not None and ('\r' in reply.reason or '\n' in reply.reason):
        raise RoutingError('Reply reason holds a line break')
    return reply.status, reply.reason, headers, body


def targets_text(targets: Iterable[Target | Registered]) -> str:
    return ', '.join(t.aor if isinstance(t, Registered) else t.uri for t in targets)
