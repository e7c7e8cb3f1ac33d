"""The server side of the WebSocket transport: :func:`listen` accepts SIP WebSocket
connections and decides, during each opening handshake, whether to let it through.

:class:`HandshakeChecks` holds those decisions.  websockets calls
:meth:`HandshakeChecks.check_request` with each handshake request before its own
checks; the first of these checks that refuses answers the request, in this order:

1. :meth:`~HandshakeChecks.serve_page`: a plain HTTP request (no ``Upgrade:
   websocket``) gets the ``http_handler`` page (its own status; 405 to other methods
   than GET and HEAD);
2. :meth:`~HandshakeChecks.check_version`: ``Sec-WebSocket-Version`` other than 13: 426
   (first, since no retry can help);
3. :meth:`~HandshakeChecks.check_draining`: the server drains (``refuse_handshakes``): 503;
4. :meth:`~HandshakeChecks.check_capacity`: ``max_connections`` reached: 503;
5. :meth:`~HandshakeChecks.check_capacity_per_ip`: ``max_connections_per_ip`` reached
   for the client (behind ``trusted_proxies``: the forwarded one): 503;
6. :meth:`~HandshakeChecks.check_path`: another path than a non-root listening path: 404;
7. :meth:`~HandshakeChecks.check_origin`: an Origin not in ``allowed_origins``: 403;
8. :meth:`~HandshakeChecks.check_rate`: ``max_handshakes_per_second`` exceeded: 503
   (last of the synchronous checks: only handshakes that would succeed spend a token);
9. :meth:`~HandshakeChecks.authenticate`: the ``authenticate`` hook's refusal
   (:exc:`~aiosip_ws.errors.HandshakeRefused`: its status, 401 or 403), 500 when the hook
   fails.

Then websockets checks the handshake itself (Upgrade, key, the ``sip`` subprotocol:
400).  Every 503 carries a ``Retry-After``; every answer is built by
:func:`http_response`.  :meth:`HandshakeChecks.log_refusal` sees every answer: it takes
the body off answers to HEAD, tells the handler's ``handshake_refused(status)`` of each
refusal and logs those of websockets' own checks (the checks above log their own).
Refusals log at most one INFO line each (503s: WARNING), rate-limited per kind, under
the ``aiosip_ws.transport.websocket`` logger as they always have.

Each accepted connection is a :class:`~aiosip_ws.transport.websocket.WSConnection`,
counted by the :class:`WSListener` that :func:`listen` returns; :func:`shut_down` ends
listeners, then connections, then tasks.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import email.utils
import http
import inspect
import ipaddress
import logging
import random
import re
import ssl as _ssl
import sys
import weakref
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ..core.framing import SUBPROTOCOL
from ..core.grammar import address_in, parse_networks, url_host
from ..core.ratelimit import TokenBucket
from ..errors import ConfigurationError, HandshakeRefused
from ..options import ServerOptions
from .keepalive import SharedKeepalive
from .proxyproto import proxied_connection_class
from .throttle import LogThrottle
from .websocket import (
    Address,
    ConnectionHandler,
    WSConnection,
    sockaddr,
    split_ws_url,
    user_agent,
)

__all__ = ['WSListener', 'listen', 'shut_down', 'http_response', 'HandshakeRequest',
           'HandshakeChecks', 'offered_subprotocols']

logger = logging.getLogger(__name__)
#: what peers cause (refused handshakes), rate-limited
peer_log = LogThrottle(logger)

#: websockets >= 16 closes a server's connections with a given code and reason; 15.x only
#: with 1001 and no reason, so :meth:`WSListener.close` closes them itself there
_SERVER_CLOSE_TAKES_CODE = 'code' in inspect.signature(Server.close).parameters

if TYPE_CHECKING:
    _LoggerAdapter = logging.LoggerAdapter[logging.Logger]
else:
    _LoggerAdapter = logging.LoggerAdapter


def forwarded_client(peer: Address, headers: Any, proxies: list[Any]) -> Address:
    """The client behind trusted ``proxies``: ``peer`` itself unless it is one of them;
    then the nearest address of ``Forwarded: for=`` (RFC 7239), or else of
    ``X-Forwarded-For``, that is not a trusted proxy (port 0: unknown)."""
    def trusted(address: str) -> bool:
        return address_in(address, proxies)

    if not trusted(peer[0]):
        return peer
    hops: list[str] = []
    for value in headers.get_all('Forwarded'):
        for element in value.split(','):
            for pair in element.split(';'):
                name, eq, found = pair.strip().partition('=')
                if eq and name.strip().lower() == 'for':
                    hops.append(found.strip().strip('"'))
    if not hops:
        for value in headers.get_all('X-Forwarded-For'):
            hops += [hop.strip() for hop in value.split(',')]
    for hop in reversed(hops):
        host = hop
        if host.startswith('['):                                   # "[v6]:port"
            host = host[1:].partition(']')[0]
        elif host.count(':') == 1:                                 # "v4:port"
            host = host.partition(':')[0]
        try:
            address = str(ipaddress.ip_address(host))
        except ValueError:
            return peer                    # "unknown", an obfuscated name: stop trusting here
        if not trusted(address):
            return (address, 0)
    return peer


class _Handshake:
    """A connection in its opening handshake, as :func:`listen` sees it."""

    __slots__ = ('client', 'head', 'identity', 'served', 'admin')

    def __init__(self, client: Address) -> None:
        #: the client's address (behind a trusted proxy: the forwarded one)
        self.client = client
        #: what the authenticate hook returned
        self.identity: Any = None
        #: answered by the http_handler (a page, not a refused handshake)
        self.served = False
        #: a HEAD request: the answer goes without its body
        self.head = False
        #: a handshake for the admin service (ServerOptions.admin), not for SIP
        self.admin = False


def http_response(status: int, body: bytes | str,
                  content_type: str = 'text/plain; charset=utf-8', *,
                  headers: Iterable[tuple[str, str]] = ()) -> Response:
    """An HTTP answer of the listener, a page or a refusal, built whole: exactly one ``Date``,
    ``Connection: close``, one ``Content-Length`` (the body's size) and one ``Content-Type``,
    then ``headers``.  (websockets' ``Headers`` appends on assignment: amending the answer
    of ``ServerConnection.respond`` gave every header twice, which Prometheus and Go's and
    nginx's HTTP clients refuse.)"""
    data = body.encode() if isinstance(body, str) else body
    code = http.HTTPStatus(status)
    return Response(code.value, code.phrase, Headers([
        ('Date', email.utils.formatdate(usegmt=True)),
        ('Connection', 'close'),
        ('Content-Length', str(len(data))),
        ('Content-Type', content_type),
        *headers,
    ]), data)


class HandshakeRequest:
    """What a handshake authentication hook sees (``ServerOptions.authenticate``)."""

    __slots__ = ('path', 'query', 'headers', 'cookies', 'remote_addr')

    def __init__(self, request: Request, remote_address: Any) -> None:
        parts = urlsplit(request.path)
        #: the path, without the query
        self.path = parts.path
        #: query parameters: name -> first value
        self.query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        #: the request headers (websockets ``Headers``: ``get``, ``get_all``)
        self.headers = request.headers
        #: cookies of the ``Cookie`` headers: name -> value
        self.cookies: dict[str, str] = {}
        for header in request.headers.get_all('Cookie'):
            for item in header.split(';'):
                name, eq, value = item.strip().partition('=')
                if eq and name:
                    self.cookies.setdefault(name, value)
        self.remote_addr: Address = sockaddr(remote_address)


#: query parameters and cookies whose values never reach a log line
_SECRET = re.compile(r'((?:^|[?&;\s])(?:token|access_token|password|auth)=)[^&;\s]*', re.I)


def offered_subprotocols(headers: Any) -> list[str]:
    """The subprotocols a handshake's ``headers`` offer."""
    return [name.strip() for header in headers.get_all('Sec-WebSocket-Protocol')
            for name in header.split(',')]


def redact(text: str) -> str:
    """``text`` with the values of token-like query parameters replaced by ``***``."""
    return _SECRET.sub(r'\1***', text)


class _HandshakeLogger(_LoggerAdapter):
    """websockets' logger for the servers of :func:`listen`, the same on websockets 15-17.

    websockets 15 and 16 log every opening handshake that fails on the client's side (not
    HTTP, cut short, no Upgrade, a bad key, no ``sip``, ...) as an ERROR "opening
    handshake failed" with a traceback; 17 logs none (DEBUG lines only).  Here that record
    becomes one DEBUG line, as on 17; :func:`listen` logs the refusal itself in one INFO
    line when there was a request to refuse.  Any other error (a bug: not an
    ``InvalidHandshake``) keeps its level and traceback; other records pass unchanged.
    """

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return msg, kwargs                  # keep the connection websockets puts in ``extra``

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if args:                 # websockets' DEBUG lines show the request line: no tokens
            args = tuple(redact(a) if isinstance(a, str) else a for a in args)
        if level >= logging.ERROR and msg == 'opening handshake failed':
            exc = sys.exc_info()[1]
            if isinstance(exc, InvalidHandshake):
                level, msg, args = logging.DEBUG, 'opening handshake failed: %s', (_reason(exc),)
                kwargs.pop('exc_info', None)
        super().log(level, msg, *args, **kwargs)


def _reason(exc: BaseException) -> str:
    """``exc`` and its causes on one line, at most 200 characters (they quote the client)."""
    text = str(exc)
    while exc.__cause__ is not None:
        exc = exc.__cause__
        text += '; %s' % exc
    return text if len(text) <= 200 else text[:197] + '...'


# ---------------------------------------------------------------------------- handshake checks
class HandshakeChecks:
    """The opening-handshake decisions of one listener: websockets' ``process_request``
    (:meth:`check_request`) and ``process_response`` (:meth:`log_refusal`).

    Each check takes ``(connection, request, state)`` and returns the answer that refuses
    the handshake, or None to let it on to the next; the order is the module's.
    ``options`` are read when a check runs, except ``allowed_origins``,
    ``max_handshakes_per_second``, ``http_handler`` and ``trusted_proxies``, read once.
    """

    def __init__(self, path: str, handler: ConnectionHandler, options: ServerOptions,
                 connections: set[WSConnection], per_ip: collections.Counter[str]) -> None:
        #: the listening path: ``/`` accepts any
        self.path = path
        self.handler = handler
        self.options = options
        #: the listener's connections, and how many come from each source address
        self.connections = connections
        self.per_ip = per_ip
        self.allowed = None if options.allowed_origins is None else set(options.allowed_origins)
        self.rate = options.max_handshakes_per_second
        self.bucket = TokenBucket(self.rate or 0.0, options.handshake_burst,
                                  asyncio.get_running_loop().time())
        self.http_handler = options.http_handler
        self.proxies = parse_networks(options.trusted_proxies, 'trusted proxy')
        #: what check_request learnt of a connection in its handshake, for on_connection and
        #: log_refusal; weak keys: a handshake abandoned half-way leaves nothing behind
        self.handshakes: weakref.WeakKeyDictionary[ServerConnection, _Handshake] = \
            weakref.WeakKeyDictionary()

    def check_request(self, connection: ServerConnection,
                      request: Request) -> Response | None | Awaitable[Response | None]:
        """Run the checks in order; the first answer refuses (or serves a page).  With an
        ``authenticate`` hook, a handshake that passed them all is answered by the
        coroutine of :meth:`authenticate` (websockets awaits it)."""
        # It runs before websockets checks the handshake itself, on websockets 15-17.
        client = sockaddr(connection.remote_address)
        if self.proxies:
            client = forwarded_client(client, request.headers, self.proxies)
        state = self.handshakes[connection] = _Handshake(client)
        state.head = getattr(request, 'method', 'GET') == 'HEAD'
        admin = self.options.admin
        if admin is not None and admin.subprotocol in offered_subprotocols(request.headers):
            return self.check_admin(connection, request, state)
        for check in (self.serve_page, self.check_version, self.check_draining,
                      self.check_capacity, self.check_capacity_per_ip, self.check_path,
                      self.check_origin, self.check_rate):
            answer = check(connection, request, state)
            if answer is not None:
                return answer
        if self.options.authenticate is not None:
            return self.authenticate(connection, request, state)
        return None

    def check_admin(self, connection: ServerConnection, request: Request,
                    state: _Handshake) -> Response | None:
        """A handshake offering the admin service's subprotocol: its ``check`` alone
        (the SIP checks are not for it); a refusal is one INFO line."""
        state.admin = True
        refusal = self.options.admin.check(request.path, request.headers, state.client[0])
        if refusal is None:
            return None
        status, reason = refusal
        peer_log.info('refused admin handshakes', 'refused admin handshake from %s: HTTP %d '
                      '%s', connection.remote_address, status, reason)
        return http_response(status, reason + '\n')

    def busy(self, connection: ServerConnection, why: str) -> Response:
        """503 with a ``Retry-After`` of ``retry_after`` to twice that (spread retries),
        logged as a WARNING."""
        peer_log.warning('refused handshakes (busy)', 'refused handshake from %s: %s',
                         connection.remote_address, why)
        return http_response(http.HTTPStatus.SERVICE_UNAVAILABLE, why + '\n', headers=[
            ('Retry-After', str(random.randint(self.options.retry_after,
                                               2 * self.options.retry_after)))])

    def serve_page(self, connection: ServerConnection, request: Request,
                   state: _Handshake) -> Response | None:
        """A request without ``Upgrade: websocket`` that the ``http_handler`` answers: its
        page (its status, body and content type), 405 with ``Allow: GET, HEAD`` to any
        other method.  Not a refusal: not logged, not counted."""
        if self.http_handler is None or 'websocket' in request.headers.get('Upgrade', '').lower():
            return None
        answer = self.http_handler(request.path, request.headers, state.client[0])
        if answer is None:
            return None
        state.served = True
        # websockets 17 hands on any method (its own check answers 405 after this one);
        # 15 and 16 close the connection on anything but GET without an answer.
        if getattr(request, 'method', 'GET') not in ('GET', 'HEAD'):
            return http_response(http.HTTPStatus.METHOD_NOT_ALLOWED, 'GET or HEAD only\n',
                                 headers=[('Allow', 'GET, HEAD')])
        status, content_type, body = answer[:3]
        return http_response(status, body, content_type,
                             headers=answer[3] if len(answer) > 3 else ())

    def check_version(self, connection: ServerConnection, request: Request,
                      state: _Handshake) -> Response | None:
        """426 with ``Upgrade: websocket`` and ``Sec-WebSocket-Version: 13`` (RFC 6455
        §4.4) to another ``Sec-WebSocket-Version`` than 13."""
        versions = request.headers.get_all('Sec-WebSocket-Version')
        if all(version == '13' for version in versions):
            return None
        peer_log.info('refused handshakes', 'refused handshake from %s: Sec-WebSocket-Version '
                      '%.20s, not 13', connection.remote_address, ', '.join(versions))
        return http_response(http.HTTPStatus.UPGRADE_REQUIRED, 'WebSocket version 13 only\n',
                             headers=[('Upgrade', 'websocket'),
                                      ('Sec-WebSocket-Version', '13')])   # RFC 6455 §4.4

    def check_draining(self, connection: ServerConnection, request: Request,
                       state: _Handshake) -> Response | None:
        """503 (:meth:`busy`) while ``refuse_handshakes()`` says why (the server drains)."""
        if self.options.refuse_handshakes is None:
            return None
        why = self.options.refuse_handshakes()
        return None if why is None else self.busy(connection, why)

    def check_capacity(self, connection: ServerConnection, request: Request,
                       state: _Handshake) -> Response | None:
        """503 (:meth:`busy`) when the listener has ``max_connections`` connections."""
        limit = self.options.max_connections
        if limit is None or len(self.connections) < limit:
            return None
        return self.busy(connection, 'too many connections (%d)' % limit)

    def check_capacity_per_ip(self, connection: ServerConnection, request: Request,
                              state: _Handshake) -> Response | None:
        """503 (:meth:`busy`) when the client's address (behind ``trusted_proxies``: the
        forwarded one) has ``max_connections_per_ip`` connections."""
        limit = self.options.max_connections_per_ip
        if limit is None:
            return None
        source = state.client[0]
        if self.per_ip[source] < limit:
            return None
        return self.busy(connection, 'too many connections from %s (%d)' % (source, limit))

    def check_path(self, connection: ServerConnection, request: Request,
                   state: _Handshake) -> Response | None:
        """404 to another path than the listening one, unless that is ``/`` (any path, as
        Kamailio does)."""
        if self.path == '/' or urlsplit(request.path).path == self.path:
            return None
        peer_log.info('refused handshakes', 'refused handshake from %s: path %s is not %s',
                      connection.remote_address, urlsplit(request.path).path, self.path)
        return http_response(http.HTTPStatus.NOT_FOUND, 'no SIP WebSocket service here\n')

    def check_origin(self, connection: ServerConnection, request: Request,
                     state: _Handshake) -> Response | None:
        """403 to an Origin not in ``allowed_origins`` (RFC 7118 Appendix A.1); no Origin
        passes only with ``allow_missing_origin``."""
        if self.allowed is None:
            return None
        origin = request.headers.get('Origin')
        if origin in self.allowed or (origin is None and self.options.allow_missing_origin):
            return None
        peer_log.info('refused handshakes', 'refused handshake from %s: Origin %r not '
                      'allowed', connection.remote_address, origin)
        return http_response(http.HTTPStatus.FORBIDDEN, 'Origin not allowed\n')

    def check_rate(self, connection: ServerConnection, request: Request,
                   state: _Handshake) -> Response | None:
        """503 (:meth:`busy`) beyond ``max_handshakes_per_second`` (bursts of
        ``handshake_burst``).  Last: only handshakes that would succeed take a token."""
        if self.rate is None or self.bucket.take(asyncio.get_running_loop().time()):
            return None
        return self.busy(connection, 'too many handshakes per second (%g)' % (self.rate or 0))

    async def authenticate(self, connection: ServerConnection, request: Request,
                           state: _Handshake) -> Response | None:
        """The ``authenticate`` hook (awaited for at most ``open_timeout``): its
        :exc:`~aiosip_ws.errors.HandshakeRefused` answers with its status and reason
        (401, 403, ...); a hook that fails answers 500 (never accepts).  Else the
        connection gets the identity it returned."""
        options = self.options
        assert options.authenticate is not None
        try:
            identity = options.authenticate(HandshakeRequest(request, state.client))
            if inspect.isawaitable(identity):
                identity = await asyncio.wait_for(identity, options.open_timeout)
        except HandshakeRefused as refused:
            peer_log.info('refused handshakes', 'refused handshake from %s: HTTP %d %s',
                          connection.remote_address, refused.status, refused.reason)
            return http_response(refused.status, refused.reason + '\n')
        except Exception:  # noqa: BLE001 - a broken hook refuses, never accepts
            logger.exception('the handshake authentication hook failed')
            return http_response(http.HTTPStatus.INTERNAL_SERVER_ERROR, 'error\n')
        state.identity = identity
        return None

    def log_refusal(self, connection: ServerConnection, request: Request,
                    response: Response) -> Response | None:
        """Every answer but 101: no body to HEAD; for a refusal (not an ``http_handler``
        page), the handler's ``handshake_refused(status)`` and, when websockets' own checks
        refused, one INFO line."""
        if response.status_code == http.HTTPStatus.SWITCHING_PROTOCOLS:
            return None
        state = self.handshakes.pop(connection, None)
        if state is not None and state.head and response.body:
            # RFC 9110 §9.3.2: the same fields as for GET, Content-Length included, no content
            response = dataclasses.replace(response, body=b'')
        if state is not None and state.served:
            return response                         # an http_handler page, not a refusal
        refused = getattr(self.handler, 'handshake_refused', None)
        if refused is not None:
            refused(response.status_code)
        # A refusal of websockets' own checks (check_request's have logged theirs).
        exc = connection.protocol.handshake_exc
        if exc is not None:
            peer_log.info('refused handshakes', 'refused handshake from %s: HTTP %d: %s',
                          connection.remote_address, response.status_code, _reason(exc))
        return response


# ---------------------------------------------------------------------------- listener
class WSListener:
    """A listening WebSocket server for SIP; :meth:`close` ends every connection with 1001."""

    def __init__(self, server: Server, url: str, connections: set[WSConnection],
                 connections_per_ip: collections.Counter[str] | None = None,
                 proxied_pending: set[Any] | None = None,
                 keepalive: SharedKeepalive | None = None) -> None:
        self.server = server
        #: the WebSocket Pings of every connection (one task for the listener)
        self.keepalive = keepalive
        #: PROXY protocol connections still reading their header or in TLS
        self._proxied_pending = proxied_pending if proxied_pending is not None else set()
        self.url = url
        self.connections = connections
        #: how many of :attr:`connections` come from each source address (kept by
        #: :func:`listen`: the per-IP cap costs one look-up per handshake)
        self.connections_per_ip = connections_per_ip if connections_per_ip is not None \
            else collections.Counter()

    @property
    def sockets(self) -> list[Any]:
        return list(self.server.sockets)

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def bound_url(self) -> str:
        """The URL with the port actually bound (useful with port 0)."""
        secure, host, _, path = split_ws_url(self.url)
        return '%s://%s:%d%s' % ('wss' if secure else 'ws', url_host(host), self.port, path)

    async def close(self, code: int = 1001, reason: str = 'server shutting down') -> None:
        for connection in list(self._proxied_pending):
            connection.abort_pending()
        if _SERVER_CLOSE_TAKES_CODE:
            self.server.close(close_connections=True, code=code, reason=reason)
        else:                                               # websockets 15.x
            self.server.close(close_connections=False)      # stops accepting; 503 to handshakes
            await asyncio.sleep(0)
            await asyncio.gather(*(ws.close(code, reason) for ws in self.server.connections),
                                 return_exceptions=True)
        await self.server.wait_closed()
        if self.keepalive is not None:
            await self.keepalive.close()

    async def __aenter__(self) -> WSListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def listen(url: str, handler: ConnectionHandler,
                 options: ServerOptions | None = None) -> WSListener:
    """Accept SIP WebSocket connections on ``url`` (``ws://host:port/path`` or ``wss://``).

    Handshakes that do not offer ``sip`` are refused with HTTP 400 (RFC 6455 §4.2.2),
    another ``Sec-WebSocket-Version`` than 13 with 426 and ``Sec-WebSocket-Version: 13``
    (RFC 6455 §4.4), a disallowed Origin with 403 (RFC 7118 Appendix A.1), another path
    than a non-root ``path`` with 404.  A ``/`` path accepts any path, as Kamailio does.
    A refused handshake logs at most one INFO line (a cap reached: WARNING); a connection
    that closes before its request could be read logs nothing above DEBUG.  The same on
    websockets 15, 16 and 17 (see :class:`_HandshakeLogger`).  The checks and their
    order: :class:`HandshakeChecks`.
    """
    options = options or ServerOptions()
    options.validate()
    secure, host, port, path = split_ws_url(url)
    if secure and options.ssl is None:
        raise ConfigurationError('%s needs a TLS certificate: pass ServerOptions(ssl=...) '
                                 '(or --tls-cert/--tls-key)' % url)
    if not secure and options.ssl is not None:
        raise ConfigurationError('a TLS context was given for %s; use a wss:// URL' % url)
    if options.proxy_protocol and not isinstance(asyncio.get_running_loop(),
                                                 asyncio.selector_events.BaseSelectorEventLoop):
        raise ConfigurationError('the PROXY protocol (--proxy-protocol) needs asyncio\'s own '
                                 'event loop (--loop asyncio), not %s'
                                 % type(asyncio.get_running_loop()).__module__)
    connections: set[WSConnection] = set()
    per_ip: collections.Counter[str] = collections.Counter()   # connections by source address
    checks = HandshakeChecks(path, handler, options, connections, per_ip)
    handshakes = checks.handshakes

    async def on_connection(websocket: ServerConnection) -> None:
        if options.admin is not None and websocket.subprotocol == options.admin.subprotocol:
            state = handshakes.pop(websocket, None)
            await options.admin.serve(websocket, state.client if state is not None
                                      else sockaddr(websocket.remote_address))
            return
        conn = WSConnection(websocket, handler, role='server', secure=secure, options=options)
        # The handshake is over and what serve keeps of it is in conn: the headers of its
        # request and response would cost about 4 KiB for each idle client.
        for message in (websocket.request, websocket.response):
            if message is not None:
                message.headers = Headers()
        state = handshakes.pop(websocket, None)
        if state is not None:
            conn.identity, conn.remote_addr = state.identity, state.client
        source = conn.remote_addr[0]
        connections.add(conn)
        per_ip[source] += 1
        try:
            handler.connection_made(conn)
            conn._run_task = asyncio.current_task()
            if keepalive is not None:
                keepalive.add(conn)
            await conn.run()
        finally:
            connections.discard(conn)
            per_ip[source] -= 1
            if not per_ip[source]:
                del per_ip[source]

    proxied_pending: set[Any] = set()
    keepalive = SharedKeepalive(options.ping_interval, options.ping_timeout) \
        if options.ping_interval else None
    tls: _ssl.SSLContext | None = options.ssl
    create_connection = None
    if options.proxy_protocol:              # the header comes before TLS: the class starts TLS
        create_connection = proxied_connection_class(proxies=checks.proxies, tls=tls,
                                                     pending=proxied_pending,
                                                     timeout=options.open_timeout)
        tls = None
    # passed on to loop.create_server: several processes on one port (serve --workers)
    listen_extra: dict[str, Any] = {'reuse_port': True} if options.reuse_port else {}
    server = await serve(
        on_connection, host, port, subprotocols=[Subprotocol(SUBPROTOCOL)] + (
            [Subprotocol(options.admin.subprotocol)] if options.admin is not None else []),
        process_request=checks.check_request, create_connection=create_connection,
        process_response=checks.log_refusal,
        logger=_HandshakeLogger(logging.getLogger('websockets.server')),
        compression=None, ssl=tls, open_timeout=options.open_timeout,
        ping_interval=None,                 # the listener's own keep-alive: keepalive.py
        close_timeout=options.close_timeout, max_size=options.max_size,
        server_header=options.server_header or user_agent(),
        **listen_extra,
    )
    listener = WSListener(server, url, connections, per_ip, proxied_pending, keepalive)
    logger.info('listening for SIP over WebSocket on %s', listener.bound_url)   # port 0: the real one
    return listener


async def shut_down(listeners: list[WSListener], connections: Iterable[WSConnection],
                    tasks: Iterable[asyncio.Task[Any]], code: int, reason: str) -> None:
    """An application's orderly end: stop listening (emptying ``listeners``), close every
    connection (clients see ``code``), then cancel and await ``tasks``."""
    for listener in listeners:
        await listener.close(code, reason)
    listeners.clear()
    for conn in list(connections):
        await conn.close(code, reason)
    pending = list(tasks)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
