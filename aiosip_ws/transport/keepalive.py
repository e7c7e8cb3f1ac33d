"""WebSocket keep-alive for every connection of a listener, from one task.

RFC 7118 §6 leaves dead-peer detection to the WebSocket layer: a Ping (RFC 6455 §5.5.2)
every ``interval`` seconds, and a connection whose Pong has not come ``timeout``
seconds later is closed with 1011, as websockets' own keep-alive does.  websockets
runs that keep-alive as one task per connection, each with its own timer; a server
holding tens of thousands of idle clients pays for all of them in memory and in
the size of the event loop's timer heap.  Here one task serves the whole listener.

Connections sit in a timing wheel: a dict from tick number to the connections due
then, so that each tick looks only at the connections due, never at all of them.
A connection is visited twice per interval: once to send its Ping, once, ``timeout``
later, to check its Pong.  A connection whose transport is paused (the peer is not
reading) is pinged all the same: its Ping goes behind what waits for the peer (from a
task of its own, which waits for the transport to drain), and a peer that has not read
all that and answered within ``timeout`` is given up like any other.  A connection that
did not answer is closed with 1011, or aborted at once when the Close frame cannot be
written (:meth:`~aiosip_ws.transport.websocket.WSConnection.close_unanswered`): the
deadline is ``interval + timeout`` plus at most one second, whatever waits to be sent.
"""
from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Protocol, cast

from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from .stall import unsent

if TYPE_CHECKING:
    from websockets.asyncio.connection import Connection as WebSocket

__all__ = ['SharedKeepalive', 'Pinged']

logger = logging.getLogger(__name__)


class Pinged(Protocol):
    """What the keep-alive uses of a connection (a :class:`~aiosip_ws.transport.websocket.
    WSConnection`)."""

    @property
    def websocket(self) -> WebSocket: ...

    @property
    def is_open(self) -> bool: ...

    @property
    def queued(self) -> int: ...

    async def close_unanswered(self, code: int, reason: str) -> None: ...


#: (connection, the Pong it waits for, or None when its Ping is due)
_Entry = tuple[Pinged, 'asyncio.Future[float] | None']


class SharedKeepalive:
    """Ping every connection :meth:`add` was given every ``interval`` seconds; close
    with 1011 those that do not answer within ``timeout``."""

    def __init__(self, interval: float, timeout: float | None) -> None:
        self.interval = interval
        self.timeout = timeout if timeout is not None else interval
        self.tick = min(1.0, interval / 4, self.timeout / 4)
        self._wheel: dict[int, list[_Entry]] = {}
        self._next = -1
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        #: Pings behind a paused transport: each task ends with the Pong's arrival
        self._behind: set[asyncio.Task[float]] = set()
        #: connections closed for a missing Pong, since the start
        self.timeouts = 0

    def _slot(self, when: float) -> int:
        return math.ceil(when / self.tick)

    def _at(self, when: float, entry: _Entry) -> None:
        slot = max(self._slot(when), self._next)
        bucket = self._wheel.get(slot)
        if bucket is None:
            self._wheel[slot] = [entry]
        else:
            bucket.append(entry)

    def add(self, conn: Pinged) -> None:
        """Start pinging ``conn``; it leaves by itself once it is closed."""
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._next = self._slot(loop.time())
            self._task = loop.create_task(self._run())
        self._at(loop.time() + self.interval, (conn, None))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick)
            last = self._slot(loop.time())
            while self._next <= last:
                due = self._wheel.pop(self._next, ())
                self._next += 1
                for conn, pong in due:
                    try:
                        await self._visit(conn, pong, loop.time())
                    except Exception:  # noqa: BLE001 - one connection must not stop the others
                        logger.exception('%r: keep-alive failed', conn)

    async def _visit(self, conn: Pinged, pong: asyncio.Future[float] | None,
                     now: float) -> None:
        websocket = conn.websocket
        if not conn.is_open or websocket.state is not State.OPEN:
            return                                          # gone: it leaves the wheel
        if pong is None:
            if websocket.paused:
                # The peer is not reading (or slowly): the Ping waits behind the data, in
                # a task, so that this loop never waits for one peer.
                behind = asyncio.get_running_loop().create_task(_ping_behind(websocket))
                self._behind.add(behind)
                behind.add_done_callback(self._ping_done)
                self._at(now + self.timeout, (conn, behind))
                return
            try:
                # no wait here: the transport takes more; the waiter is websockets' Future
                waiter = cast('asyncio.Future[float]', await websocket.ping())
            except ConnectionClosed:
                return
            self._at(now + self.timeout, (conn, waiter))
            return
        if pong.done():
            self._at(now + max(self.tick, self.interval - self.timeout), (conn, None))
            return
        if isinstance(pong, asyncio.Task):                  # a Ping behind a paused transport
            pong.cancel()
        self.timeouts += 1
        logger.info('%r: no Pong within %g s%s: closing with 1011', conn, self.timeout,
                    ' (%d bytes wait for the peer)' % (conn.queued + unsent(websocket.transport))
                    if websocket.paused or conn.queued else '')
        task = asyncio.get_running_loop().create_task(
            conn.close_unanswered(1011, 'keepalive ping timeout'))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _ping_done(self, task: asyncio.Task[float]) -> None:
        self._behind.discard(task)
        if not task.cancelled():
            task.exception()                    # ConnectionClosed: the connection is gone

    async def close(self) -> None:
        """Stop pinging; wait for the closes already started."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        behind = list(self._behind)
        for ping in behind:
            ping.cancel()
        await asyncio.gather(*behind, return_exceptions=True)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        self._wheel.clear()


async def _ping_behind(websocket: WebSocket) -> float:
    """Ping a connection whose transport is paused: the frame is written at once, behind
    what waits; websockets then waits for the transport to drain.  The Pong's latency."""
    pong = await websocket.ping()
    return await pong
