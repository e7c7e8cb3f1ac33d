"""accept() out of descriptors: counted and summarised instead of a traceback each time.

When the process runs out of file descriptors (EMFILE, or ENFILE system-wide; also
ENOBUFS/ENOMEM), ``accept()`` fails on the listening socket.  The accept loop is
asyncio's (``BaseSelectorEventLoop._accept_connection``, the same code in CPython
3.10 to 3.13): it reports the failure to the loop's exception handler with the
message ``socket.accept() out of system resource`` (the default handler logs it at
ERROR with a traceback), takes the listening socket out of the selector and puts it
back ``asyncio.constants.ACCEPT_RETRY_DELAY`` (1 s) later.  It also carries on trying
``accept()`` up to ``backlog`` (100) times in the same pass, each failure reported
again and scheduling one more retry (CPython gh-151615), so under exhaustion the log
gets about a hundred tracebacks a second, and retries still pending when the listener
closes fail once more ("Invalid file descriptor: -1"): this handler drops those, and
``settle()`` keeps it installed until they have run.

Why an exception handler.  Owning the accept step instead would mean owning the
listening socket's reader, but asyncio exposes no way to re-register its own accept
callback after a pause, and websockets builds its per-connection protocol in a
private closure of ``serve()``, so an accept loop of our own would have to re-implement
``websockets.asyncio.server.serve``.  ``loop.set_exception_handler()`` is public, its
context (``message``, ``exception``, ``socket``) is documented, and the message has
been the same string since Python 3.5.  So the back-off stays asyncio's (the
listening socket is out of the selector for 1 s after each failure, then accepting
resumes by itself; retrying costs one ``accept()`` a second, and a longer pause would
only delay recovery once descriptors are free again), and this handler owns the
reporting: the first failure is logged at once (WARNING, one line, no traceback),
then one summary per interval with the count, the interval doubling from 1 s up to
60 s while failures go on, and one line when an interval passes without any.
Everything else goes to the handler that was there before (or the default one).

Failures on one socket less than half a retry delay apart count as one pause (the
duplicate reports of gh-151615).  The best defence stays a connection cap below the
descriptor limit (``aiosip-ws serve`` derives one), so that clients get HTTP 503
before ``accept()`` can fail.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from typing import Any

from ..core.grammar import show_address

__all__ = ['AcceptFailureHandler', 'ACCEPT_FAILED_MESSAGE']

#: the ``message`` asyncio's accept loop reports (selector_events.py, 3.5 onwards)
ACCEPT_FAILED_MESSAGE = 'socket.accept() out of system resource'
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: asyncio.constants.ACCEPT_RETRY_DELAY, the pause after each failure
_RETRY_DELAY = 1.0

ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]

logger = logging.getLogger(__name__)


class AcceptFailureHandler:
    """An event loop exception handler for asyncio's accept() resource failures.

    ``AcceptFailureHandler().install(loop)``; other contexts go to the handler installed
    before (or ``loop.default_exception_handler``).  ``failures`` counts the pauses.
    """

    def __init__(self, log: logging.Logger | None = None, *, first_interval: float = 1.0,
                 max_interval: float = 60.0) -> None:
        self.log = log or logger
        self.first_interval = first_interval
        self.max_interval = max_interval
        #: accept pauses since the handler was installed
        self.failures = 0
        self._previous: ExceptionHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last: dict[int, float] = {}          # listening fd -> loop time of its last failure
        self._episode_start: float | None = None
        self._last_failure = self._reported_at = 0.0
        self._episode_failures = 0
        self._interval_failures = 0
        self._interval = first_interval
        self._last_error = ''
        self._timer: asyncio.TimerHandle | None = None
        self._last_report: float | None = None     # loop time of the latest report, duplicates too

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    async def settle(self) -> None:
        """Wait (at most ``ACCEPT_RETRY_DELAY``, 1 s) until asyncio's retries scheduled by
        the latest failure have run: call it after the listeners closed and before
        :meth:`uninstall`, so that a retry of a closed listener still finds this handler
        (the loop runs on after ``asyncio.run``'s main coroutine returns, while it cancels
        the tasks left and shuts down the executor).  No failure within the last second:
        returns at once."""
        if self._loop is None or self._last_report is None:
            return
        due = self._last_report + _RETRY_DELAY - self._loop.time()
        if due > -0.05:
            await asyncio.sleep(due + 0.05)

    def uninstall(self) -> None:
        """Put the previous handler back and log what is still due."""
        if self._loop is None:
            return
        if self._loop.get_exception_handler() is self:
            self._loop.set_exception_handler(self._previous)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._interval_failures:
            self._summary(self._loop.time())
        self._loop = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get('exception')
        if (context.get('message') == ACCEPT_FAILED_MESSAGE and isinstance(exc, OSError)
                and exc.errno in _RESOURCE_ERRNOS):
            self._accept_failed(loop, context, exc)
            return
        if self.failures and _is_stale_retry(context, exc):
            return          # a duplicate retry (gh-151615) of a listener closed since: harmless
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    # -- internals --------------------------------------------------------------
    def _accept_failed(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any],
                       exc: OSError) -> None:
        sock = context.get('socket')
        fd = sock.fileno() if sock is not None else -1
        now = loop.time()
        self._last_report = now
        last = self._last.get(fd)
        self._last[fd] = now
        if last is not None and now - last < _RETRY_DELAY / 2:
            return                                     # the same pass of asyncio's accept loop
        self.failures += 1
        self._last_failure = now
        self._episode_failures += 1
        self._last_error = '[Errno %s] %s' % (exc.errno, os.strerror(exc.errno or 0))
        if self._episode_start is not None:
            self._interval_failures += 1
            return
        self._episode_start = self._reported_at = now
        self._interval = self.first_interval
        self.log.warning('accept() failed on %s: %s; not accepting for %g s, then retrying '
                         '(further failures are summarised)', _address(sock), self._last_error,
                         _RETRY_DELAY)
        self._timer = loop.call_later(self._interval, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._episode_start is None:
            return
        now = loop.time()
        quiet = now - self._last_failure
        if not self._interval_failures and quiet < _RETRY_DELAY * 1.5:
            # asyncio's retry is due about now and may fail again: look once more after it
            self._timer = loop.call_later(_RETRY_DELAY * 1.5 - quiet, self._tick, loop)
            return
        if self._interval_failures:
            self._summary(now)
            self._interval = min(self._interval * 2, self.max_interval)
            self._timer = loop.call_later(self._interval, self._tick, loop)
            return
        self.log.warning('accept() works again: it failed %d time(s) in %g s',
                         self._episode_failures,
                         round(self._last_failure - self._episode_start + _RETRY_DELAY, 1))
        self._episode_start = None
        self._episode_failures = 0
        self._last.clear()

    def _summary(self, now: float) -> None:
        self.log.warning('accept() failed %d more time(s) in %g s (%s); still retrying every '
                         '%g s', self._interval_failures, round(now - self._reported_at, 1),
                         self._last_error, _RETRY_DELAY)
        self._interval_failures = 0
        self._reported_at = now


def _is_stale_retry(context: dict[str, Any], exc: object) -> bool:
    """A pending ``_start_serving`` retry that ran after its listening socket closed."""
    if not isinstance(exc, ValueError):
        return False
    callback = getattr(context.get('handle'), '_callback', None)
    return getattr(callback, '__name__', '') == '_start_serving'


def _address(sock: Any) -> str:
    try:
        return show_address(sock.getsockname())
    except (AttributeError, OSError):
        return 'a listening socket'
