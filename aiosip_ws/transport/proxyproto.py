"""The HAProxy PROXY protocol (versions 1 and 2) in front of a WebSocket listener.

A layer-4 load balancer (HAProxy ``send-proxy``/``send-proxy-v2``, AWS NLB, ...)
opens its own TCP connection to the listener and first sends a header that names the
client it accepted: ``PROXY TCP4 198.51.100.7 203.0.113.1 51234 443\\r\\n`` (version
1, text) or a binary block (version 2).  Then the client's bytes follow as they came:
the TLS ClientHello on ``wss://``, the HTTP upgrade on ``ws://``.  So the header has
to be read on the plain TCP stream, before TLS, and not one byte further.

:func:`parse_proxy_header` is the sans-I/O part.  :func:`proxied_connection_class`
makes the websockets ``ServerConnection`` that :func:`~aiosip_ws.transport.listener.
listen` uses with ``ServerOptions.proxy_protocol``: it keeps its transport paused,
peeks at the socket (``MSG_PEEK`` on a duplicate of its descriptor), takes exactly the
header off it, then starts TLS itself (``loop.start_tls``) when the listener is
``wss://``, and only then lets websockets see the connection.  Its ``remote_address``
is the client the header names.  A connection that is not from a trusted proxy, or
whose header is missing, malformed or late (``open_timeout``), is closed without a
byte sent: there is no protocol in which to answer.  A version 2 ``LOCAL`` header
(the balancer's health checks) and a version 1 ``UNKNOWN`` keep the balancer's own
address.  This needs asyncio's own event loop (it pauses the transport before its first
read; uvloop has read by then).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl as _ssl
import struct
import sys
from typing import Any, NamedTuple, cast

from websockets.asyncio.server import ServerConnection

from ..core.grammar import address_in, show_address
from ..errors import ProxyHeaderError
from .throttle import LogThrottle

__all__ = ['ProxyHeader', 'parse_proxy_header', 'proxied_connection_class',
           'V2_SIGNATURE', 'MAX_HEADER']

logger = logging.getLogger(__name__)
peer_log = LogThrottle(logger)

Address = tuple[str, int]

#: the 12 bytes every version 2 header starts with
V2_SIGNATURE = b'\r\n\r\n\x00\r\nQUIT\n'
_V1_PREFIX = b'PROXY '
_V1_MAX = 107                      # "the maximum line length is 107 bytes", CRLF included
#: the longest header accepted (version 2 with TLVs: HAProxy's unique-id, TLS details)
MAX_HEADER = 2048
_V2_ADDRESS_LENGTHS = {0x11: 12, 0x21: 36}     # TCP over IPv4, over IPv6 (STREAM only)


class ProxyHeader(NamedTuple):
    #: bytes the header takes at the start of the stream
    length: int
    #: the client the balancer accepted (None: LOCAL, UNKNOWN, or not TCP over IP)
    source: Address | None
    #: the address the client connected to (None likewise)
    destination: Address | None
    version: int


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """The PROXY header at the start of ``data``, or None while it is incomplete (every
    byte of ``data`` then belongs to the header).  :class:`ProxyHeaderError` when ``data``
    cannot start with one."""
    if data[:12] == V2_SIGNATURE[:len(data[:12])] and data[:1] == b'\r':
        return _parse_v2(data)
    if data[:6] == _V1_PREFIX[:len(data[:6])]:
        return _parse_v1(data)
    raise ProxyHeaderError('no PROXY protocol header: the stream starts with %r' % data[:16])


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b'\r\n', 0, _V1_MAX)
    if end < 0:
        if len(data) >= _V1_MAX or b'\n' in data:
            raise ProxyHeaderError('PROXY v1 line without CRLF in its first %d bytes' % _V1_MAX)
        return None
    fields = data[:end].decode('ascii', 'replace').split(' ')
    length = end + 2
    if len(fields) >= 2 and fields[1] == 'UNKNOWN':
        return ProxyHeader(length, None, None, 1)            # the rest of the line is ignored
    if len(fields) != 6 or fields[1] not in ('TCP4', 'TCP6'):
        raise ProxyHeaderError('PROXY v1 line is not "PROXY TCP4|TCP6 SRC DST SPORT DPORT": %r'
                               % data[:end][:_V1_MAX])
    version = 4 if fields[1] == 'TCP4' else 6
    source = _v1_address(fields[2], fields[4], version)
    destination = _v1_address(fields[3], fields[5], version)
    return ProxyHeader(length, source, destination, 1)


def _v1_address(host: str, port: str, version: int) -> Address:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ProxyHeaderError('PROXY v1 address %r is not an IP address' % host) from None
    if address.version != version:
        raise ProxyHeaderError('PROXY v1 address %s is not IPv%d' % (host, version))
    if not port.isdigit() or len(port) > 5 or int(port) > 65535 or (port[0] == '0' and port != '0'):
        raise ProxyHeaderError('PROXY v1 port %r is not a number from 0 to 65535' % port)
    return str(address), int(port)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    version_command, family, length = struct.unpack('!BBH', data[12:16])
    if version_command >> 4 != 2:
        raise ProxyHeaderError('PROXY v2 header of version %d' % (version_command >> 4))
    command = version_command & 0x0F
    if command > 1:
        raise ProxyHeaderError('PROXY v2 command %d is neither LOCAL nor PROXY' % command)
    total = 16 + length
    if total > MAX_HEADER:
        raise ProxyHeaderError('PROXY v2 header of %d bytes (at most %d)' % (total, MAX_HEADER))
    if len(data) < total:
        return None
    needed = _V2_ADDRESS_LENGTHS.get(family)
    if command == 0 or needed is None:           # LOCAL (health check), UNSPEC, UDP, UNIX
        return ProxyHeader(total, None, None, 2)
    if length < needed:
        raise ProxyHeaderError('PROXY v2 addresses need %d bytes, the header has %d'
                               % (needed, length))
    block = data[16:16 + needed]
    size = 4 if family == 0x11 else 16
    source = str(ipaddress.ip_address(block[:size]))
    destination = str(ipaddress.ip_address(block[size:2 * size]))
    source_port, destination_port = struct.unpack('!HH', block[2 * size:2 * size + 4])
    return ProxyHeader(total, (source, source_port), (destination, destination_port), 2)


def proxied_connection_class(*, proxies: list[Any], tls: _ssl.SSLContext | None, timeout: float,
                             pending: set[Any]) -> type[ServerConnection]:
    """A ``ServerConnection`` class (websockets' ``create_connection``) that reads the PROXY
    header first, from trusted ``proxies`` only, within ``timeout`` seconds, then starts TLS
    with ``tls`` (None: plain).  Connections still reading their header are in ``pending``
    (the listener aborts them when it closes)."""
    class ProxiedServerConnection(_ProxiedServerConnection):
        _pp_proxies = proxies
        _pp_tls = tls
        _pp_timeout = timeout
        _pp_pending = pending
    return ProxiedServerConnection


class _ProxiedServerConnection(ServerConnection):
    _pp_proxies: list[Any]
    _pp_tls: _ssl.SSLContext | None
    _pp_timeout: float
    _pp_pending: set[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pp_started = False
        self._pp_client: Address | None = None
        self._pp_raw: asyncio.Transport | None = None
        self._pp_sock: socket.socket | None = None
        self._pp_buffer = b''
        self._pp_timer: asyncio.TimerHandle | None = None
        self._pp_task: asyncio.Task[None] | None = None
        self._pp_early: list[bytes] = []         # read after TLS, before websockets starts

    @property
    def remote_address(self) -> Any:
        if self._pp_client is not None:
            return self._pp_client
        return super().remote_address

    # -- asyncio protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)
        self._pp_raw = raw
        peer = raw.get_extra_info('peername')
        if not (isinstance(peer, tuple) and address_in(peer[0], self._pp_proxies)):
            peer_log.info('refused PROXY connections', 'closed a connection from %s: not a '
                          'trusted proxy (this listener takes PROXY protocol connections only, '
                          'from --trusted-proxy addresses)', show_address(peer))
            raw.abort()
            return
        raw.pause_reading()              # nothing is read before the header is taken off
        loop = asyncio.get_running_loop()
        if sys.version_info < (3, 11):
            # 3.10's transport starts reading after connection_made even when paused: stop
            # it before its first read (resume-then-pause cancels a read already due)
            loop.call_soon(_stop_reading, raw)
        try:
            self._pp_sock = raw.get_extra_info('socket').dup()
            self._pp_sock.setblocking(False)
            loop.add_reader(self._pp_sock.fileno(), self._pp_readable)
        except (AttributeError, OSError) as exc:
            logger.warning('cannot read a PROXY header on this event loop (%s): use asyncio\'s',
                           exc)
            self._pp_cleanup()
            raw.abort()
            return
        self._pp_pending.add(self)
        self._pp_timer = loop.call_later(self._pp_timeout, self._pp_fail,
                                         'no PROXY header within %g s' % self._pp_timeout)

    def data_received(self, data: bytes) -> None:
        if self._pp_started:
            super().data_received(data)
        elif sum(map(len, self._pp_early)) + len(data) <= 1 << 20:
            self._pp_early.append(data)
        else:
            self._pp_fail('too much data before the WebSocket handshake started')

    def eof_received(self) -> None:
        if self._pp_started:
            super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._pp_started:
            super().connection_lost(exc)
        else:
            self._pp_cleanup()

    # -- reading the header ---------------------------------------------------------------
    def _pp_readable(self) -> None:
        sock, raw = self._pp_sock, self._pp_raw
        assert sock is not None and raw is not None
        try:
            data = sock.recv(MAX_HEADER - len(self._pp_buffer), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._pp_fail('reading its PROXY header failed: %s' % exc, quiet=True)
            return
        if not data:
            self._pp_fail('closed before its PROXY header was complete', quiet=True)
            return
        seen = self._pp_buffer + data
        try:
            header = parse_proxy_header(seen)
        except ProxyHeaderError as exc:
            self._pp_fail(str(exc))
            return
        if header is None:
            if len(seen) >= MAX_HEADER:
                self._pp_fail('PROXY header longer than %d bytes' % MAX_HEADER)
                return
            sock.recv(len(data))                        # all of it is header: take it off
            self._pp_buffer = seen
            return
        sock.recv(header.length - len(self._pp_buffer))  # exactly the rest of the header
        peer = raw.get_extra_info('peername')
        self._pp_client = header.source or (peer[0], peer[1])
        self._pp_cleanup()
        if self._pp_tls is None:
            self._pp_start(raw)
            raw.resume_reading()
        else:
            self._pp_task = asyncio.get_running_loop().create_task(self._pp_start_tls(raw))

    async def _pp_start_tls(self, raw: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        assert self._pp_tls is not None
        self._pp_pending.add(self)
        try:
            tls = await loop.start_tls(raw, self, self._pp_tls, server_side=True,
                                       ssl_handshake_timeout=self._pp_timeout)
        except Exception as exc:  # noqa: BLE001 - any TLS failure: that client goes
            logger.debug('TLS handshake with %s (through a PROXY header) failed: %s',
                         show_address(self._pp_client), exc)
            raw.abort()
            return
        finally:
            self._pp_pending.discard(self)
            self._pp_task = None
        if tls is None:
            raw.abort()
            return
        self._pp_start(tls)

    def _pp_start(self, transport: asyncio.BaseTransport) -> None:
        self._pp_started = True
        super().connection_made(transport)               # websockets takes over from here
        early, self._pp_early = self._pp_early, []
        for chunk in early:
            super().data_received(chunk)

    def _pp_fail(self, why: str, quiet: bool = False) -> None:
        raw = self._pp_raw
        peer = raw.get_extra_info('peername') if raw is not None else None
        if quiet:
            logger.debug('closed a connection from %s: %s', show_address(peer), why)
        else:
            peer_log.info('refused PROXY connections', 'closed a connection from %s: %s',
                          show_address(peer), why)
        self._pp_cleanup()
        if self._pp_task is not None:
            self._pp_task.cancel()
        if raw is not None:
            raw.abort()

    def abort_pending(self) -> None:
        """Close a connection whose header or TLS handshake is not done (listener closing)."""
        self._pp_fail('the listener is closing', quiet=True)

    def _pp_cleanup(self) -> None:
        if self._pp_timer is not None:
            self._pp_timer.cancel()
            self._pp_timer = None
        sock, self._pp_sock = self._pp_sock, None
        if sock is not None:
            try:
                asyncio.get_running_loop().remove_reader(sock.fileno())
            finally:
                sock.close()
        if self._pp_task is None:
            self._pp_pending.discard(self)


def _stop_reading(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.resume_reading()
        transport.pause_reading()
