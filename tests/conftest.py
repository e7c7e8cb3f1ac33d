"""Shared fixtures: TLS material made by the tests, servers on 127.0.0.1, task hygiene."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import aiosip_ws  # noqa: F401  - makes aiosip 0.2.0 importable before anything else
from aiosip_ws.serve.relay import RelayServer
from aiosip_ws.transport.throttle import LogThrottle
from tests.support.certs import CertFiles, make_certificates
from tests.support.cli import ServeProcess


@pytest.fixture(scope='session')
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certificates(tmp_path_factory.mktemp('tls'))


@pytest.fixture(autouse=True)
def fresh_log_throttles() -> None:
    """Peer-input warnings are rate-limited per kind: one test's flood must not hide the
    warnings the next test looks for."""
    LogThrottle.reset_all()


@pytest.fixture(autouse=True)
async def no_task_left_behind() -> AsyncIterator[None]:
    """Every async test must end with no task of its own still running."""
    before = set(asyncio.all_tasks())
    yield
    for _ in range(20):
        left = [t for t in asyncio.all_tasks() - before
                if t is not asyncio.current_task() and not t.done()]
        if not left:
            return
        await asyncio.sleep(0.05)
    pytest.fail('tasks left behind: %r' % left)


@pytest.fixture
async def relay() -> AsyncIterator[tuple[RelayServer, str]]:
    """``aiosip-ws serve`` in-process on a free port: (server, ws URL)."""
    server = RelayServer()
    [listener] = await server.start('ws://127.0.0.1:0/')
    try:
        yield server, listener.bound_url
    finally:
        await server.close()


@pytest.fixture
async def serve_with() -> AsyncIterator[Any]:
    """``start(app, prepare=None, **use_app_options)``: serve in-process on a free port
    routing with ``app`` (``prepare(server, router)`` sees both before it listens):
    (server, ws URL); every server started is closed at the end."""
    servers: list[RelayServer] = []

    async def start(app: object, prepare: Any = None,
                    **options: Any) -> tuple[RelayServer, str]:
        server = RelayServer()
        router = server.use_app(app, **options)
        if prepare is not None:
            prepare(server, router)
        [listener] = await server.start('ws://127.0.0.1:0/')
        servers.append(server)
        return server, listener.bound_url
    try:
        yield start
    finally:
        for server in servers:
            await server.close()


@pytest.fixture
def serve_process() -> Iterator[type[ServeProcess]]:
    started: list[ServeProcess] = []

    def start(*args: str, prefix: tuple[str, ...] = ()) -> ServeProcess:
        process = ServeProcess(*args, prefix=prefix)
        started.append(process)
        return process

    yield start  # type: ignore[misc]
    for process in started:
        process.stop()
