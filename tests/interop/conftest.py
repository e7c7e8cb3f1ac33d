"""Fixtures for interop tests against real peers (Kamailio, JsSIP, SIP.js).

If Kamailio or Node/npm are missing the interop tests are skipped, unless
AIOSIP_WS_INTEROP_REQUIRED=1 is set (CI), in which case they fail.
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import time
import warnings
from pathlib import Path

import pytest

from tests.support.kamailio import ensure_kamailio, kamailio
from tests.support.net import free_port, port_open
from tests.support.node import ensure_node_modules


@pytest.fixture(autouse=True)
def _garbage_stays_here():
    """After each interop test, collect what it left for the garbage collector (asyncio
    transports of the peers' processes and sockets in reference cycles, which a real
    peer's test may leave when it times out), with their ResourceWarnings ignored: else
    the collector finalises them during a later module's test whose warnings are errors
    (``filterwarnings('error')``), which then fails for a socket it never opened."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ResourceWarning)
        gc.collect()


def _required() -> bool:
    return os.environ.get("AIOSIP_WS_INTEROP_REQUIRED", "") not in ("", "0", "no", "false")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "interop: needs real peers (kamailio, node + jssip/sip.js)")


def _unavailable(what: str, exc: Exception):
    msg = f"{what} unavailable: {exc}"
    if _required():
        pytest.fail(msg + " (AIOSIP_WS_INTEROP_REQUIRED is set)", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def kamailio_version() -> str:
    try:
        return ensure_kamailio()
    except RuntimeError as exc:
        _unavailable("kamailio", exc)


@pytest.fixture(scope="session")
def kamailio_tls(kamailio_version) -> str:
    try:
        return ensure_kamailio(tls=True)
    except RuntimeError as exc:
        _unavailable("kamailio tls module", exc)


@pytest.fixture(scope="session")
def node_agents_ready() -> None:
    try:
        ensure_node_modules()
    except RuntimeError as exc:
        _unavailable("node agents", exc)


def rtpengine_available() -> None:
    """Skip (or fail, when peers are required) without Debian's rtpengine-daemon."""
    from tests.support.rtpengine import rtpengine_binary
    try:
        rtpengine_binary()
    except RuntimeError as exc:
        _unavailable('rtpengine', exc)


@pytest.fixture
def ng_url(tmp_path):
    """rtpengine on 127.0.0.1 (tests/support/rtpengine.py): its ng URL."""
    from tests.support.rtpengine import rtpengine
    rtpengine_available()
    with rtpengine(tmp_path) as url:
        yield url


@pytest.fixture
def kamailio_peer(kamailio_version, tmp_path):
    """Kamailio on a free port: ws only, digest auth on REGISTER, 5 s keepalive."""
    with kamailio(tmp_path / "kamailio", ws_port=free_port()) as peer:
        yield peer


@pytest.fixture
def users_file(tmp_path):
    """alice and bob, password ``secret``, written by ``aiosip-ws passwd`` (MD5 + SHA-256)."""
    from tests.support.cli import run_aiosip_ws
    path = tmp_path / 'users'
    for user in ('alice', 'bob'):
        made = run_aiosip_ws('passwd', str(path), user, '--realm', 'example.com',
                             stdin='secret\n')
        assert made.returncode == 0, made.stderr
    return path


@pytest.fixture
def redis_server(tmp_path):
    """Debian's redis-server on a free port of 127.0.0.1, empty, no persistence."""
    from tests.support.redis import RedisServer
    try:
        server = RedisServer(tmp_path / 'redis').start()
    except RuntimeError as exc:
        _unavailable('redis-server', exc)
    yield server
    server.stop()


@contextlib.contextmanager
def front_process(what: str, command: list[str], port: int, log: Path | None = None):
    """``command`` (a proxy in the foreground: nginx, HAProxy) until it listens on
    127.0.0.1:``port`` (5 s at most, else ``what`` is unavailable, with its output and
    ``log``); terminated (then killed) when the block ends."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(100):
            if port_open('127.0.0.1', port) or proc.poll() is not None:
                break
            time.sleep(0.05)
        if not port_open('127.0.0.1', port):
            proc.kill()
            output = proc.communicate()[0]
            if log is not None and log.exists():
                output = log.read_text() + output
            _unavailable(what, RuntimeError('did not start: %s' % output))
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def browser_beside_serve(tmp_path, serve_process, *serve_args: str):
    """``aiosip-ws serve SERVE_ARGS`` (listening on ws://127.0.0.1) and a headless Chromium
    in one private network namespace: (browser, serve's URL, the serve process); what is
    missing makes the test unavailable."""
    import shutil

    from tests.support.browser import Browser, chromium_binary, ensure_bundles
    from tests.support.cli import PRIVATE_NETWORK
    try:
        chromium_binary()
        ensure_bundles()
    except RuntimeError as exc:
        _unavailable('browser agents', exc)
    if not (shutil.which('unshare') and shutil.which('nsenter') and shutil.which('ip')):
        _unavailable('browser agents', RuntimeError('unshare, nsenter and ip (util-linux, '
                                                    'iproute2) are needed'))
    process = serve_process('--listen', 'ws://127.0.0.1:0/', *serve_args,
                            prefix=PRIVATE_NETWORK)
    [url] = process.urls
    browser = Browser(tmp_path / 'chromium', netns_pid=process.proc.pid)
    try:
        await browser.start()
    except RuntimeError as exc:
        _unavailable('chromium', exc)
    try:
        yield browser, url, process
    finally:
        await browser.close()


async def answered_jssip_call(browser, url: str):
    """alice and bob, two JsSIP pages registered (password ``secret``) at ``url``; alice
    calls bob and bob answers: (alice, bob) once alice sees the call confirmed."""
    alice = await browser.agent('jssip', url=url, aor='sip:alice@example.com',
                                password='secret', name='alice')
    bob = await browser.agent('jssip', url=url, aor='sip:bob@example.com', password='secret',
                              name='bob')
    for agent in (alice, bob):
        assert (await agent.register())['status'] == 200
    await alice.call('sip:bob@example.com')
    await bob.wait_event('incomingCall', timeout=15)
    await bob.answer()
    await alice.wait_event('confirmed', timeout=15)
    return alice, bob
