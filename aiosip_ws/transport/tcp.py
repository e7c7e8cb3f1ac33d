"""SIP over TCP and TLS on asyncio (RFC 3261 §18), on the project's own codec.

A :class:`StreamConnection` frames messages by Content-Length
(:class:`aiosip_ws.core.stream.StreamFramer`) and parses each as a WebSocket message is
parsed (:func:`aiosip_ws.core.framing.receive`), with the same bad-input rules: a request
that cannot be parsed gets its 400 (or 505, 416), ``max_bad_messages`` of those close the
connection, and a stream that cannot be framed any more (headers or a message over
``max_size``, a Content-Length that is no number) gets 400 or 513 when the request can
still be answered, then is closed.  CRLF keep-alives are answered (RFC 5626 §4.4.1).
Requests get ``received``/``rport`` on their top Via (RFC 3581).

:func:`listen_tcp` accepts connections (TLS with an ``ssl`` context), :func:`connect_tcp`
opens one.  A connection offers what a WebSocket connection does (``send``, ``via``,
``via_host``, ``state``, ``is_open``, ``close``) and ``reliable`` True.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from typing import Any, Protocol, cast

from ..core import codec, framing
from ..core.codec import SIPMessage, mark_received, serialize
from ..core.grammar import show_address
from ..core.stream import MAX_MESSAGE, Framed, FramingFailed, StreamFramer
from ..errors import ConfigurationError, SIPParseError, TransportError
from .stall import SendWatch, unsent
from .tap import tap_of
from .throttle import LogThrottle, wire_logger

__all__ = ['StreamConnection', 'StreamHandler', 'StreamListener', 'listen_tcp', 'connect_tcp']

logger = logging.getLogger(__name__)
peer_log = LogThrottle(logger)

Address = tuple[str, int]

_CONTENT_LENGTH_LINE = re.compile(rb'\r\n(?:content-length|l)[ \t]*:[^\r\n]*', re.IGNORECASE)


class StreamHandler(Protocol):
    def connection_made(self, conn: StreamConnection) -> None: ...

    def message_received(self, conn: StreamConnection, message: SIPMessage) -> None: ...

    def connection_lost(self, conn: StreamConnection, exc: BaseException | None) -> None: ...


class StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection carrying SIP, either role."""

    reliable = True

    def __init__(self, handler: StreamHandler, *, role: str, secure: bool,
                 max_size: int = MAX_MESSAGE, max_bad_messages: int | None = 10,
                 max_buffer: int = 1 << 20, advertise: str | None = None,
                 send_timeout: float | None = 20.0) -> None:
        self.handler = handler
        #: where the bytes of each SIP message go (see :mod:`aiosip_ws.transport.tap`)
        self.tap = tap_of(handler)
        self.role = role
        self.secure = secure
        self.via_transport = 'TLS' if secure else 'TCP'
        self.transport_name = 'tls' if secure else 'tcp'
        self.framer = StreamFramer(max_size)
        self.max_bad_messages = max_bad_messages
        self.max_buffer = max_buffer
        self.advertise = advertise
        self.bad_messages = 0
        self.local_addr: Address = ('0.0.0.0', 0)
        self.remote_addr: Address = ('0.0.0.0', 0)
        #: free-form per-connection state for applications (as on a WebSocket connection)
        self.state: dict[str, Any] = {}
        #: what the layer above keeps for it (serve's bridge: its BridgedFlow)
        self.flow_state: Any = None
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_exception: BaseException | None = None
        #: seconds written data may wait with no byte leaving before the connection is
        #: aborted (None: as long as TCP waits); see :mod:`aiosip_ws.transport.stall`
        self.send_timeout = send_timeout
        self._paused = False
        self._send_watch: SendWatch | None = None

    def __repr__(self) -> str:
        return '<StreamConnection %s %s %s>' % (self.role, self.transport_name,
                                                show_address(self.remote_addr))

    # -- asyncio ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sockname, peername = (transport.get_extra_info('sockname'),
                              transport.get_extra_info('peername'))
        self.local_addr = (sockname[0], sockname[1])
        self.remote_addr = (peername[0], peername[1])
        self.handler.connection_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._send_watch is not None:
            self._send_watch.cancel()
        if self.closed.done():
            return
        self.close_exception = exc
        self.closed.set_result(None)
        self.handler.connection_lost(self, exc)

    def data_received(self, data: bytes) -> None:
        for event in self.framer.feed(data):
            if isinstance(event, Framed):
                self._message(event.data)
            elif isinstance(event, FramingFailed):
                self._unframeable(event)
                return
            elif isinstance(event, framing.KeepAlivePing):
                self._write(framing.CRLF_PONG.encode())
            if self.closed.done():
                return

    def _message(self, data: bytes) -> None:
        event = framing.receive(data)
        sink = self.tap.sink
        if sink is not None and isinstance(event, (framing.MessageReceived,
                                                   framing.MessageRejected)):
            sink('in', self, data)
        if isinstance(event, framing.MessageReceived):
            message = event.message
            if wire_logger.isEnabledFor(logging.DEBUG):
                wire_logger.debug('%r received:\n%s', self, data.decode('utf-8', 'replace'))
            if message.is_request:
                mark_received(message, self.remote_addr[0], self.remote_addr[1])
            self.handler.message_received(self, message)
        elif isinstance(event, framing.MessageRejected):
            peer_log.info('stream-bad', '%r sent a message that was refused: %s', self,
                          event.error)
            if event.response is not None:
                self.send(event.response)
            self.bad_messages += 1
            if self.max_bad_messages is not None and self.bad_messages >= self.max_bad_messages:
                peer_log.warning('stream-bad-close', '%r: %d bad messages, closing', self,
                                 self.bad_messages)
                self.close()

    def _unframeable(self, event: FramingFailed) -> None:
        """Answer what can be answered, then close: nothing after this can be framed."""
        peer_log.warning('stream-framing', '%r cannot be read on (%s): closing', self,
                         event.error)
        with contextlib.suppress(SIPParseError):
            # the headers alone (their Content-Length is what went wrong)
            head = _CONTENT_LENGTH_LINE.sub(b'', event.head)
            request = codec.parse(head + b'\r\n\r\n', strict_mandatory=False)
            if request.is_request and request.method != 'ACK' and request.get('Via'):
                self.send(codec.make_response(request, event.status, '%s (%s)' % (
                    codec.REASONS.get(event.status, ''), str(event.error)[:80]),
                    to_tag=None))
        self.close()

    def pause_writing(self) -> None:
        # The peer reads slowly or not at all: the buffer limit and the send timeout act.
        self._paused = True
        self._watch_sending()

    def _watch_sending(self) -> None:
        """Data waits in the transport: start the send timeout."""
        if self.send_timeout is None or self.transport is None:
            return
        if self._send_watch is None:
            transport = self.transport
            self._send_watch = SendWatch(
                transport, self.send_timeout, on_stall=self._stalled,
                waiting=lambda: self._paused or transport.get_write_buffer_size() > 0)
        self._send_watch.watch()

    def resume_writing(self) -> None:
        self._paused = False

    def _stalled(self) -> None:
        assert self.transport is not None
        peer_log.warning('stream-stalled', '%r: nothing sent for %g s with %d bytes waiting (the '
                         'peer is gone or not reading): aborting the connection', self,
                         self.send_timeout or 0, unsent(self.transport))
        self.transport.abort()

    # -- ours ---------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.closed.done()

    @property
    def via_host(self) -> str:
        return self.advertise or show_address(self.local_addr)

    def via(self, branch: str) -> str:
        return 'SIP/2.0/%s %s;branch=%s;rport' % (self.via_transport, self.via_host, branch)

    def send(self, message: SIPMessage) -> bool:
        """Write one message; False when the connection is closed (or the peer stopped
        reading and more than ``max_buffer`` bytes wait: it is then closed)."""
        data = serialize(message)
        if wire_logger.isEnabledFor(logging.DEBUG):
            wire_logger.debug('%r sent:\n%s', self, data.decode('utf-8', 'replace'))
        sink = self.tap.sink
        if sink is not None and self.is_open:
            sink('out', self, data)
        return self._write(data)

    def _write(self, data: bytes) -> bool:
        if not self.is_open:
            return False
        assert self.transport is not None
        if self.transport.get_write_buffer_size() + len(data) > self.max_buffer:
            peer_log.warning('stream-slow', '%r does not read what it is sent: closing', self)
            self.transport.abort()
            return False
        self.transport.write(data)
        if self._send_watch is not None:
            self._send_watch.wrote(len(data))
        if self.transport.get_write_buffer_size():     # the socket did not take it all
            self._watch_sending()
        return True

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    async def wait_closed(self, timeout: float = 5.0) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except asyncio.TimeoutError:
            if self.transport is not None:
                self.transport.abort()
            await self.closed


class StreamListener:
    """Accepting TCP or TLS connections; :meth:`close` closes them too."""

    def __init__(self, server: asyncio.AbstractServer, connections: set[StreamConnection],
                 secure: bool) -> None:
        self.server = server
        self.connections = connections
        self.secure = secure

    @property
    def local_addr(self) -> Address:
        sockname = self.server.sockets[0].getsockname()  # type: ignore[attr-defined]
        return (sockname[0], sockname[1])

    @property
    def bound_url(self) -> str:
        return '%s://%s' % ('tls' if self.secure else 'tcp', show_address(self.local_addr))

    async def close(self) -> None:
        self.server.close()
        for conn in list(self.connections):
            conn.close()
        for conn in list(self.connections):
            await conn.wait_closed()
        await self.server.wait_closed()


class _Tracking:
    """Wraps a handler so that the listener knows its live connections."""

    def __init__(self, handler: StreamHandler, connections: set[StreamConnection]) -> None:
        self.handler, self.connections = handler, connections
        self.wire_tap = tap_of(handler)

    def connection_made(self, conn: StreamConnection) -> None:
        self.connections.add(conn)
        self.handler.connection_made(conn)

    def message_received(self, conn: StreamConnection, message: SIPMessage) -> None:
        self.handler.message_received(conn, message)

    def connection_lost(self, conn: StreamConnection, exc: BaseException | None) -> None:
        self.connections.discard(conn)
        self.handler.connection_lost(conn, exc)


async def listen_tcp(host: str, port: int, handler: StreamHandler, *,
                     ssl_context: ssl.SSLContext | None = None, max_size: int = MAX_MESSAGE,
                     advertise: str | None = None, backlog: int = 1024,
                     send_timeout: float | None = 20.0) -> StreamListener:
    """Accept SIP over TCP (or TLS with ``ssl_context``) on ``host``:``port``; a connection
    whose written data goes ``send_timeout`` seconds without a byte leaving is aborted."""
    loop = asyncio.get_running_loop()
    connections: set[StreamConnection] = set()
    tracking = _Tracking(handler, connections)
    secure = ssl_context is not None
    try:
        server = await loop.create_server(
            lambda: StreamConnection(tracking, role='server', secure=secure, max_size=max_size,
                                     advertise=advertise, send_timeout=send_timeout),
            host, port, ssl=ssl_context, backlog=backlog, ssl_handshake_timeout=10 if secure
            else None)
    except OSError as exc:
        raise ConfigurationError('cannot listen on %s://%s:%d: %s' % (
            'tls' if secure else 'tcp', host, port, exc.strerror)) from exc
    return StreamListener(server, connections, secure)


async def connect_tcp(host: str, port: int, handler: StreamHandler, *,
                      ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                      timeout: float = 10.0, max_size: int = MAX_MESSAGE,
                      send_timeout: float | None = 20.0) -> StreamConnection:
    """Open a SIP connection over TCP (TLS with ``ssl_context``) to ``host``:``port``."""
    loop = asyncio.get_running_loop()
    secure = ssl_context is not None
    try:
        _, conn = await asyncio.wait_for(loop.create_connection(
            lambda: StreamConnection(handler, role='client', secure=secure, max_size=max_size,
                                     send_timeout=send_timeout),
            host, port, ssl=ssl_context,
            server_hostname=(server_hostname or host) if secure else None), timeout)
    except asyncio.TimeoutError:
        raise TransportError('no %s connection to %s:%d within %.0f s' % (
            'TLS' if secure else 'TCP', host, port, timeout)) from None
    except (OSError, ssl.SSLError) as exc:
        raise TransportError('cannot connect to %s:%d over %s: %s' % (
            host, port, 'TLS' if secure else 'TCP', exc)) from exc
    return conn
