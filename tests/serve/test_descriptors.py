"""`aiosip-ws serve` under a low open file limit (``prlimit --nofile``): the soft limit is
raised to the hard one, the default connection cap leaves descriptors free so that extra
handshakes get HTTP 503, and when accept() runs out of descriptors anyway the log gets a
few summary lines, not a traceback per attempt; afterwards new clients register again."""
from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import time

import pytest

from tests.support import REPO
from tests.support.net import HOST
from tests.support.sip import register_request
from tests.support.websocket import RawWebSocket

pytestmark = pytest.mark.skipif(shutil.which('prlimit') is None, reason='needs util-linux prlimit')

LIMIT = 1024
CAP = LIMIT - 64                                          # limit minus max(64, 5 %)


class LimitedServe:
    """``prlimit --nofile=SOFT:HARD python -m aiosip_ws serve ...`` on a free port."""

    def __init__(self, soft: int, hard: int, *args: str) -> None:
        command = ['prlimit', '--nofile=%d:%d' % (soft, hard), sys.executable, '-W',
                   'error::DeprecationWarning', '-m', 'aiosip_ws', 'serve',
                   '--listen', 'ws://%s:0/' % HOST, '--log-level', 'INFO', *args]
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED='1'))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if 'listening on' not in line:
            self.proc.kill()
            raise AssertionError('serve did not start: %r %s' % (line, self.proc.stderr.read()))
        self.url = line.split('listening on', 1)[1].strip()
        self.port = int(self.url.rsplit(':', 1)[1].strip('/'))

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


@pytest.fixture
def client_descriptors():
    """The test itself holds over a thousand sockets: raise its own soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * LIMIT
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip('the test needs %d descriptors, the hard limit is %d' % (want, hard))
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def handshakes(port: int, count: int, concurrency: int) -> tuple[list[RawWebSocket], list[str]]:
    """``count`` WebSocket handshakes, ``concurrency`` at a time: (open ones, refusals)."""
    opened: list[RawWebSocket] = []
    refused: list[str] = []
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            try:
                opened.append(await RawWebSocket.connect(HOST, port, timeout=10))
            except ConnectionError as exc:
                refused.append(str(exc))
    await asyncio.gather(*(one() for _ in range(count)))
    return opened, refused


@pytest.mark.load
async def test_serve_under_a_low_open_file_limit(client_descriptors):
    """ulimit -n 1024: 960 connections, the next handshakes get 503; clients that open TCP
    and send nothing exhaust the descriptors: accept() fails, which costs a few log lines
    and no traceback; once they are gone (--open-timeout) and the others close, a new
    client registers."""
    started = time.monotonic()
    serve = LimitedServe(LIMIT, LIMIT, '--open-timeout', '1.5', '--ping-interval', '0')
    sockets: list[RawWebSocket] = []
    silent: list[asyncio.StreamWriter] = []
    try:
        sockets, refused = await handshakes(serve.port, CAP, concurrency=50)
        assert (len(sockets), refused) == (CAP, [])
        more, refused = await handshakes(serve.port, 40, concurrency=10)
        sockets += more
        assert more == [] and len(refused) == 40
        assert all(text.startswith('WebSocket handshake refused: \'HTTP/1.1 503 ') for text in refused)

        for _ in range(150):                       # beyond the descriptors left: accept() fails
            _, writer = await asyncio.open_connection(HOST, serve.port)
            silent.append(writer)
        await asyncio.sleep(2.5)       # serve reaps the accepted ones (open timeout), fails again
        for writer in silent:
            writer.close()
        silent.clear()
        for ws in sockets:
            await ws.close()
        sockets.clear()

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:                                # accepting again (within a retry or two)
            try:
                ws = await RawWebSocket.connect(HOST, serve.port, timeout=2)
                break
            except (ConnectionError, asyncio.TimeoutError):
                assert loop.time() < deadline, 'serve does not accept connections again'
                await asyncio.sleep(0.2)
        try:
            await ws.send_text(register_request('after'))
            assert (await ws.recv_text(timeout=5)).startswith('SIP/2.0 200 ')
        finally:
            await ws.close()
    finally:
        for writer in silent:
            writer.close()
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close()
        code, err = serve.stop()
    lines = err.splitlines()
    assert code == 0, err[-3000:]
    assert 'Traceback' not in err and 'ERROR' not in err, err[-3000:]
    assert 'open file limit (RLIMIT_NOFILE): soft 1024, hard 1024' in err
    assert 'at most %d connections per listener' % CAP in err
    accept_lines = [line for line in lines if 'accept()' in line]
    assert any('accept() failed on 127.0.0.1:%d: [Errno 24] Too many open files' % serve.port
               in line for line in accept_lines), err[-3000:]
    assert len(accept_lines) <= 8, accept_lines
    busy = [line for line in lines if 'refused handshake' in line]
    assert 1 <= len(busy) <= 12, busy                             # 10, then the summary
    assert len(lines) < 60, err[-3000:]
    assert time.monotonic() - started < 30


def test_serve_raises_the_soft_limit_to_the_hard_one():
    """prlimit --nofile=256:1024: serve runs with 1024 and derives its cap from that; an
    explicit --max-connections wins."""
    serve = LimitedServe(256, LIMIT)
    code, err = serve.stop()
    assert code == 0, err
    assert 'open file limit (RLIMIT_NOFILE): soft 256 raised to the hard limit 1024' in err
    assert 'at most %d connections per listener' % CAP in err
    serve = LimitedServe(256, LIMIT, '--max-connections', '5000')
    code, err = serve.stop()
    assert code == 0, err
    assert 'soft 256 raised to the hard limit 1024' in err and 'at most' not in err
