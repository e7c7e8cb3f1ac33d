"""The asyncio WebSocket transport: a thin layer over ``websockets.asyncio``.

:class:`WSConnection` carries SIP messages over one WebSocket connection, in
either role; :func:`open_connection` opens one as a client.  The server side (the
listener and its handshake checks) is :mod:`aiosip_ws.transport.listener`, which makes
its connections here too.  The SIP <-> WebSocket mapping itself lives in
:mod:`aiosip_ws.core.framing` (pure); what happens to the SIP messages is up to the
``handler`` (:class:`ConnectionHandler`; in practice an ``aiosip_ws.adapter.Application``
or serve's relay).  :func:`split_ws_url`, :func:`sockaddr` and :func:`user_agent` serve
both sides.

Every network wait is bounded: ``open_timeout`` for the handshake, WebSocket
Ping/Pong and optional CRLF keep-alives for idle links, ``close_timeout`` for
the closing handshake.  Sending is synchronous for the caller (aiosip needs
that) and ordered: frames go through a per-connection queue drained by a
writer task that exists only while there is something to write.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import secrets
import ssl as _ssl
import time
from collections.abc import Coroutine
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State
from websockets.typing import Subprotocol

from ..core import framing
from ..core.codec import SIPMessage
from ..core.framing import SUBPROTOCOL
from ..core.grammar import WS_DEFAULT_PORTS, WS_SCHEMES, retry_after_seconds
from ..errors import ConfigurationError, HandshakeError
from ..options import ClientOptions, ServerOptions
from .stall import SendWatch, unsent
from .tap import tap_of
from .throttle import LogThrottle, wire_logger

__all__ = ['WSConnection', 'ConnectionHandler', 'open_connection', 'random_invalid_host',
           'split_ws_url', 'sockaddr', 'user_agent']

logger = logging.getLogger(__name__)
#: Every SIP message and keep-alive sent or received, at DEBUG level (``--trace``).
#: what peers cause (malformed messages, refused requests and handshakes): at most a few
#: lines of each kind per interval, then one "N similar suppressed" line
peer_log = LogThrottle(logger)

Address = tuple[str, int]  # (host, port) as the socket reports it

#: seconds a peer that did not answer a Ping (or stopped reading) gets for the closing
#: handshake before its connection is aborted
UNANSWERED_CLOSE_WAIT = 1.0


class ConnectionHandler(Protocol):
    """What a :class:`WSConnection` reports to.  Optional, looked up when needed:
    ``handshake_refused(status)`` (a listener refused a handshake with that HTTP status)
    and ``message_dropped(conn, count)`` (messages that will never be sent: the connection
    is closed or its send queue overflowed)."""

    def connection_made(self, conn: WSConnection) -> None: ...

    def message_received(self, conn: WSConnection, message: SIPMessage) -> None: ...

    def connection_lost(self, conn: WSConnection, exc: BaseException | None) -> None: ...


def _start_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task that runs ``coro`` at once, up to its first real wait, where asyncio can
    (Python 3.12+: an eager task), else a task scheduled as usual.  The writer starts this
    way, so a message queued while the loop is busy (a storm of closing connections) is on
    the socket before the next pass of the loop, not after one more pass over everything
    that was ready."""
    loop = asyncio.get_running_loop()
    if _eager_task_factory is not None:
        return cast('asyncio.Task[None]', _eager_task_factory(loop, coro))
    return loop.create_task(coro)


_eager_task_factory = getattr(asyncio, 'eager_task_factory', None)


def random_invalid_host() -> str:
    """A random ``<token>.invalid`` host for Via and Contact (RFC 7118 B.1, RFC 6761)."""
    alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789'
    return ''.join(secrets.choice(alphabet) for _ in range(12)) + '.invalid'


def split_ws_url(url: str) -> tuple[bool, str, int, str]:
    """``wss://h:1/p`` -> ``(secure, host, port, path)``, with the RFC 6455 default ports."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in WS_SCHEMES:
        raise ConfigurationError('%r is not a ws:// or wss:// URL' % url)
    if not parts.hostname:
        raise ConfigurationError('%r has no host' % url)
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError('%r has a bad port: %s' % (url, exc)) from None
    secure = scheme == 'wss'
    return secure, parts.hostname, WS_DEFAULT_PORTS[scheme] if port is None else port, parts.path or '/'


def sockaddr(address: Any) -> Address:
    """A socket's address as ``(host, port)`` (port 0 when it has none: a Unix socket)."""
    if isinstance(address, (tuple, list)) and len(address) >= 2:
        return (address[0], address[1])
    return (str(address), 0)


class WSConnection:
    """One WebSocket connection carrying SIP, either role.

    aiosip 0.2.0 uses it as its "protocol" object: it has ``ready`` and
    ``transport`` as aiosip expects; the adapter keeps aiosip's own
    ``send_message(msg)`` path away from it and calls :meth:`send` instead.
    """

    # Slots for what every connection has (an idle client costs less without a per-instance
    # dict of 30 entries); ``__dict__`` stays for what applications attach to a connection.
    __slots__ = ('websocket', 'handler', 'role', 'secure', 'options', 'url', 'transport_name',
                 'via_transport', 'local_addr', 'remote_addr', 'via_host', 'ready',
                 'transport', 'dialogs', 'state', '_queue', '_queued', '_overflowed', '_closer',
                 '_writer', '_reader_writes', '_reader_flushed', '_tasks', '_pong_waiter',
                 '_run_task', 'bad_messages', '_max_bad_messages', 'closed', 'close_exception',
                 'identity', '_send_watch', '_aborted_with', 'flow_state', 'tap', 'peer_addr',
                 'opened_at', 'opened_time', 'bytes_in', 'bytes_out', '__dict__',
                 '__weakref__')

    #: a WebSocket is a reliable transport (RFC 3261 §18: no retransmissions over it)
    reliable = True

    def __init__(self, websocket: ClientConnection | ServerConnection,
                 handler: ConnectionHandler, *, role: str, secure: bool,
                 options: ClientOptions | ServerOptions, url: str | None = None,
                 via_host: str | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.websocket = websocket
        self.handler = handler
        #: where the bytes of each SIP message go (see :mod:`aiosip_ws.transport.tap`)
        self.tap = tap_of(handler)
        self.role = role
        self.secure = secure
        self.options = options
        self.url = url
        #: ``ws`` or ``wss``
        self.transport_name = 'wss' if secure else 'ws'
        #: Via transport token: ``WS`` or ``WSS`` (RFC 7118 5.1)
        self.via_transport = 'WSS' if secure else 'WS'
        self.local_addr: Address = sockaddr(websocket.local_address)
        self.remote_addr: Address = sockaddr(websocket.remote_address)
        #: the peer as the socket sees it (with the PROXY protocol: the header's client);
        #: ``remote_addr`` may become the client a trusted proxy's X-Forwarded-For names
        self.peer_addr: Address = self.remote_addr
        #: when it was made (the event loop's clock, and seconds since the epoch)
        self.opened_at = loop.time()
        self.opened_time = time.time()
        #: bytes of the SIP messages it received and sent (keep-alives left out)
        self.bytes_in = 0
        self.bytes_out = 0
        if via_host is None:
            via_host = random_invalid_host() if role == 'client' else '%s:%d' % self.local_addr
        #: the sent-by of Vias added on this connection
        self.via_host = via_host
        self.ready: asyncio.Future[WSConnection] = loop.create_future()
        self.ready.set_result(self)
        self.transport = self
        #: strong references to aiosip dialogs bound to this connection (adapter state)
        self.dialogs: dict[str, Any] = {}
        #: free-form per-connection state for applications
        self.state: dict[str, Any] = {}
        #: what the layer above keeps for this connection (serve: its FlowState)
        self.flow_state: Any = None
        #: (payload, is text) frames waiting for the transport to take more
        #: (made when first needed: most connections never wait for their socket)
        self._queue: collections.deque[tuple[bytes, bool]] | None = None
        self._queued = 0
        self._overflowed = False
        self._closer: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        #: True while this connection's own reader dispatches a message or flushes what that
        #: queued: frames queued then are written by the reader itself, right after
        self._reader_writes = False
        self._reader_flushed: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pong_waiter: asyncio.Future[None] | None = None
        self._run_task: asyncio.Task[None] | None = None
        #: messages refused unparsed so far; ``max_bad_messages`` of them close with 1008
        self.bad_messages = 0
        self._max_bad_messages: int | None = getattr(options, 'max_bad_messages', None)
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_exception: BaseException | None = None
        #: what the listener's ``authenticate`` hook returned for this connection
        self.identity: Any = None
        #: the send timeout's watch (made when something first waits to be sent)
        self._send_watch: SendWatch | None = None
        #: the close code of a connection aborted without a closing handshake
        self._aborted_with: int | None = None

    def __repr__(self) -> str:
        peer = self.url or '%s:%s' % self.remote_addr
        return '<WSConnection %s %s %s>' % (self.role, self.transport_name, peer)

    @property
    def is_open(self) -> bool:
        return not self.closed.done()

    def via(self, branch: str) -> str:
        """The Via this side puts on a request it sends over this connection (RFC 7118
        §5.1: ``SIP/2.0/WS`` or ``WSS``, our sent-by, the transaction's ``branch``)."""
        return 'SIP/2.0/%s %s;branch=%s' % (self.via_transport, self.via_host, branch)

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code; for a connection this side aborted because its peer
        could not be sent a Close frame (see :meth:`abort`), the code it would have sent."""
        if self._aborted_with is not None:
            return self._aborted_with
        return self.websocket.close_code

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting for the peer to read them (its send queue)."""
        return self._queued

    # -- sending ----------------------------------------------------------------
    def send(self, message: SIPMessage) -> bool:
        """Send one SIP message as one WebSocket message (RFC 7118 §5): text when it is
        UTF-8, else binary.

        False when it was dropped: the connection is closed, or the peer stopped reading
        and its send queue is full (the connection is then closed with 1008).
        """
        data, text = framing.encode_frame(message)
        self.bytes_out += len(data)
        sink = self.tap.sink
        if sink is not None:
            sink('out', self, data)
        if wire_logger.isEnabledFor(logging.DEBUG):
            wire_logger.debug('%r sent %s:\n%s', self, 'text' if text else 'binary',
                              data.decode('utf-8', 'replace'))
        return self._put(data, text)

    def send_frame(self, data: str | bytes) -> bool:
        """Send one raw WebSocket message (a str as text, bytes as binary); frames leave
        in the order given.

        Returns False when the message was dropped (see :meth:`send`).
        """
        if isinstance(data, str):
            return self._put(data.encode(), True)
        return self._put(data, False)

    def _put(self, data: bytes, text: bool) -> bool:
        if self.closed.done() or self._overflowed:
            logger.debug('%r is closed: dropped an outgoing message of %d bytes', self, len(data))
            self._dropped()
            return False
        if not self._queue and self._writer is None:
            websocket = self.websocket
            if not websocket.paused and websocket.protocol.state is State.OPEN:
                # Nothing waits and the socket takes more: the frame goes to the transport
                # now, as websockets' own send() does inside its send context, without a
                # coroutine or a task for each message.  When the transport is paused
                # (the peer reads slowly), frames queue below and a writer drains them.
                return self._write_now(data, text)
        limit = self.options.max_send_queue
        if limit is not None and self._queued + len(data) > limit:
            dropped = len(self._queue or ()) + 1
            self._overflow(limit)
            self._dropped(dropped)
            return False
        if self._queue is None:
            self._queue = collections.deque()
        self._queue.append((data, text))
        self._queued += len(data)
        self._watch_sending()
        if self._writer is None and not self._reader_writes:
            writer = _start_task(self._write())
            # An eager start may have sent everything already (and run _write's finally).
            self._writer = None if writer.done() else writer
        return True

    def _write_now(self, data: bytes, text: bool) -> bool:
        websocket = self.websocket
        try:
            if text:
                websocket.protocol.send_text(data)
            else:
                websocket.protocol.send_binary(data)
            websocket.send_data()
        except Exception as exc:  # noqa: BLE001 - the socket failed: the connection is over
            logger.debug('%r: writing failed (%s): aborting the connection', self, exc)
            websocket.transport.abort()
            self._dropped()
            return False
        if websocket.transport.get_write_buffer_size():   # the socket did not take it all
            self._watch_sending()
        return True

    def _watch_sending(self) -> None:
        """Something waits to be sent: start the send timeout (``send_timeout``)."""
        timeout = self.options.send_timeout
        if timeout is None:
            return
        watch = self._send_watch
        if watch is None:
            watch = self._send_watch = SendWatch(
                self.websocket.transport, timeout,
                waiting=lambda: bool(self.websocket.paused or self._queue
                                     or self.websocket.transport.get_write_buffer_size()),
                on_stall=self._stalled)
        watch.watch()

    def _stalled(self) -> None:
        timeout = self.options.send_timeout
        peer_log.warning('connections closed by the send timeout',
                         '%r: nothing sent for %g s with %d bytes waiting (the peer is gone or '
                         'not reading): aborting the connection', self, timeout or 0,
                         self._queued + unsent(self.websocket.transport))
        self.abort(1008, 'send timeout')

    def abort(self, code: int, reason: str) -> None:
        """End the connection now, without a closing handshake: for a peer that can no
        longer be sent a Close frame (it does not read, or does not answer).  What waits
        to be sent is dropped; ``close_code`` reports ``code`` (``reason`` is logged)."""
        if self._aborted_with is None and self.websocket.state is not State.CLOSED:
            self._aborted_with = code
            logger.debug('%r: aborted (%d %s)', self, code, reason)
        if self._send_watch is not None:
            self._send_watch.cancel()
        transport = getattr(self.websocket, 'transport', None)
        if transport is not None:
            transport.abort()

    def _dropped(self, count: int = 1) -> None:
        """Tell the handler (its optional ``message_dropped(conn, count)``) of messages
        that will never be sent."""
        hook = getattr(self.handler, 'message_dropped', None)
        if hook is not None:
            hook(self, count)

    @property
    def queued(self) -> int:
        """Bytes waiting to be sent."""
        return self._queued

    def _overflow(self, limit: int) -> None:
        """The peer does not read: drop what waits and close with 1008 (policy violation)."""
        self._overflowed = True
        logger.warning('%r: the peer is not reading (%d bytes waiting, limit %d): closing '
                       'with 1008', self, self._queued, limit)
        self._queue = None
        self._queued = 0
        self._closer = asyncio.get_running_loop().create_task(
            self.close_unanswered(1008, 'send queue full: the peer is not reading'))

    async def close_unanswered(self, code: int, reason: str) -> None:
        """Close a connection whose peer may never read the Close frame (it stopped
        reading, or answering Pings).  When the frame cannot even be written (the transport
        is paused, or messages wait before it) the connection is aborted at once; else the
        closing handshake gets at most :data:`UNANSWERED_CLOSE_WAIT` seconds (and never
        more than ``close_timeout``), then the TCP connection is aborted."""
        if self.websocket.paused or self._queue:
            self.abort(code, reason)
            return
        try:
            await asyncio.wait_for(self.websocket.close(code, reason),
                                   min(self.options.close_timeout, UNANSWERED_CLOSE_WAIT))
        except (asyncio.TimeoutError, ConnectionClosed):
            pass
        finally:
            if self.websocket.state is not State.CLOSED:
                self.abort(code, reason)

    async def _write(self) -> None:
        try:
            await self._send_queued()
        finally:
            self._writer = None

    async def _flush_from_reader(self) -> None:
        """Send what dispatching a received message queued (its answers, mostly) from the
        reader task itself: no task to create, and on the socket one pass of the loop
        sooner, which is what a reply costs while the loop is busy with other connections.
        While it waits for the peer to read, this connection reads nothing more."""
        try:
            await self._send_queued()
        finally:
            self._reader_writes = False
            if self._reader_flushed is not None:
                if not self._reader_flushed.done():
                    self._reader_flushed.set_result(None)
                self._reader_flushed = None

    async def _send_queued(self) -> None:
        try:
            while self._queue:
                data, text = self._queue.popleft()
                self._queued -= len(data)
                await self.websocket.send(data, text=text)
        except ConnectionClosed:
            if self._queue:
                logger.warning('%r closed with %d message(s) unsent', self, len(self._queue))
            self._queue = None
            self._queued = 0
        except Exception:  # noqa: BLE001 - a writer must never die silently
            logger.exception('%r: sending failed', self)
            self._queue = None
            self._queued = 0

    async def drain(self) -> None:
        """Wait until every queued message has been handed to the socket."""
        while True:
            if self._writer is not None:
                await asyncio.shield(self._writer)
            elif self._reader_writes and asyncio.current_task() is not self._run_task:
                if self._reader_flushed is None:
                    self._reader_flushed = asyncio.get_running_loop().create_future()
                await asyncio.shield(self._reader_flushed)
            else:
                return

    # -- receiving --------------------------------------------------------------
    async def run(self) -> None:
        """Read messages until the connection closes, then report it lost."""
        exc: BaseException | None = None
        keepalive = None
        if self.options.crlf_ping_interval:
            keepalive = asyncio.get_running_loop().create_task(self._crlf_keepalive())
        try:
            async for data in self.websocket:
                self._reader_writes = self._writer is None
                try:
                    self._data_received(data)
                finally:
                    if self._reader_writes and not self._queue:
                        self._reader_writes = False
                if self._reader_writes:
                    await self._flush_from_reader()
                if self._max_bad_messages is not None and self.bad_messages >= self._max_bad_messages:
                    await self._close_bad_peer()
                    break
        except ConnectionClosed as closed:
            exc = closed
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001
            logger.exception('%r: receive loop failed', self)
            exc = error
        finally:
            if keepalive is not None:
                keepalive.cancel()
                await asyncio.gather(keepalive, return_exceptions=True)
            self._lost(exc)

    def _lost(self, exc: BaseException | None) -> None:
        if self.closed.done():
            return
        if self._send_watch is not None:
            self._send_watch.cancel()
        self.close_exception = exc
        self.closed.set_result(None)
        logger.debug('%r lost (close code %s)', self, self.close_code)
        try:
            self.handler.connection_lost(self, exc)
        except Exception:  # noqa: BLE001
            logger.exception('%r: connection_lost handler failed', self)

    def _data_received(self, data: str | bytes) -> None:
        event = framing.receive(data, server_header=getattr(self.options, 'server_header', None))
        self.bytes_in += len(data)
        sink = self.tap.sink
        if sink is not None and isinstance(event, (framing.MessageReceived,
                                                   framing.MessageRejected)):
            sink('in', self, data.encode('utf-8', 'surrogateescape') if isinstance(data, str)
                 else data)
        if isinstance(event, framing.MessageReceived):
            if wire_logger.isEnabledFor(logging.DEBUG):
                wire_logger.debug('%r received %s:\n%s', self, 'binary' if event.binary else 'text',
                                  data if isinstance(data, str) else data.decode('utf-8', 'replace'))
            try:
                self.handler.message_received(self, event.message)
            except Exception:  # noqa: BLE001 - one bad message must not end the connection
                logger.exception('%r: handling a received message failed', self)
        elif isinstance(event, framing.KeepAlivePing):
            wire_logger.debug('%r received CRLF ping, answering CRLF pong', self)
            self.send_frame(framing.CRLF_PONG)
        elif isinstance(event, framing.KeepAlivePong):
            wire_logger.debug('%r received CRLF pong', self)
            if self._pong_waiter is not None and not self._pong_waiter.done():
                self._pong_waiter.set_result(None)
        else:
            assert isinstance(event, framing.MessageRejected)
            self.bad_messages += 1
            if event.response is not None:
                peer_log.info('refused requests', '%r: request refused with %d: %s', self,
                              event.response.status, event.error.reason)
                self.send(event.response)
            else:
                peer_log.warning('dropped malformed messages', '%r: dropped a malformed message: %s',
                                 self, event.error.reason)

    async def _close_bad_peer(self) -> None:
        """``max_bad_messages`` reached: close with 1008 once the last answer is out."""
        peer_log.warning('connections closed for malformed messages',
                         '%r: %d SIP messages could not be parsed: closing with 1008', self,
                         self.bad_messages)
        if self._writer is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.drain(), self.options.close_timeout)
        closing = asyncio.get_running_loop().create_task(self.websocket.close(
            1008, 'too many malformed SIP messages (%d)' % self.bad_messages))
        try:
            with contextlib.suppress(ConnectionClosed):   # discard what still comes, so that
                async for _ in self.websocket:            # the peer's Close frame gets read (at
                    pass                                  # most close_timeout, then an abort)
        finally:
            await closing

    async def _crlf_keepalive(self) -> None:
        """RFC 5626 4.4.1 CRLF keep-alive: ping every [0.8x, x] s, pong within the timeout."""
        interval = float(self.options.crlf_ping_interval or 0)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.0))
            self._pong_waiter = loop.create_future()
            wire_logger.debug('%r sending CRLF ping', self)
            self.send_frame(framing.CRLF_PING)
            try:
                await asyncio.wait_for(self._pong_waiter, self.options.crlf_pong_timeout)
            except asyncio.TimeoutError:
                logger.warning('%r: no CRLF pong within %.1f s, closing the flow', self,
                               self.options.crlf_pong_timeout)
                await self.close_unanswered(1011, 'keep-alive timeout')
                return

    # -- closing ----------------------------------------------------------------
    async def close(self, code: int = 1000, reason: str = '') -> None:
        """Close the connection (after queued messages) and wait until it is gone."""
        if self._closer is not None:                   # already closing: the peer stopped reading
            await asyncio.gather(self._closer, return_exceptions=True)
        if self._writer is not None or self._reader_writes:
            try:
                await asyncio.wait_for(self.drain(), self.options.close_timeout)
            except asyncio.TimeoutError:
                logger.warning('%r: queued messages not sent within close_timeout', self)
        await self.websocket.close(code, reason)
        if self._run_task is not None:
            await asyncio.gather(self._run_task, return_exceptions=True)
        else:
            self._lost(None)


# ---------------------------------------------------------------------------- client
async def open_connection(url: str, handler: ConnectionHandler,
                          options: ClientOptions | None = None, *,
                          connect_kwargs: dict[str, Any] | None = None) -> WSConnection:
    """Open a client connection to ``url`` offering the ``sip`` subprotocol.

    ``connect_kwargs`` go to ``websockets.asyncio.client.connect`` as they are
    (e.g. ``host``/``port``/``server_hostname`` from DNS discovery).
    Raises :class:`HandshakeError` when no usable SIP connection results
    (refused, TLS failure, HTTP error, timeout, or no ``sip`` subprotocol).
    """
    options = options or ClientOptions()
    options.validate()
    secure, _, _, _ = split_ws_url(url)
    kwargs: dict[str, Any] = dict(
        subprotocols=[Subprotocol(SUBPROTOCOL)], origin=options.origin,
        additional_headers=dict(options.headers) or None, compression=None,
        open_timeout=options.open_timeout, ping_interval=options.ping_interval,
        ping_timeout=options.ping_timeout, close_timeout=options.close_timeout,
        max_size=options.max_size, proxy=options.proxy, user_agent_header=user_agent(),
    )
    if secure:                                     # options.ssl serves wss:// URLs only
        kwargs['ssl'] = options.ssl or _ssl.create_default_context()
    kwargs.update(connect_kwargs or {})
    try:
        websocket = await connect(url, **kwargs)
    except InvalidStatus as exc:
        refused = HandshakeError('WebSocket handshake with %s refused: HTTP %d %s'
                                 % (url, exc.response.status_code, exc.response.reason_phrase))
        refused.retry_after = retry_after_seconds(exc.response.headers.get('Retry-After'))
        raise refused from exc
    except InvalidHandshake as exc:
        raise HandshakeError('WebSocket handshake with %s failed: %s' % (url, exc)) from exc
    except _ssl.SSLError as exc:
        raise HandshakeError('TLS with %s failed: %s' % (url, exc)) from exc
    except (OSError, asyncio.TimeoutError) as exc:
        raise HandshakeError('cannot connect to %s: %s' % (url, exc or type(exc).__name__)) from exc
    if websocket.subprotocol != SUBPROTOCOL:                              # RFC 7118 §4.1
        await websocket.close(1002, 'sip subprotocol required')
        raise HandshakeError('%s did not select the "sip" WebSocket subprotocol (it answered %r); '
                             'it is not a SIP WebSocket server (RFC 7118 4.1)'
                             % (url, websocket.subprotocol))
    conn = WSConnection(websocket, handler, role='client', secure=secure, options=options, url=url)
    handler.connection_made(conn)
    conn._run_task = asyncio.get_running_loop().create_task(conn.run())
    return conn


def user_agent() -> str:
    """This library's product token, for ``User-Agent`` and the listener's ``Server``."""
    from .._version import __version__
    return 'aiosip-ws/%s' % __version__
