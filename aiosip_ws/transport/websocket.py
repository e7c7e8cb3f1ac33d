"""The asyncio WebSocket transport: a thin layer over ``websockets.asyncio``.

:class:`WSConnection` carries SIP messages over one WebSocket connection, in
either role; :func:`open_connection` opens one as a client and :func:`listen`
accepts them as a server.  The SIP <-> WebSocket mapping itself lives in
:mod:`aiosip_ws.framing` (pure); what happens to the SIP messages is up to the
``handler`` (in practice :class:`aiosip_ws.adapter.Application`).

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
import dataclasses
import email.utils
import http
import inspect
import ipaddress
import logging
import random
import re
import secrets
import ssl as _ssl
import sys
import weakref
from collections.abc import Awaitable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from ..core import framing
from ..core.codec import SIPMessage
from ..core.framing import SUBPROTOCOL
from ..core.grammar import (
    WS_DEFAULT_PORTS,
    WS_SCHEMES,
    address_in,
    parse_networks,
    retry_after_seconds,
    url_host,
)
from ..core.ratelimit import TokenBucket
from ..errors import ConfigurationError, HandshakeError, HandshakeRefused
from ..options import ClientOptions, ServerOptions
from .keepalive import SharedKeepalive
from .proxyproto import proxied_connection_class
from .stall import SendWatch, unsent
from .throttle import LogThrottle

__all__ = ['WSConnection', 'WSListener', 'ConnectionHandler', 'open_connection', 'listen', 'shut_down',
           'random_invalid_host', 'split_ws_url', 'http_response']

logger = logging.getLogger(__name__)
#: Every SIP message and keep-alive sent or received, at DEBUG level (``--trace``).
wire_logger = logging.getLogger('aiosip_ws.wire')
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


def _sockaddr(address: Any) -> Address:
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
                 'identity', '_send_watch', '_aborted_with', 'flow_state', '__dict__',
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
        self.role = role
        self.secure = secure
        self.options = options
        self.url = url
        #: ``ws`` or ``wss``
        self.transport_name = 'wss' if secure else 'ws'
        #: Via transport token: ``WS`` or ``WSS`` (RFC 7118 5.1)
        self.via_transport = 'WSS' if secure else 'WS'
        self.local_addr: Address = _sockaddr(websocket.local_address)
        self.remote_addr: Address = _sockaddr(websocket.remote_address)
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

    # -- sending ----------------------------------------------------------------
    def send(self, message: SIPMessage) -> bool:
        """Send one SIP message as one WebSocket message (RFC 7118 §5): text when it is
        UTF-8, else binary.

        False when it was dropped: the connection is closed, or the peer stopped reading
        and its send queue is full (the connection is then closed with 1008).
        """
        data, text = framing.encode_frame(message)
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
        max_size=options.max_size, proxy=options.proxy, user_agent_header=_user_agent(),
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


def _user_agent() -> str:
    from .._version import __version__
    return 'aiosip-ws/%s' % __version__


# ---------------------------------------------------------------------------- server
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

    __slots__ = ('client', 'head', 'identity', 'served')

    def __init__(self, client: Address) -> None:
        #: the client's address (behind a trusted proxy: the forwarded one)
        self.client = client
        #: what the authenticate hook returned
        self.identity: Any = None
        #: answered by the http_handler (a page, not a refused handshake)
        self.served = False
        #: a HEAD request: the answer goes without its body
        self.head = False


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
        self.remote_addr: Address = _sockaddr(remote_address)


#: query parameters and cookies whose values never reach a log line
_SECRET = re.compile(r'((?:^|[?&;\s])(?:token|access_token|password|auth)=)[^&;\s]*', re.I)


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
    websockets 15, 16 and 17 (see :class:`_HandshakeLogger`).
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
    allowed = None if options.allowed_origins is None else set(options.allowed_origins)

    def busy(connection: ServerConnection, why: str) -> Response:
        peer_log.warning('refused handshakes (busy)', 'refused handshake from %s: %s',
                         connection.remote_address, why)
        return http_response(http.HTTPStatus.SERVICE_UNAVAILABLE, why + '\n', headers=[
            ('Retry-After', str(random.randint(options.retry_after, 2 * options.retry_after)))])

    rate = options.max_handshakes_per_second
    bucket = TokenBucket(rate or 0.0, options.handshake_burst, asyncio.get_running_loop().time())

    def over_rate() -> bool:
        return rate is not None and not bucket.take(asyncio.get_running_loop().time())

    http_handler = options.http_handler
    proxies = parse_networks(options.trusted_proxies, 'trusted proxy')
    #: what check_request learnt of a connection in its handshake, for on_connection and
    #: log_refusal; weak keys: a handshake abandoned half-way leaves nothing behind
    handshakes: weakref.WeakKeyDictionary[ServerConnection, _Handshake] = \
        weakref.WeakKeyDictionary()

    def check_request(connection: ServerConnection,
                      request: Request) -> Response | None | Awaitable[Response | None]:
        # It runs before websockets checks the handshake itself, on websockets 15-17.
        client = _sockaddr(connection.remote_address)
        if proxies:
            client = forwarded_client(client, request.headers, proxies)
        state = handshakes[connection] = _Handshake(client)
        # websockets 17 hands on any method (its own check answers 405 after this one);
        # 15 and 16 close the connection on anything but GET without an answer.
        method = getattr(request, 'method', 'GET')
        state.head = method == 'HEAD'
        if http_handler is not None and 'websocket' not in \
                request.headers.get('Upgrade', '').lower():
            answer = http_handler(request.path, request.headers, client[0])
            if answer is not None:
                state.served = True
                if method not in ('GET', 'HEAD'):
                    return http_response(http.HTTPStatus.METHOD_NOT_ALLOWED, 'GET or HEAD only\n',
                                         headers=[('Allow', 'GET, HEAD')])
                status, content_type, body = answer
                return http_response(status, body, content_type)
        versions = request.headers.get_all('Sec-WebSocket-Version')
        if any(version != '13' for version in versions):     # first: a retry cannot help
            peer_log.info('refused handshakes', 'refused handshake from %s: Sec-WebSocket-Version '
                          '%.20s, not 13', connection.remote_address, ', '.join(versions))
            return http_response(http.HTTPStatus.UPGRADE_REQUIRED, 'WebSocket version 13 only\n',
                                 headers=[('Upgrade', 'websocket'),
                                          ('Sec-WebSocket-Version', '13')])   # RFC 6455 §4.4
        if options.refuse_handshakes is not None:
            why = options.refuse_handshakes()
            if why is not None:
                return busy(connection, why)
        if options.max_connections is not None and len(connections) >= options.max_connections:
            return busy(connection, 'too many connections (%d)' % options.max_connections)
        if options.max_connections_per_ip is not None:
            source = client[0]
            if per_ip[source] >= options.max_connections_per_ip:
                return busy(connection, 'too many connections from %s (%d)'
                            % (source, options.max_connections_per_ip))
        if path != '/' and urlsplit(request.path).path != path:
            peer_log.info('refused handshakes', 'refused handshake from %s: path %s is not %s',
                          connection.remote_address, urlsplit(request.path).path, path)
            return http_response(http.HTTPStatus.NOT_FOUND, 'no SIP WebSocket service here\n')
        if allowed is not None:
            origin = request.headers.get('Origin')
            if origin not in allowed and not (origin is None and options.allow_missing_origin):
                peer_log.info('refused handshakes', 'refused handshake from %s: Origin %r not '
                              'allowed', connection.remote_address, origin)
                return http_response(http.HTTPStatus.FORBIDDEN, 'Origin not allowed\n')
        if over_rate():                  # last: only handshakes that would succeed count
            return busy(connection, 'too many handshakes per second (%g)' % (rate or 0))
        if options.authenticate is not None:
            return authenticate(connection, request, state)
        return None

    async def authenticate(connection: ServerConnection, request: Request,
                           state: _Handshake) -> Response | None:
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

    def log_refusal(connection: ServerConnection, request: Request,
                    response: Response) -> Response | None:
        if response.status_code == http.HTTPStatus.SWITCHING_PROTOCOLS:
            return None
        state = handshakes.pop(connection, None)
        if state is not None and state.head and response.body:
            # RFC 9110 §9.3.2: the same fields as for GET, Content-Length included, no content
            response = dataclasses.replace(response, body=b'')
        if state is not None and state.served:
            return response                         # an http_handler page, not a refusal
        refused = getattr(handler, 'handshake_refused', None)
        if refused is not None:
            refused(response.status_code)
        # A refusal of websockets' own checks (check_request's have logged theirs).
        exc = connection.protocol.handshake_exc
        if exc is not None:
            peer_log.info('refused handshakes', 'refused handshake from %s: HTTP %d: %s',
                          connection.remote_address, response.status_code, _reason(exc))
        return response

    async def on_connection(websocket: ServerConnection) -> None:
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
        create_connection = proxied_connection_class(proxies=proxies, tls=tls, pending=proxied_pending,
                                                     timeout=options.open_timeout)
        tls = None
    # passed on to loop.create_server: several processes on one port (serve --workers)
    listen_extra: dict[str, Any] = {'reuse_port': True} if options.reuse_port else {}
    server = await serve(
        on_connection, host, port, subprotocols=[Subprotocol(SUBPROTOCOL)], process_request=check_request,
        create_connection=create_connection,
        process_response=log_refusal, logger=_HandshakeLogger(logging.getLogger('websockets.server')),
        compression=None, ssl=tls, open_timeout=options.open_timeout,
        ping_interval=None,                 # the listener's own keep-alive: keepalive.py
        close_timeout=options.close_timeout, max_size=options.max_size,
        server_header=options.server_header or _user_agent(),
        **listen_extra,
    )
    listener = WSListener(server, url, connections, per_ip, proxied_pending, keepalive)
    logger.info('listening for SIP over WebSocket on %s', listener.bound_url)   # port 0: the real one
    return listener

