"""One-shot SIP-over-WebSocket client sessions: the engine of ``aiosip-ws options``,
``aiosip-ws register`` and ``aiosip-ws message``.

:class:`Probe` opens one WebSocket connection to a ``ws://``/``wss://`` URL or a
SIP URI (RFC 3263/7118 discovery), timing each phase (DNS, TCP, TLS, WebSocket
handshake), then runs SIP transactions over it with the ordinary aiosip dialog
API (``start_dialog``, ``register``, ``send_message``) of
:class:`aiosip_ws.Application`, timing the first and the final response.

Example (inside a coroutine)::

    async with Probe('ws://127.0.0.1:8080/') as probe:
        print(probe.timings.describe())
        txn = await probe.options()
        print(txn.status, txn.reason, txn.final_ms)

Nothing here prints: results come back as :class:`ConnectTimings` and
:class:`Transaction` objects, and progress goes to the ``aiosip_ws.tools.probe`` logger.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection

from ..adapter.application import Application
from ..adapter.compat import import_aiosip
from ..core import codec
from ..core.codec import SIPMessage
from ..core.grammar import ip_literal, is_net_url, is_sip_uri, split_net_url, url_host
from ..core.sipuri import NameAddr, SipURI
from ..errors import (
    AiosipWSError,
    ConfigurationError,
    ConnectionLost,
    HandshakeError,
    TransactionTimeout,
)
from ..options import ClientOptions
from ..transport.connect import open_target
from ..transport.discovery import Resolver, Target
from ..transport.websocket import WSConnection, open_connection, split_ws_url

__all__ = ['Probe', 'ConnectTimings', 'Transaction', 'timed_connect', 'default_request_uri',
           'target_domain', 'format_message', 'PROBE_ERRORS']

logger = logging.getLogger(__name__)
_aiosip = import_aiosip()


# ---------------------------------------------------------------------------- timings
class _TimedClientConnection(ClientConnection):
    """websockets' client connection, noting when the transport is ready (after TLS)."""

    transport_ready_at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport_ready_at = time.perf_counter()
        super().connection_made(transport)


@dataclass
class ConnectTimings:
    """How long each phase of opening the connection took, in seconds.

    ``discovery`` is the RFC 3263 resolution of a SIP URI (None for a URL);
    ``dns`` the address lookup of the URL host (0 for an IP literal); ``tls``
    is None for ``ws://``.  ``total`` covers everything from the first lookup
    to the end of the WebSocket handshake.
    """

    url: str
    address: str
    tcp: float
    handshake: float
    total: float
    dns: float = 0.0
    tls: float | None = None
    discovery: float | None = None
    attempts: int = 1

    def describe(self) -> str:
        parts = []
        if self.discovery is not None:
            parts.append('discovery %s' % _ms(self.discovery))
        if self.dns >= 0.0005:
            parts.append('dns %s' % _ms(self.dns))
        parts.append('tcp %s' % _ms(self.tcp))
        if self.tls is not None:
            parts.append('tls %s' % _ms(self.tls))
        parts.append('websocket handshake %s' % _ms(self.handshake))
        return '%s (total %s)' % (', '.join(parts), _ms(self.total))

    def as_dict(self) -> dict[str, Any]:
        return {'url': self.url, 'address': self.address, 'discovery_ms': _msf(self.discovery),
                'dns_ms': _msf(self.dns), 'tcp_ms': _msf(self.tcp), 'tls_ms': _msf(self.tls),
                'handshake_ms': _msf(self.handshake), 'total_ms': _msf(self.total),
                'attempts': self.attempts}


def _ms(seconds: float) -> str:
    return '%.1f ms' % (seconds * 1000.0)


def _msf(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


async def _getaddrinfo(loop: asyncio.AbstractEventLoop, host: str, port: int,
                       timeout: float) -> list[Any]:
    try:
        return await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP),
            timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        raise HandshakeError('cannot resolve %s: %s' % (host, exc or 'timeout')) from exc


async def _tcp_connect(host: str, port: int, timeout: float,
                       local_addr: tuple[str, int] | None = None
                       ) -> tuple[socket.socket, str, float, float]:
    """Resolve and connect a TCP socket: (socket, 'ip:port', dns seconds, tcp seconds)."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    literal = ip_literal(host)
    if literal is not None:                          # no lookup, no thread-pool round trip
        if ':' in literal:
            infos: list[Any] = [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, '',
                                 (literal, port, 0, 0))]
        else:
            infos = [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, '',
                      (str(literal), port))]
    else:
        infos = await _getaddrinfo(loop, host, port, timeout)
    resolved = time.perf_counter()
    errors: list[str] = []
    for family, type_, proto, _, sockaddr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            if local_addr is not None:
                sock.bind(local_addr)
            remaining = max(0.001, timeout - (time.perf_counter() - started))
            await asyncio.wait_for(loop.sock_connect(sock, sockaddr), remaining)
        except (OSError, asyncio.TimeoutError) as exc:
            sock.close()
            errors.append('%s: %s' % (sockaddr[0], exc or 'timeout'))
            continue
        except BaseException:
            sock.close()
            raise
        address = ('[%s]:%d' if family == socket.AF_INET6 else '%s:%d') % (sockaddr[0], sockaddr[1])
        return sock, address, resolved - started, time.perf_counter() - resolved
    raise HandshakeError('cannot connect to %s:%d: %s' % (host, port, '; '.join(errors) or
                                                        'no address found'))


async def timed_connect(app: Application, target: str,
                        options: ClientOptions | None = None) -> tuple[WSConnection, ConnectTimings]:
    """Open a new connection of ``app`` to ``target`` (URL or SIP URI), timing each phase.

    A SIP URI is resolved with ``app.resolver`` and its targets are tried in
    order.  Raises :class:`HandshakeError` or :class:`DiscoveryError`.
    """
    options = options or app.client_options
    started = time.perf_counter()
    discovery: float | None = None
    tried = 0
    if is_sip_uri(target):
        targets: str | list[Target] = await app.resolver.resolve(target)
        discovery = time.perf_counter() - started
    else:
        targets = target

    async def timed_open(url: str, kwargs: dict[str, Any]) -> tuple[WSConnection, ConnectTimings]:
        nonlocal tried
        tried += 1
        attempt_started = time.perf_counter()
        secure, url_host, url_port, _ = split_ws_url(url)
        host, port = kwargs.pop('host', url_host), kwargs.pop('port', url_port)
        kwargs.pop('proxy', None)                  # the socket is connected here, directly
        sock, address, dns, tcp = await _tcp_connect(host, port, options.open_timeout)
        kwargs['sock'] = sock
        kwargs['create_connection'] = _TimedClientConnection
        ws_started = time.perf_counter()
        try:
            conn = await open_connection(url, app, options, connect_kwargs=kwargs)
        except BaseException:
            sock.close()
            raise
        done = time.perf_counter()
        ready = getattr(conn.websocket, 'transport_ready_at', None) or ws_started
        return conn, ConnectTimings(url=url, address=address, dns=dns, tcp=tcp,
                                    tls=(ready - ws_started) if secure else None,
                                    handshake=done - ready, total=done - attempt_started)

    _, (conn, timings) = await open_target(targets, timed_open, options=options, logger=logger)
    if discovery is not None:
        timings.discovery = discovery
        timings.attempts = tried
        timings.total = time.perf_counter() - started
    return conn, timings


# ---------------------------------------------------------------------------- helpers
def target_domain(target: str) -> str:
    """The SIP domain a target stands for: the URL host, or the SIP URI host."""
    if is_sip_uri(target):
        uri = NameAddr.parse(target).uri
        return uri.host
    if is_net_url(target):
        return url_host(split_net_url(target)[1])
    return url_host(split_ws_url(target)[1])


def default_request_uri(target: str) -> str:
    """Where an OPTIONS probe goes by default: the server itself (no user part).

    For a SIP URI target, the URI itself without transport-selection parameters.  For a
    URL, ``sip:HOST:PORT;transport=ws`` (``ws`` over TLS too, RFC 7118 §5.2): with the
    port, a server that checks ``uri == myself`` (Kamailio) recognises itself even
    when it has no SIP listener on 5060.
    """
    if is_sip_uri(target):
        uri = NameAddr.parse(target).uri
        params = tuple((k, v) for k, v in uri.params if k.lower() not in ('transport', 'maddr'))
        return str(SipURI(uri.scheme, uri.user, uri.host, uri.port, params))
    _, host, port, _ = split_ws_url(target)
    return str(SipURI('sip', None, url_host(host), port, (('transport', 'ws'),)))


def format_message(message: SIPMessage) -> str:
    """The message as it looks on the wire (body decoded for display)."""
    return codec.serialize(message).decode('utf-8', 'replace').rstrip('\r\n').replace('\r\n', '\n')


# ---------------------------------------------------------------------------- transactions
@dataclass
class Transaction:
    """One client transaction of a probe and its outcome."""

    method: str
    request_uri: str
    sent_at: float
    first_response_at: float | None = None
    final_at: float | None = None
    #: the final response, as parsed on the wire
    response: SIPMessage | None = None
    #: why there is no usable final response (timeout, connection lost, auth failed...)
    error: str | None = None
    #: every response received, in order: (status, reason, perf_counter time)
    responses: list[tuple[int, str, float]] = field(default_factory=list)

    @property
    def status(self) -> int | None:
        return self.response.status if self.response is not None else None

    @property
    def reason(self) -> str:
        return self.response.reason if self.response is not None else ''

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300

    @property
    def first_response_ms(self) -> float | None:
        return None if self.first_response_at is None else (self.first_response_at - self.sent_at) * 1e3

    @property
    def final_ms(self) -> float | None:
        return None if self.final_at is None else (self.final_at - self.sent_at) * 1e3

    def outcome(self) -> str:
        """``200 OK``, or the error."""
        if self.response is not None and self.error is None:
            return '%d %s' % (self.response.status, self.response.reason)
        if self.response is not None:
            return '%s (last response: %d %s)' % (self.error, self.response.status,
                                                   self.response.reason)
        return self.error or 'no response'

    def describe(self) -> str:
        timing = []
        if self.first_response_ms is not None:
            timing.append('first response %.1f ms' % self.first_response_ms)
        if self.final_ms is not None:
            timing.append('final %.1f ms' % self.final_ms)
        return '%s %s -> %s%s' % (self.method, self.request_uri, self.outcome(),
                                  ' (%s)' % ', '.join(timing) if timing else '')

    def as_dict(self) -> dict[str, Any]:
        return {'method': self.method, 'request_uri': self.request_uri, 'status': self.status,
                'reason': self.reason, 'ok': self.ok, 'error': self.error,
                'first_response_ms': _round(self.first_response_ms),
                'final_ms': _round(self.final_ms),
                'responses': [[s, r] for s, r, _ in self.responses]}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class _ProbeApplication(Application):
    """An Application that notes every response per Call-ID (for timings and
    for the last response of a failed authentication), and hands incoming
    requests to an optional callback."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.watch: dict[str, Transaction] = {}

    def message_received(self, conn: WSConnection, message: SIPMessage) -> None:
        if not message.is_request:
            txn = self.watch.get(message.get('Call-ID') or '')
            if txn is not None:
                now = time.perf_counter()
                if txn.first_response_at is None:
                    txn.first_response_at = now
                txn.responses.append((message.status or 0, message.reason, now))
                if (message.status or 0) >= 200:
                    txn.response = message
                    txn.final_at = now
        super().message_received(conn, message)


RequestHandler = Callable[[Any, Any], Awaitable[None]]


class Probe:
    """One connection to a SIP WebSocket server, for a few transactions.

    ``async with Probe(target) as probe`` connects (``probe.timings``) and
    closes everything on exit.  ``timeout`` bounds every transaction.
    """

    def __init__(self, target: str, *, client_options: ClientOptions | None = None,
                 resolver: Resolver | None = None, timeout: float = 10.0,
                 on_request: RequestHandler | None = None,
                 request_methods: tuple[str, ...] = ('MESSAGE', 'OPTIONS', 'NOTIFY', 'INFO')) -> None:
        if timeout <= 0:
            raise ConfigurationError('timeout must be a positive number of seconds')
        self.target = target
        self.client_options = client_options or ClientOptions()
        self.resolver = resolver
        self.timeout = timeout
        self.on_request = on_request
        self.request_methods = request_methods
        self.app: _ProbeApplication | None = None
        self.conn: WSConnection | None = None
        self.timings: ConnectTimings | None = None

    async def __aenter__(self) -> Probe:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> ConnectTimings:
        if self.app is None:
            self.app = _ProbeApplication(client_options=self.client_options, resolver=self.resolver)
            if self.on_request is not None:
                for method in self.request_methods:
                    self.app.router.add_route(method, self.on_request)
        try:
            self.conn, self.timings = await timed_connect(self.app, self.target)
        except BaseException:
            await self.close()
            raise
        logger.info('connected to %s (%s): %s', self.timings.url, self.timings.address,
                    self.timings.describe())
        return self.timings

    @property
    def connection(self) -> WSConnection:
        if self.conn is None or self.app is None:
            raise ConnectionLost('not connected: call connect() first')
        return self.conn

    async def close(self) -> None:
        if self.app is not None:
            app, self.app = self.app, None
            await app.close(1000, 'bye')
        self.conn = None

    # -- transactions -------------------------------------------------------------
    async def _transact(self, dialog: Any, method: str, request_uri: str,
                        send: Callable[[], Any]) -> Transaction:
        assert self.app is not None
        txn = Transaction(method=method, request_uri=request_uri, sent_at=time.perf_counter())
        self.app.watch[dialog.call_id] = txn
        try:
            response = await asyncio.wait_for(send(), self.timeout)
        except TransactionTimeout as exc:             # before TimeoutError: a subclass of it
            txn.error = 'timeout: %s' % exc
        except asyncio.TimeoutError:
            txn.error = 'no final response within %.1f s' % self.timeout
        except ConnectionLost as exc:
            txn.error = 'connection lost: %s' % exc
        except (_aiosip.exceptions.RegisterFailed, _aiosip.exceptions.InviteFailed) as exc:
            txn.error = 'authentication failed: %s' % exc
        else:
            raw = getattr(response, 'raw', None)
            if isinstance(raw, SIPMessage):
                txn.response = raw
            if txn.final_at is None:
                txn.final_at = time.perf_counter()
        finally:
            self.app.watch.pop(dialog.call_id, None)
        if txn.response is not None and txn.final_at is None:
            txn.final_at = time.perf_counter()
        return txn

    async def options(self, to_uri: str | None = None, from_uri: str | None = None) -> Transaction:
        """Send OPTIONS (to the server itself unless ``to_uri`` says otherwise)."""
        assert self.app is not None
        to_uri = to_uri or default_request_uri(self.target)
        from_uri = from_uri or 'sip:aiosip-ws@%s' % target_domain(self.target)
        dialog = await self.app.start_dialog(from_uri, to_uri, protocol=self.connection)
        return await self._transact(dialog, 'OPTIONS', to_uri,
                                    lambda: dialog.send_message('OPTIONS'))

    async def message(self, from_uri: str, to_uri: str, body: str, *,
                      content_type: str = 'text/plain', user: str | None = None,
                      password: str | None = None) -> Transaction:
        """Send one MESSAGE (RFC 3428) and wait for its final response."""
        assert self.app is not None
        dialog = await self.app.start_dialog(from_uri, to_uri, protocol=self.connection,
                                             password=password or '')
        if user:
            dialog.auth_username = user
        return await self._transact(dialog, 'MESSAGE', to_uri, lambda: dialog.send_message(
            'MESSAGE', content_type=content_type, payload=body))


#: The errors :meth:`Probe.connect` can end with that mean "could not reach a SIP
#: WebSocket server" (the CLI reports them and exits 1) rather than a bug.
PROBE_ERRORS: tuple[type[BaseException], ...] = (AiosipWSError, OSError, _ssl.SSLError)
