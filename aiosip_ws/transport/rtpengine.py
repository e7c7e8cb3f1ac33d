"""A client of rtpengine's ng control protocol over UDP (:mod:`aiosip_ws.core.ng` is the
protocol as data).

:class:`NgClient` sends each command under a cookie of its own and waits for the reply
with that cookie.  A datagram can be lost: the same datagram (same cookie) goes again
every ``retransmit`` seconds until the reply comes or ``timeout`` has passed (rtpengine
answers a cookie it has seen from its cache, so a command is never carried out twice);
then :class:`~aiosip_ws.errors.MediaRelayTimeout`.  A reply whose ``result`` is
``error`` raises :class:`~aiosip_ws.errors.MediaRelayError` with rtpengine's reason; a
``warning`` is logged and the reply returned.  At most ``max_pending`` commands wait at
once (more fail at once: the relay is not keeping up), replies nobody waits for are
dropped and counted, and :meth:`NgClient.close` fails whatever still waits.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import socket
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import urlsplit

from ..core.grammar import show_address, split_net_url
from ..core.ng import decode_reply, encode_command
from ..errors import ConfigurationError, ConnectionLost, MediaRelayError, MediaRelayTimeout
from .throttle import LogThrottle

__all__ = ['NgClient', 'RelaySet', 'open_ng']

logger = logging.getLogger(__name__)
peer_log = LogThrottle(logger)

#: seconds a command may wait for its reply by default (Kamailio's rtpengine module: 1 s
#: per try, 5 tries)
DEFAULT_TIMEOUT = 5.0
#: seconds between copies of a command that has no reply yet
DEFAULT_RETRANSMIT = 1.0
#: commands waiting at once, per relay
DEFAULT_MAX_PENDING = 1000


class NgClient(asyncio.DatagramProtocol):
    """One rtpengine's ng port (see the module); made by :func:`open_ng`."""

    def __init__(self, address: tuple[str, int], *, timeout: float = DEFAULT_TIMEOUT,
                 retransmit: float = DEFAULT_RETRANSMIT,
                 max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.address = address
        self.timeout = timeout
        self.retransmit = retransmit
        self.max_pending = max_pending
        self.transport: asyncio.DatagramTransport | None = None
        #: cookie -> (what waits for its reply, whether a brief one will do)
        self._pending: dict[bytes, tuple[asyncio.Future[dict[str, Any]], bool]] = {}
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)
        #: replies that matched no waiting command (late, duplicated, or not ours)
        self.unmatched = 0
        #: copies sent again for want of a reply
        self.retransmitted = 0
        self._closed = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return '<rtpengine ng %s>' % show_address(self.address)

    # -- asyncio ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (a datagram endpoint's transport; on Python 3.10 not an instance of the ABC)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        pending = self._pending.get(data.partition(b' ')[0])
        if pending is None or pending[0].done():     # late, duplicated, not ours: unread
            self.unmatched += 1
            return
        waiter, brief = pending
        try:
            _, reply = decode_reply(data, brief=brief)
        except MediaRelayError as exc:
            peer_log.warning('bad ng replies', '%r: dropped a reply that is not ng: %s',
                             self, exc)
            return
        waiter.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the relay is down; the command's own timeout
        # decides, its retransmissions may yet reach a relay that comes back
        peer_log.info('ng socket errors', '%r: %s', self, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
        for waiter, _ in self._pending.values():
            if not waiter.done():
                waiter.set_exception(ConnectionLost('%r was closed' % self))

    # -- commands --------------------------------------------------------------------------
    async def command(self, command: Mapping[str, Any], *, timeout: float | None = None,
                      brief: bool = False) -> dict[str, Any]:
        """Send ``command`` (a dictionary with its ``command`` key) and return rtpengine's
        reply (``brief``: its strings and integers only, see
        :func:`~aiosip_ws.core.ng.decode_reply`); see the module for the failures."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionLost('%r is closed' % self)
        if len(self._pending) >= self.max_pending:
            raise MediaRelayError('%r: %d ng commands already wait for a reply'
                                  % (self, len(self._pending)))
        cookie = '%s_%d' % (self._prefix, next(self._counter))
        datagram = encode_command(cookie, command)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[dict[str, Any]] = loop.create_future()
        key = cookie.encode('ascii')
        self._pending[key] = (waiter, brief)
        limit = self.timeout if timeout is None else timeout
        name = command.get('command')
        deadline = loop.time() + limit
        self.transport.sendto(datagram, self.address)
        # one timer: the same datagram again each retransmit seconds, then the timeout
        timer = loop.call_later(min(self.retransmit, limit), self._again, waiter, datagram,
                                deadline, (name, limit))
        try:
            reply = await waiter
        finally:
            timer.cancel()
            del self._pending[key]
        result = reply.get('result')
        if result == 'error':
            raise MediaRelayError('%r refused %s: %s' % (self, name,
                                                         reply.get('error-reason', '?')))
        if result == 'warning':
            peer_log.warning('ng warnings', '%r: %s: %s', self, name, reply.get('warning'))
        return reply

    def _again(self, waiter: asyncio.Future[dict[str, Any]], datagram: bytes,
               deadline: float, what: tuple[Any, float]) -> None:
        if waiter.done():
            return
        loop = asyncio.get_running_loop()
        left = deadline - loop.time()
        if left <= 0.001:
            waiter.set_exception(MediaRelayTimeout('%r: no reply to %s within %g s'
                                                   % (self, what[0], what[1])))
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            waiter.set_exception(ConnectionLost('%r was closed' % self))
            return
        transport.sendto(datagram, self.address)
        self.retransmitted += 1
        waiter_timer = loop.call_later(min(self.retransmit, left), self._again, waiter,
                                       datagram, deadline, what)
        waiter.add_done_callback(lambda _: waiter_timer.cancel())

    async def ping(self) -> None:
        """A ``ping``: MediaRelayError unless rtpengine answers ``pong``."""
        reply = await self.command({'command': 'ping'})
        if reply.get('result') != 'pong':
            raise MediaRelayError('%r answered ping with %r' % (self, reply.get('result')))

    async def statistics(self) -> dict[str, Any]:
        """rtpengine's ``statistics`` (``currentstatistics``, ``totalstatistics``...)."""
        reply = await self.command({'command': 'statistics'})
        statistics = reply.get('statistics')
        return statistics if isinstance(statistics, dict) else {}

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        elif not self._closed.done():
            self._closed.set_result(None)           # never opened: nothing to wait for

    async def wait_closed(self) -> None:
        await self._closed


async def open_ng(url: str, **options: Any) -> NgClient:
    """An :class:`NgClient` for ``udp://HOST:PORT`` (rtpengine's ``--listen-ng``)."""
    scheme, host, port = split_net_url(url)
    if scheme != 'udp' or urlsplit(url).port is None:
        raise ConfigurationError('an rtpengine ng address is udp://HOST:PORT (its '
                                 '--listen-ng), not %r' % url)
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(host.strip('[]'), port,
                                                    type=socket.SOCK_DGRAM), 10)
    address = (str(infos[0][4][0]), int(infos[0][4][1]))
    _, client = await loop.create_datagram_endpoint(
        lambda: NgClient(address, **options), remote_addr=None,
        local_addr=('::' if ':' in address[0] else '0.0.0.0', 0))
    return client


class RelaySet:
    """The rtpengines serve drives (``--rtpengine``, repeatable).

    A call sticks to the relay its first command went to (rtpengine keeps its state); a
    new call goes to the next live relay in turn.  A relay that lets a command time out
    is skipped for ``retry`` seconds, then tried again; a new call whose relay times out
    moves on to the next live one, and with none left the command fails with
    :class:`~aiosip_ws.errors.MediaRelayError` (serve answers 503).  A call's relay that
    stops answering is not replaced: the other relay knows nothing of the call.  At most
    ``max_calls`` calls are remembered (the oldest forgotten first); ``delete`` of the
    whole call (without ``via-branch`` or ``to-tag``) forgets it.
    """

    def __init__(self, clients: list[NgClient], *, retry: float = 60.0,
                 max_calls: int = 100000) -> None:
        if not clients:
            raise ConfigurationError('a relay set needs at least one rtpengine')
        self.clients = list(clients)
        self.retry = retry
        self.max_calls = max_calls
        #: call-id -> the relay that holds it (insertion order: the oldest first)
        self._calls: dict[str, NgClient] = {}
        #: relay -> when it may be tried again
        self._dead_until: dict[NgClient, float] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._calls)

    def relay_of(self, call_id: str) -> NgClient | None:
        return self._calls.get(call_id)

    def live(self) -> list[NgClient]:
        """The relays not skipped now, in the order new calls take them."""
        now = asyncio.get_running_loop().time()
        return [c for c in self.clients if self._dead_until.get(c, 0.0) <= now]

    async def command(self, call_id: str, command: Mapping[str, Any], *,
                      brief: bool = False) -> dict[str, Any]:
        """``command`` for the call ``call_id`` (its ``call-id`` key is set here), on the
        call's relay, or for a new call on the next live one (``brief``: see
        :meth:`NgClient.command`)."""
        command = dict(command, **{'call-id': call_id})
        relay = self._calls.get(call_id)
        if relay is not None:
            try:
                return await relay.command(command, brief=brief)
            except MediaRelayTimeout:
                self._mark_dead(relay)
                raise
            finally:
                if _whole_call_deleted(command):       # not one branch or dialogue of it
                    self._calls.pop(call_id, None)
        if command.get('command') == 'delete':
            return {'result': 'ok'}                      # nothing was anchored for it
        tried: list[str] = []
        for relay in self._rotation():
            try:
                reply = await relay.command(command, brief=brief)
            except MediaRelayTimeout as exc:
                self._mark_dead(relay)
                tried.append(str(exc))
                continue
            self._remember(call_id, relay)
            return reply
        raise MediaRelayError('no rtpengine answers%s' % (': ' + '; '.join(tried) if tried
                                                          else ' (all skipped for now)'))

    def stick(self, call_id: str, address: str) -> bool:
        """``call_id`` goes to the relay at ``address`` (``host:port``, as another node
        recorded it); False when no relay of this set is there."""
        for client in self.clients:
            if show_address(client.address) == address:
                self._remember(call_id, client)
                return True
        return False

    def forget(self, call_id: str) -> None:
        self._calls.pop(call_id, None)

    def _rotation(self) -> list[NgClient]:
        live = self.live()
        if not live:
            return []
        start = self._next % len(live)
        self._next += 1
        return live[start:] + live[:start]

    def _remember(self, call_id: str, relay: NgClient) -> None:
        calls = self._calls
        calls[call_id] = relay
        while len(calls) > self.max_calls:
            del calls[next(iter(calls))]

    def _mark_dead(self, relay: NgClient) -> None:
        now = asyncio.get_running_loop().time()
        if self._dead_until.get(relay, 0.0) <= now:               # it was live: say so once
            logger.warning('%r does not answer: new calls skip it for %g s', relay, self.retry)
        self._dead_until[relay] = now + self.retry

    def close(self) -> None:
        for client in self.clients:
            client.close()

    async def wait_closed(self) -> None:
        for client in self.clients:
            await client.wait_closed()


def _whole_call_deleted(command: Mapping[str, Any]) -> bool:
    """A ``delete`` of the call itself, not of one branch (``via-branch``) or dialogue
    (``to-tag``) of it."""
    return (command.get('command') == 'delete' and 'via-branch' not in command
            and 'to-tag' not in command)
