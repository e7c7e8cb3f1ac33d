"""The admin WebSocket: live traces (``aiosip-ws trace``) and admin actions
(``aiosip-ws admin``).

serve's listeners take a second kind of WebSocket connection on the same port: one that
offers the subprotocol ``aiosip-ws.admin`` (:data:`SUBPROTOCOL`).  Its handshake passes
only with ``--admin-token``:

* the token in an ``Authorization: Bearer TOKEN`` header, or, for a browser (which cannot
  set headers on a WebSocket), as a second offered subprotocol
  ``aiosip-ws.token.BASE64URL`` (the token in URL-safe base64 without padding); a token
  in the URL (``?token=``) is refused with 400: URLs end up in logs and histories;
* or the console's cookie (:mod:`aiosip_ws.serve.console`), which the console's pages
  send;
* an ``Origin``, when the client sends one (browsers do), in ``--admin-origin``, by
  default the listener's own (the console's pages);
* at most ``--max-tracers`` admin connections at once (503 beyond).

Without ``--admin-token`` there is no admin WebSocket (the subprotocol is refused).

Each request is one JSON text frame; one that asks nothing within
``FIRST_MESSAGE_TIMEOUT`` seconds is closed.

* ``{"trace": {"aor": ..., "address": ..., "call_id": ..., "method": ...}}`` (each filter
  optional; all given must match) makes the connection a tracer: ``{"type": "tracing",
  "filter": {...}}``, then a frame for each SIP message serve receives or sends that
  matches: ``{"type": "message", "time", "direction", "transport", "source",
  "destination", "call_id", "method", "status", "text"}`` (``base64`` instead of
  ``text`` for a message that is not UTF-8), redacted as HEP is
  (:mod:`aiosip_ws.core.capture`).  A tracer is a consumer of the event stream's
  :class:`~aiosip_ws.serve.events.WireMessage` events with a queue of its own: one that
  reads slowly loses messages, counted in ``aiosip_ws_event_drops_total{consumer=
  "trace"}`` and told to it (``{"type": "dropped", "count": N}``), and one that does not
  read for ``SEND_TIMEOUT`` seconds is closed (1008).  The relay never waits for it.
* ``{"action": NAME, "id": ANY, ...}`` runs an admin action and answers ``{"type":
  "result", "id", "action", "result"}`` or ``{"type": "error", "id", "action",
  "error"}``; each action logs one INFO line (what, from where):

  - ``connections``: the WebSocket connections (``id``, transport, address, socket peer,
    identity, AORs, age in seconds, requests in progress, bytes of SIP received and sent,
    bytes waiting to be sent);
  - ``close`` ``{"connection": ID, "code": 1000, "reason": ""}``: close one (Kamailio's
    ``ws.close``);
  - ``unbind`` ``{"aor": AOR, "contact": URI}``: remove an AOR's bindings (all, or the one
    whose Contact URI is given; one node only);
  - ``drain`` ``{"window": SECONDS}``: what SIGUSR1 does;
  - ``reload``: what SIGHUP does (the TLS certificate, the ``--users`` file).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..core.capture import Summary, redact, summary, user_host
from ..core.grammar import ip_of
from ..transport.listener import offered_subprotocols
from ..transport.throttle import LogThrottle
from .console import token_offered, valid_cookie
from .events import EventStream, Subscription, WireMessage

__all__ = ['AdminSocket', 'TraceFilter', 'SUBPROTOCOL', 'TOKEN_SUBPROTOCOL', 'ACTIONS']

logger = logging.getLogger(__name__)
peer_log = LogThrottle(logger)

SUBPROTOCOL = 'aiosip-ws.admin'
#: the prefix of the subprotocol that carries the token (browsers)
TOKEN_SUBPROTOCOL = 'aiosip-ws.token.'
#: seconds a tracer has to say what it traces, and to take one frame
FIRST_MESSAGE_TIMEOUT = 10.0
SEND_TIMEOUT = 10.0
#: messages waiting for one tracer before it loses them
QUEUE = 1000
FILTERS = ('aor', 'address', 'call_id', 'method')


class TraceFilter:
    """Which messages a tracer wants (every filter given must match)."""

    def __init__(self, *, aor: str | None = None, address: str | None = None,
                 call_id: str | None = None, method: str | None = None) -> None:
        self.aor = user_host(aor) if aor else None
        self.address = ip_of(address) if address else None
        self.call_id = call_id or None
        self.method = method.upper() if method else None

    @classmethod
    def from_json(cls, value: Any) -> TraceFilter:
        """From a tracer's ``{"trace": {...}}``; ValueError says what is wrong."""
        if not isinstance(value, dict) or set(value) - set(FILTERS) or not all(
                isinstance(item, str) for item in value.values()):
            raise ValueError('a trace filter is an object of strings among %s'
                             % ', '.join(FILTERS))
        return cls(**value)

    def as_json(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in FILTERS
                if getattr(self, name) is not None}

    def matches(self, event: WireMessage, about: Summary) -> bool:
        if self.call_id is not None and about.call_id != self.call_id:
            return False
        if self.method is not None and self.method not in (about.method, about.cseq_method):
            return False
        if self.aor is not None and self.aor not in about.parties:
            return False
        if self.address is not None:               # the socket's peer or the client it serves
            try:
                return self.address in (ip_of(str(event.peer[0])),
                                        ip_of(str(event.flow.remote_addr[0])))
            except ValueError:
                return False
        return True


class AdminSocket:
    """The admin WebSocket (``ServerOptions.admin``) of one serve: see the module."""

    subprotocol = SUBPROTOCOL

    def __init__(self, server: Any, *, token: str, origins: Iterable[str] = (),
                 max_tracers: int = 4, queue: int = QUEUE, secrets: bool = False,
                 bodies: bool = False) -> None:
        #: the RelayServer it acts on
        self.server = server
        self.events: EventStream = server.events
        self._token = token.encode()
        self.origins = frozenset(origins)
        self.max_tracers = max_tracers
        self.queue = queue
        self.secrets, self.bodies = secrets, bodies
        #: the tracers connected now
        self.tracers: set[_Tracer] = set()
        #: the admin connections open now (tracers and actions)
        self.connections = 0

    # -- the handshake ----------------------------------------------------------------------
    def check(self, path: str, headers: Any, client_ip: str) -> tuple[int, str] | None:
        """None to accept an admin handshake, else (status, reason)."""
        if 'token' in parse_qs(urlsplit(path).query):
            return 400, ('the admin token goes in an Authorization: Bearer header or the '
                         'subprotocol, never in the URL')
        origin = headers.get('Origin')
        if origin is not None and not self._origin_allowed(origin, headers):
            return 403, 'Origin not allowed for the admin WebSocket (--admin-origin)'
        if not self._authorized(headers):
            return 401, 'the admin WebSocket needs the --admin-token'
        if self.connections >= self.max_tracers:
            return 503, 'too many admin connections (%d, --max-tracers)' % self.max_tracers
        return None

    def _origin_allowed(self, origin: str, headers: Any) -> bool:
        """``--admin-origin``, or without it the page's own origin (the console)."""
        if self.origins:
            return origin in self.origins
        host = headers.get('Host')
        return host is not None and origin in ('http://' + host, 'https://' + host)

    def _authorized(self, headers: Any) -> bool:
        """The token in an Authorization: Bearer header or the subprotocol, or the
        console's cookie."""
        if token_offered(self._token, headers) or valid_cookie(self._token, headers):
            return True
        for name in offered_subprotocols(headers):
            if name.startswith(TOKEN_SUBPROTOCOL):
                encoded = name[len(TOKEN_SUBPROTOCOL):]
                try:
                    value = base64.urlsafe_b64decode(encoded + '=' * (-len(encoded) % 4))
                except (binascii.Error, ValueError):
                    continue
                if hmac.compare_digest(value, self._token):
                    return True
        return False

    # -- a connection -----------------------------------------------------------------------
    async def serve(self, websocket: Any, client: tuple[str, int]) -> None:
        """Run one admin connection: its requests, until it closes."""
        self.connections += 1
        try:
            first = True
            while True:
                try:
                    frame = await asyncio.wait_for(
                        websocket.recv(), FIRST_MESSAGE_TIMEOUT if first else None)
                except asyncio.TimeoutError:
                    await websocket.close(1008, 'ask something within %g s'
                                          % FIRST_MESSAGE_TIMEOUT)
                    return
                first = False
                try:
                    request = json.loads(frame)
                    if not isinstance(request, dict):
                        raise ValueError('a request is a JSON object')
                except ValueError as exc:
                    await websocket.close(1008, ('bad request: %s' % exc)[:120])
                    return
                if 'trace' in request:
                    try:
                        trace = TraceFilter.from_json(request['trace'])
                    except (ValueError, TypeError) as exc:
                        await websocket.close(1008, ('bad trace request: %s' % exc)[:120])
                        return
                    await self._trace(websocket, client, trace)
                    return
                await websocket.send(json.dumps(await self._act(request, client)))
        except Exception:  # noqa: BLE001 - the connection failing is its own end
            return
        finally:
            self.connections -= 1

    async def _trace(self, websocket: Any, client: tuple[str, int],
                     trace: TraceFilter) -> None:
        tracer = _Tracer(self, websocket, trace)
        self.tracers.add(tracer)
        logger.info('tracer %s:%d connected (%s)', client[0], client[1],
                    trace.as_json() or 'everything')
        try:
            await websocket.send(json.dumps({'type': 'tracing', 'filter': trace.as_json()}))
            tracer.subscription = self.events.subscribe('trace', tracer.consume,
                                                        (WireMessage,), maxsize=self.queue)
            async for _ in websocket:            # nothing more is asked; until it closes
                pass
        finally:
            self.tracers.discard(tracer)
            if tracer.subscription is not None:
                await tracer.subscription.close()
            logger.info('tracer %s:%d left', client[0], client[1])

    # -- actions --------------------------------------------------------------------------
    async def _act(self, request: dict[str, Any], client: tuple[str, int]) -> dict[str, Any]:
        name = request.get('action')
        answer: dict[str, Any] = {'id': request.get('id'), 'action': name}
        action = ACTIONS.get(name) if isinstance(name, str) else None
        if action is None:
            answer.update(type='error', error='no action %r (one of %s)'
                          % (name, ', '.join(sorted(ACTIONS))))
            return answer
        try:
            result, done = await action(self, request)
        except (KeyError, TypeError, ValueError) as exc:
            answer.update(type='error', error='bad %s request: %s' % (name, exc))
            return answer
        logger.info('admin %s:%d: %s', client[0], client[1], done)
        answer.update(type='result', result=result)
        return answer

    def _connection(self, key: Any) -> Any:
        for conn in self.server.connections:
            if _connection_id(conn) == key:
                return conn
        raise ValueError('no connection %r (see the connections action)' % (key,))


def _connection_id(conn: Any) -> str:
    return '%x' % id(conn)


async def _connections(admin: AdminSocket, request: dict[str, Any]) -> tuple[Any, str]:
    server = admin.server
    now = asyncio.get_running_loop().time()
    rows = []
    for conn in list(server.connections):
        identity = getattr(conn, 'identity', None)
        state = conn.flow_state
        rows.append({
            'id': _connection_id(conn), 'transport': conn.transport_name,
            'address': list(conn.remote_addr), 'peer': list(conn.peer_addr),
            'identity': None if identity is None else str(getattr(identity, 'user', identity)),
            'aors': sorted({b.aor for b in server.registrar.bindings_of(conn)}),
            'age': round(now - conn.opened_at, 3),
            'pending': state.relaying if state is not None else 0,
            'bytes_in': conn.bytes_in, 'bytes_out': conn.bytes_out,
            'queued_bytes': conn.queued_bytes})
    return rows, 'listed %d connection(s)' % len(rows)


async def _close(admin: AdminSocket, request: dict[str, Any]) -> tuple[Any, str]:
    conn = admin._connection(request['connection'])
    code = int(request.get('code', 1000))
    reason = str(request.get('reason', ''))
    if not (code in (1000, 1001, 1008, 1011, 1012, 1013) or 3000 <= code <= 4999):
        raise ValueError('close code %d: give 1000, 1001, 1008, 1011-1013 or 3000-4999' % code)
    if len(reason.encode()) > 123:
        raise ValueError('a close reason has at most 123 bytes')
    admin.server.spawn(conn.close(code, reason))
    return {'closed': request['connection']}, 'closed connection %s (%r) with %d %s' % (
        request['connection'], conn, code, reason)


async def _unbind(admin: AdminSocket, request: dict[str, Any]) -> tuple[Any, str]:
    server = admin.server
    if server.cluster is not None:
        raise ValueError('unbind works on one node; in a cluster, un-REGISTER instead')
    aor = str(request['aor'])
    contact = request.get('contact')
    registrar = server.registrar
    bindings = registrar.lookup(aor)
    if not bindings:
        raise ValueError('%s has no bindings' % aor)
    keep = [b for b in bindings if contact is not None and str(b.uri) != contact]
    if len(keep) == len(bindings):
        raise ValueError('%s has no binding with Contact %s' % (aor, contact))
    registrar.store(aor, keep, why='removed by an admin')
    removed = len(bindings) - len(keep)
    return {'removed': removed}, 'removed %d binding(s) of %s' % (removed, aor)


async def _drain(admin: AdminSocket, request: dict[str, Any]) -> tuple[Any, str]:
    window = float(request.get('window', 30.0))
    if not 0 <= window <= 3600:
        raise ValueError('a drain window from 0 to 3600 s')
    server = admin.server
    if not server.draining:
        server.spawn(server.drain(window))
    return {'draining': True, 'window': window}, 'drain over %g s' % window


async def _reload(admin: AdminSocket, request: dict[str, Any]) -> tuple[Any, str]:
    hook = getattr(admin.server, 'reload_hook', None)
    if hook is None:
        raise ValueError('this serve has nothing to reload')
    done = hook('admin reload')
    return {'reloaded': done}, 'reload (%s)' % (', '.join(done) or 'nothing')


ACTIONS = {'connections': _connections, 'close': _close, 'unbind': _unbind, 'drain': _drain,
           'reload': _reload}


class _Tracer:
    """One admin connection that traces."""

    def __init__(self, service: AdminSocket, websocket: Any, trace: TraceFilter) -> None:
        self.service = service
        self.websocket = websocket
        self.trace = trace
        self.subscription: Subscription | None = None
        self.reported = 0

    async def consume(self, event: WireMessage) -> None:
        about = summary(event.data)
        if not self.trace.matches(event, about):
            return
        service = self.service
        frames = []
        dropped = self.subscription.dropped if self.subscription is not None else 0
        if dropped > self.reported:
            frames.append({'type': 'dropped', 'count': dropped - self.reported})
            self.reported = dropped
        data = redact(event.data, secrets=service.secrets, bodies=service.bodies)
        frame: dict[str, Any] = {
            'type': 'message', 'time': event.time, 'direction': event.direction,
            'transport': event.transport, 'source': list(event.source),
            'destination': list(event.destination), 'call_id': about.call_id,
            'method': about.method, 'status': about.status}
        try:
            frame['text'] = data.decode('utf-8')
        except UnicodeDecodeError:
            frame['base64'] = base64.b64encode(data).decode('ascii')
        frames.append(frame)
        for item in frames:
            try:
                await asyncio.wait_for(self.websocket.send(json.dumps(item)), SEND_TIMEOUT)
            except asyncio.TimeoutError:
                peer_log.warning('slow tracers', 'a tracer did not read for %g s: closing it',
                                 SEND_TIMEOUT)
                self.websocket.transport.abort()
                return
            except Exception:  # noqa: BLE001 - it closed: serve() ends its subscription
                return
