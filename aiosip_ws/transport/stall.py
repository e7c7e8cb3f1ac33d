"""The send timeout: a connection whose outgoing bytes make no progress is given up.

A peer that leaves the network without a FIN (a phone out of coverage) or that stops
reading its socket leaves what is sent to it in the kernel's buffers and then in the
transport's, until TCP itself gives up, some 15 minutes later.  Meanwhile its bindings
hold, and calls to its user ring into it.  :class:`SendWatch` looks at a connection only
while something waits to be sent to it (the transport is paused, or the connection's own
queue holds frames): every ``step`` it compares what waits (the transport's write buffer
and, on Linux, the socket's send queue: bytes the peer has not acknowledged) with what
was written since the last look; when no byte has left for ``timeout`` seconds it calls
``on_stall``, which aborts the connection (no closing handshake: the peer would not
read it).  No timer runs for a connection with nothing waiting.
"""
from __future__ import annotations

import array
import asyncio
import fcntl
import termios
from collections.abc import Callable

__all__ = ['SendWatch', 'unsent']

#: the ioctl that tells how many bytes a TCP socket's send queue holds (Linux)
_OUTQ: int | None = getattr(termios, 'TIOCOUTQ', None)


def unsent(transport: asyncio.BaseTransport) -> int:
    """Bytes written into ``transport`` that its peer has not acknowledged: the transport's
    own buffer and, where the system tells (Linux), the socket's send queue."""
    # uvloop's transports have the method without deriving from asyncio.WriteTransport
    buffered = getattr(transport, 'get_write_buffer_size', None)
    waiting: int = buffered() if buffered is not None else 0
    sock = transport.get_extra_info('socket')
    if _OUTQ is None or sock is None:
        return waiting
    try:
        count = array.array('i', [0])
        fcntl.ioctl(sock.fileno(), _OUTQ, count, True)
    except (OSError, ValueError):                     # closed meanwhile, or not a TCP socket
        return waiting
    return waiting + count[0]


class SendWatch:
    """Calls ``on_stall()`` once no byte has left ``transport`` for ``timeout`` seconds while
    ``waiting()`` is true.  :meth:`watch` when something starts waiting; :meth:`wrote` for
    the bytes the owner writes into the transport while it watches."""

    __slots__ = ('_transport', 'timeout', '_step', '_waiting', '_on_stall', '_handle',
                 '_size', '_written', '_progress_at')

    def __init__(self, transport: asyncio.WriteTransport, timeout: float,
                 waiting: Callable[[], bool], on_stall: Callable[[], None]) -> None:
        self._transport = transport
        self.timeout = timeout
        self._step = min(1.0, timeout / 4)
        self._waiting = waiting
        self._on_stall = on_stall
        self._handle: asyncio.TimerHandle | None = None
        self._size = 0
        self._written = 0
        self._progress_at = 0.0

    def watch(self) -> None:
        """Something waits to be sent: from now on, it must move."""
        if self._handle is not None:
            return
        loop = asyncio.get_running_loop()
        self._size = unsent(self._transport)
        self._written = 0
        self._progress_at = loop.time()
        self._handle = loop.call_later(self._step, self._check)

    def wrote(self, count: int) -> None:
        self._written += count

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        if self._transport.is_closing():
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        size = unsent(self._transport)
        if size < self._size + self._written:          # some bytes left since the last look
            self._progress_at = now
        self._size, self._written = size, 0
        if not self._waiting():
            return                                      # all sent: stop looking
        if now - self._progress_at >= self.timeout:
            self._on_stall()
            return
        self._handle = loop.call_later(self._step, self._check)
