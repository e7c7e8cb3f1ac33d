"""The two helpers behind bounded logs: LogThrottle (peer-input warnings, a summary line per
interval) and AcceptFailureHandler (asyncio's accept() out of descriptors, no tracebacks)."""
from __future__ import annotations

import asyncio
import errno
import logging
import socket

import pytest

from aiosip_ws.transport import accept
from aiosip_ws.transport.accept import ACCEPT_FAILED_MESSAGE, AcceptFailureHandler
from aiosip_ws.transport.throttle import LogThrottle

LOGGER = 'aiosip_ws.test.throttle'


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def messages(caplog, name: str = LOGGER) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


def test_burst_then_one_summary_per_interval(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    throttle = LogThrottle(logging.getLogger(LOGGER), interval=10, burst=3, clock=clock)
    for i in range(1000):
        throttle.warning('bad things', 'bad thing %d', i)
    throttle.info('other things', 'another kind is counted apart')
    assert messages(caplog) == ['bad thing 0', 'bad thing 1', 'bad thing 2',
                                'another kind is counted apart']
    assert throttle.suppressed('bad things') == 997
    clock.now += 10
    throttle.warning('bad things', 'bad thing %d', 1000)          # a new interval
    assert messages(caplog)[4:] == ['bad things: 997 similar suppressed in 10 s', 'bad thing 1000']
    summary = [r for r in caplog.records if 'suppressed' in r.getMessage()][0]
    assert summary.levelno == logging.WARNING
    clock.now += 4
    throttle.warning('bad things', 'x')
    throttle.warning('bad things', 'y')
    throttle.warning('bad things', 'z')                               # over the burst
    throttle.flush()                                                  # e.g. at shutdown
    assert messages(caplog)[-1] == 'bad things: 1 similar suppressed in 4 s'
    throttle.flush()
    assert messages(caplog)[-1] == 'bad things: 1 similar suppressed in 4 s'   # nothing twice


def test_records_the_logger_drops_cost_nothing(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    throttle = LogThrottle(logging.getLogger(LOGGER), burst=1)
    for _ in range(5):
        throttle.info('refused', 'not logged at WARNING')
    assert messages(caplog) == [] and throttle.suppressed('refused') == 0
    throttle.warning('refused', 'first')                  # INFO records did not use the burst
    assert messages(caplog) == ['first']


def test_the_record_names_the_caller(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    LogThrottle(logging.getLogger(LOGGER)).warning('kind', 'from the test')
    [record] = caplog.records
    assert record.funcName == 'test_the_record_names_the_caller'


async def test_the_summary_comes_when_the_interval_ends(caplog):
    """With an event loop the summary does not wait for the next record of its kind."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    throttle = LogThrottle(logging.getLogger(LOGGER), interval=0.1, burst=2)
    for i in range(50):
        throttle.warning('flood', 'line %d', i)
    await asyncio.sleep(0.25)
    assert messages(caplog) == ['line 0', 'line 1', 'flood: 48 similar suppressed in 0.1 s']


# ---------------------------------------------------------------------------- accept()
def failure(sock: socket.socket, code: int = errno.EMFILE) -> dict:
    """The context asyncio's _accept_connection reports (3.10-3.13)."""
    return {'message': ACCEPT_FAILED_MESSAGE, 'exception': OSError(code, 'Too many open files'),
            'socket': sock}


@pytest.fixture
def listening():
    sock = socket.create_server(('127.0.0.1', 0))
    yield sock
    sock.close()


async def test_accept_failures_logged_once_then_summarised(caplog, monkeypatch, listening):
    """One line at once, duplicates of one pass (CPython gh-151615) counted once, one
    summary per interval, one line once accept() works again; no traceback anywhere."""
    monkeypatch.setattr(accept, '_RETRY_DELAY', 0.05)
    caplog.set_level(logging.INFO, logger='aiosip_ws.transport.accept')
    loop = asyncio.get_running_loop()
    handler = AcceptFailureHandler(first_interval=0.1)
    handler.install(loop)
    try:
        for _ in range(100):                       # one pass of asyncio's accept loop
            loop.call_exception_handler(failure(listening))
        for _ in range(3):                         # three retries that fail again
            await asyncio.sleep(0.06)
            loop.call_exception_handler(failure(listening, errno.ENFILE))
        await asyncio.sleep(1.0)
    finally:
        handler.uninstall()
    assert loop.get_exception_handler() is None
    lines = messages(caplog, 'aiosip_ws.transport.accept')
    port = listening.getsockname()[1]
    assert lines[0] == ('accept() failed on 127.0.0.1:%d: [Errno 24] Too many open files; not '
                        'accepting for 0.05 s, then retrying (further failures are summarised)'
                        % port)
    assert any(line.startswith('accept() failed 3 more time(s) in') or
               line.startswith('accept() failed 2 more time(s) in') for line in lines[1:]), lines
    assert 'Too many open files in system' in ' '.join(lines[1:])
    assert lines[-1].startswith('accept() works again: it failed 4 time(s)')
    assert len(lines) <= 4 and handler.failures == 4
    assert not any(r.exc_info for r in caplog.records)


@pytest.fixture
async def recorded():
    """An AcceptFailureHandler installed over a handler that records the messages of what
    reaches it: (loop, those messages, the handler).  A test may uninstall it itself."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context['message']))
    handler = AcceptFailureHandler()
    handler.install(loop)
    try:
        yield loop, seen, handler
    finally:
        handler.uninstall()
        loop.set_exception_handler(None)


async def test_other_loop_errors_reach_the_previous_handler(listening, recorded):
    loop, seen, handler = recorded
    loop.call_exception_handler({'message': 'something else', 'exception': ValueError()})
    loop.call_exception_handler(failure(listening, errno.ECONNABORTED))    # not a resource
    loop.call_exception_handler(failure(listening))
    handler.uninstall()
    assert seen == ['something else', ACCEPT_FAILED_MESSAGE]
    assert loop.get_exception_handler() is not handler


async def test_a_stale_retry_after_the_listener_closed_is_silent(recorded):
    """asyncio's duplicate retries (gh-151615) that run once the listening socket is closed
    fail with ValueError("Invalid file descriptor: -1"): after an accept failure, dropped."""
    loop, seen, handler = recorded
    closed = socket.socket()
    closed.close()

    def _start_serving() -> None:
        closed.fileno()

    stale = {'message': 'Exception in callback', 'exception': ValueError('Invalid file '
             'descriptor: -1'), 'handle': asyncio.Handle(_start_serving, (), loop)}
    loop.call_exception_handler(stale)                      # no accept failure yet: passed on
    with socket.create_server(('127.0.0.1', 0)) as sock:
        loop.call_exception_handler(failure(sock))
    loop.call_exception_handler(stale)
    handler.uninstall()
    assert seen == ['Exception in callback']


async def test_settle_lets_the_retries_of_a_closed_listener_run_first(monkeypatch, listening,
                                                                      recorded):
    """serve's shutdown: the listeners close while asyncio's accept retry (due one retry
    delay after the failure) is pending; settle() waits for it, so its ValueError still
    meets this handler and not the default one, which would log a traceback."""
    monkeypatch.setattr(accept, '_RETRY_DELAY', 0.2)
    loop, seen, handler = recorded
    await handler.settle()                                 # nothing failed: at once

    def _start_serving() -> None:                          # as asyncio's, on a closed socket
        raise ValueError('Invalid file descriptor: -1')

    loop.call_exception_handler(failure(listening))
    loop.call_later(0.2, _start_serving)                   # what asyncio schedules
    started = loop.time()
    await handler.settle()
    assert 0.2 <= loop.time() - started < 0.5
    handler.uninstall()
    await asyncio.sleep(0.05)
    assert seen == []
