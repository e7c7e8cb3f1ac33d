"""Rate-limited logging of what peers cause: malformed messages, refused requests and
handshakes, stray responses.

A peer decides how often these happen, so it must not decide how much gets logged.
:class:`LogThrottle` lets through at most ``burst`` records of one *kind* per
``interval`` seconds, counts the rest and, when the interval is over, logs one line
for them at the same level::

    dropped malformed messages: 9995 similar suppressed in 10 s

A kind is a fixed string naming the event (never a peer address or anything else a
peer chooses), so the state kept is one small entry per kind.  Records whose level
the logger does not log cost one ``isEnabledFor`` call.
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable

__all__ = ['LogThrottle', 'wire_logger']

#: every SIP message a transport sends or receives, at DEBUG (``aiosip-ws ... --trace``
#: shows it): one logger for UDP, TCP, TLS and WebSocket, named for what it carries
wire_logger = logging.getLogger('aiosip_ws.wire')


class _Window:
    """The records of one kind in the current interval."""

    __slots__ = ('start', 'level', 'logged', 'suppressed', 'timer')

    def __init__(self, start: float, level: int) -> None:
        self.start, self.level = start, level
        self.logged = self.suppressed = 0
        self.timer: asyncio.TimerHandle | None = None


class LogThrottle:
    """``throttle.warning(kind, msg, *args)``: like ``logger.warning(msg, *args)``, but
    at most ``burst`` lines of each ``kind`` per ``interval`` seconds, then one summary.

    The summary is logged when the interval ends (a timer on the running event loop),
    or, without a loop, by the next record of that kind; :meth:`flush` logs every
    pending summary now (serve does at shutdown).
    """

    _instances: weakref.WeakSet[LogThrottle] = weakref.WeakSet()

    def __init__(self, logger: logging.Logger, *, interval: float = 10.0, burst: int = 10,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval <= 0 or burst < 1:
            raise ValueError('LogThrottle needs interval > 0 and burst >= 1')
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        LogThrottle._instances.add(self)

    def log(self, level: int, kind: str, msg: str, *args: object) -> None:
        self._log(level, kind, msg, args)

    def info(self, kind: str, msg: str, *args: object) -> None:
        self._log(logging.INFO, kind, msg, args)

    def warning(self, kind: str, msg: str, *args: object) -> None:
        self._log(logging.WARNING, kind, msg, args)

    def suppressed(self, kind: str) -> int:
        """How many records of ``kind`` the current interval has held back so far."""
        window = self._windows.get(kind)
        return 0 if window is None else window.suppressed

    def flush(self) -> None:
        """End every interval now, logging the summaries due."""
        for kind, window in list(self._windows.items()):
            self._close(kind, window)

    def reset(self) -> None:
        """Forget every interval without logging (tests)."""
        for window in self._windows.values():
            if window.timer is not None:
                window.timer.cancel()
        self._windows.clear()

    @classmethod
    def flush_all(cls) -> None:
        for throttle in list(cls._instances):
            throttle.flush()

    @classmethod
    def reset_all(cls) -> None:
        for throttle in list(cls._instances):
            throttle.reset()

    # -- internals --------------------------------------------------------------
    def _log(self, level: int, kind: str, msg: str, args: tuple[object, ...]) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = self.clock()
        window = self._windows.get(kind)
        if window is not None and now - window.start >= self.interval:
            self._close(kind, window)
            window = None
        if window is None:
            window = self._windows[kind] = _Window(now, level)
        if window.logged < self.burst:
            window.logged += 1
            self.logger.log(level, msg, *args, stacklevel=3)   # the record names our caller
            return
        window.suppressed += 1
        if window.timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return                                   # the next record will close it
            window.timer = loop.call_later(max(0.0, window.start + self.interval - now),
                                           self._expire, kind, window)

    def _expire(self, kind: str, window: _Window) -> None:
        window.timer = None
        if self._windows.get(kind) is window:
            self._close(kind, window)

    def _close(self, kind: str, window: _Window) -> None:
        if self._windows.get(kind) is window:
            del self._windows[kind]
        if window.timer is not None:
            window.timer.cancel()
            window.timer = None
        if window.suppressed:                  # the interval, or less when flushed early
            span = min(self.interval, max(0.0, self.clock() - window.start))
            self.logger.log(window.level, '%s: %d similar suppressed in %g s', kind,
                            window.suppressed, round(span, 1))
