"""Sending HEP packets to a collector (Homer, sngrep as a HEP listener), never waiting.

A :class:`HepSender` sends to one collector, ``udp://HOST:PORT`` or ``tcp://HOST:PORT``.
:meth:`HepSender.send` never blocks and never queues without bound: a packet goes to the
socket or is dropped and counted (``dropped``):

* over UDP, when more than ``max_buffer`` bytes already wait in the transport (the
  kernel's buffer is full); a collector that is down answers with ICMP errors, which cost
  a rate-limited log line;
* over TCP, while the connection is down (it is opened again, after 1 s, then doubling up
  to 30 s; each try waits ``connect_timeout``) or more than ``max_buffer`` bytes wait for
  a collector that reads slowly.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, cast
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .throttle import LogThrottle

__all__ = ['HepSender', 'parse_hep_url']

logger = logging.getLogger(__name__)
peer_log = LogThrottle(logger)

#: bytes that may wait for a collector before packets are dropped
MAX_BUFFER = 4 << 20
#: the longest wait between two tries to connect to a TCP collector
MAX_BACKOFF = 30.0


def parse_hep_url(url: str) -> tuple[str, str, int]:
    """``udp://HOST:PORT`` or ``tcp://HOST:PORT`` -> (scheme, host, port)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if scheme not in ('udp', 'tcp') or not parts.hostname or port is None \
            or parts.path not in ('', '/'):
        raise ConfigurationError('--hep %r: give udp://HOST:PORT or tcp://HOST:PORT (a HEP '
                                 'collector: Homer, sngrep -L)' % url)
    return scheme, parts.hostname, port


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, sender: HepSender) -> None:
        self.sender = sender

    def error_received(self, exc: Exception) -> None:
        peer_log.warning('hep collector errors', 'HEP collector %s: %s (packets are lost '
                         'while it is down)', self.sender.url, exc)


class HepSender:
    """One collector (see the module); :meth:`start`, :meth:`send`, :meth:`close`."""

    def __init__(self, url: str, *, max_buffer: int = MAX_BUFFER,
                 connect_timeout: float = 5.0) -> None:
        self.url = url
        self.scheme, self.host, self.port = parse_hep_url(url)
        self.max_buffer = max_buffer
        self.connect_timeout = connect_timeout
        #: packets handed to the socket
        self.sent = 0
        #: packets dropped: the collector is down or does not keep up
        self.dropped = 0
        self._transport: asyncio.BaseTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def __repr__(self) -> str:
        return '<HEP collector %s>' % self.url

    async def start(self) -> None:
        """Open the UDP socket (the name resolved within ``connect_timeout``), or start
        connecting to the TCP collector (it may be down now: packets wait for nothing)."""
        loop = asyncio.get_running_loop()
        if self.scheme == 'udp':
            infos = await asyncio.wait_for(loop.getaddrinfo(self.host.strip('[]'), self.port,
                                                            type=socket.SOCK_DGRAM),
                                           self.connect_timeout)
            address = (str(infos[0][4][0]), int(infos[0][4][1]))
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self), remote_addr=address)
        else:
            self._task = loop.create_task(self._keep_connected())

    def send(self, packet: bytes) -> bool:
        """Hand ``packet`` to the socket, or drop it (counted); never waits."""
        transport = self._transport
        if transport is None or transport.is_closing() \
                or cast(Any, transport).get_write_buffer_size() > self.max_buffer:
            self.dropped += 1
            return False
        if self.scheme == 'udp':
            cast(asyncio.DatagramTransport, transport).sendto(packet)
        else:
            cast(asyncio.WriteTransport, transport).write(packet)
        self.sent += 1
        return True

    async def _keep_connected(self) -> None:
        loop = asyncio.get_running_loop()
        wait = 1.0
        while not self._closing:
            try:
                transport, stream = await asyncio.wait_for(loop.create_connection(
                    _Stream, self.host.strip('[]'), self.port), self.connect_timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                peer_log.warning('hep collector down', 'HEP collector %s: cannot connect '
                                 '(%s); packets are dropped until it is back', self.url,
                                 exc or 'timed out')
            else:
                logger.info('HEP collector %s: connected', self.url)
                self._transport, wait = transport, 1.0
                try:
                    await stream.lost
                finally:
                    self._transport = None
                    if not self._closing:        # closing: close() lets the buffer drain
                        transport.abort()
                if not self._closing:
                    peer_log.warning('hep collector down', 'HEP collector %s: the connection '
                                     'was lost; packets are dropped until it is back', self.url)
            await asyncio.sleep(wait)
            wait = min(wait * 2, MAX_BACKOFF)

    async def close(self) -> None:
        """Close the socket (what the kernel took may still leave), stop reconnecting."""
        self._closing = True
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class _Stream(asyncio.Protocol):
    """A TCP collector's connection: what it sends is ignored; its end is told."""

    def __init__(self) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
