"""The admin WebSocket and its live traces (``aiosip-ws trace``).

serve's listeners take a second kind of WebSocket connection on the same port: one that
offers the subprotocol ``aiosip-ws.admin`` (:data:`SUBPROTOCOL`).  Its handshake passes
only with ``--admin-token``:

* the token in an ``Authorization: Bearer TOKEN`` header, or, for a browser (which cannot
  set headers on a WebSocket), as a second offered subprotocol
  ``aiosip-ws.token.BASE64URL`` (the token in URL-safe base64 without padding); a token
  in the URL (``?token=``) is refused with 400: URLs end up in logs and histories;
* an ``Origin``, when the client sends one (browsers do), in ``--admin-origin``;
* at most ``--max-tracers`` at once (503 beyond).

Without ``--admin-token`` there is no admin WebSocket (404).

A tracer sends one JSON text frame, ``{"trace": {"aor": ..., "address": ..., "call_id":
..., "method": ...}}`` (each filter optional; all given must match), and gets
``{"type": "tracing", "filter": {...}}``, then a frame for each SIP message serve
receives or sends that matches: ``{"type": "message", "time", "direction", "transport",
"source", "destination", "call_id", "method", "status", "text"}`` (``base64`` instead of
``text`` for a message that is not UTF-8), redacted as HEP is (:mod:`aiosip_ws.core.
capture`).  A tracer is a consumer of the event stream's
:class:`~aiosip_ws.serve.events.WireMessage` events with a queue of its own: one that reads
slowly loses messages, counted in ``aiosip_ws_event_drops_total{consumer="trace"}`` and
told to it (``{"type": "dropped", "count": N}``), and one that does not read for
``SEND_TIMEOUT`` seconds is closed (1008).  The relay never waits for it.
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

from ..core.capture import Summary, ip_of, redact, summary
from ..transport.throttle import LogThrottle
from .events import EventStream, Subscription, WireMessage

__all__ = ['TraceService', 'TraceFilter', 'SUBPROTOCOL', 'TOKEN_SUBPROTOCOL']

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
        self.aor = _user_host(aor) if aor else None
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


def _user_host(aor: str) -> str:
    text = aor.strip().lower()
    for prefix in ('sip:', 'sips:'):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text.split(';', 1)[0]


class TraceService:
    """The admin WebSocket (``ServerOptions.admin``) of one serve: see the module."""

    subprotocol = SUBPROTOCOL

    def __init__(self, events: EventStream, *, token: str, origins: Iterable[str] = (),
                 max_tracers: int = 4, queue: int = QUEUE, secrets: bool = False,
                 bodies: bool = False) -> None:
        self.events = events
        self._token = token.encode()
        self.origins = frozenset(origins)
        self.max_tracers = max_tracers
        self.queue = queue
        self.secrets, self.bodies = secrets, bodies
        #: the tracers connected now
        self.tracers: set[_Tracer] = set()
        #: connections in their handshake or before their filter: they hold a place too
        self._arriving = 0

    # -- the handshake ----------------------------------------------------------------------
    def check(self, path: str, headers: Any, client_ip: str) -> tuple[int, str] | None:
        """None to accept an admin handshake, else (status, reason)."""
        if 'token' in parse_qs(urlsplit(path).query):
            return 400, ('the admin token goes in an Authorization: Bearer header or the '
                         'subprotocol, never in the URL')
        origin = headers.get('Origin')
        if origin is not None and origin not in self.origins:
            return 403, 'Origin not allowed for the admin WebSocket (--admin-origin)'
        if not self._authorized(headers):
            return 401, 'the admin WebSocket needs the --admin-token'
        if len(self.tracers) + self._arriving >= self.max_tracers:
            return 503, 'too many tracers (%d, --max-tracers)' % self.max_tracers
        return None

    def _authorized(self, headers: Any) -> bool:
        offered: list[bytes] = []
        for value in headers.get_all('Authorization'):
            scheme, _, credentials = value.strip().partition(' ')
            if scheme.lower() == 'bearer':
                offered.append(credentials.strip().encode())
        for header in headers.get_all('Sec-WebSocket-Protocol'):
            for name in header.split(','):
                name = name.strip()
                if name.startswith(TOKEN_SUBPROTOCOL):
                    encoded = name[len(TOKEN_SUBPROTOCOL):]
                    try:
                        offered.append(base64.urlsafe_b64decode(encoded + '=' * (-len(encoded) % 4)))
                    except (binascii.Error, ValueError):
                        continue
        return any(hmac.compare_digest(value, self._token) for value in offered)

    # -- a connection -----------------------------------------------------------------------
    async def serve(self, websocket: Any, client: tuple[str, int]) -> None:
        """Run one admin connection: its filter, then the messages, until it closes."""
        self._arriving += 1
        try:
            try:
                first = await asyncio.wait_for(websocket.recv(), FIRST_MESSAGE_TIMEOUT)
                request = json.loads(first)
                trace = TraceFilter.from_json(request.get('trace') if isinstance(request, dict)
                                              else None)
            except asyncio.TimeoutError:
                await websocket.close(1008, 'say what to trace within %g s'
                                      % FIRST_MESSAGE_TIMEOUT)
                return
            except (ValueError, TypeError) as exc:
                await websocket.close(1008, ('bad trace request: %s' % exc)[:120])
                return
        except Exception:  # noqa: BLE001 - the connection went away before its filter
            return
        finally:
            self._arriving -= 1
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
        except Exception:  # noqa: BLE001 - a tracer's connection failing is its own end
            pass
        finally:
            self.tracers.discard(tracer)
            if tracer.subscription is not None:
                await tracer.subscription.close()
            logger.info('tracer %s:%d left', client[0], client[1])


class _Tracer:
    """One admin connection that traces."""

    def __init__(self, service: TraceService, websocket: Any, trace: TraceFilter) -> None:
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
