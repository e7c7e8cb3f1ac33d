"""``aiosip-ws serve --workers N --redis URL``: N serve processes on one machine.

The parent runs no SIP itself.  It picks the port of every ``--listen`` URL given with
port 0 (a socket bound with ``SO_REUSEPORT`` and kept, so the port stays this
service's), then starts N workers, each ``aiosip-ws serve --config FILE`` with a
configuration file of its own (written in a private directory of the parent, so that no
secret shows on a command line): the parent's options with each URL's port filled in,
``reuse-port`` (every worker listens on the same ports; the kernel spreads the
connections over them) and ``node-id = "NAME-wI"`` (each worker is a node of the
cluster: their bindings and messages meet in Redis).  It prints ``listening on URL`` once every
worker listens, forwards SIGHUP (certificate reload) and SIGUSR1 (drain) to every worker,
and on SIGINT/SIGTERM stops them all; a worker that dies otherwise is started again
(at most 5 times a minute, then everything stops with exit status 1).

Metrics: the workers share a ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
multiprocess mode), so a scrape of ``/metrics``, whichever worker answers it, counts
every worker.  Per worker: the connection caps (from each worker's own open file limit)
and the handshake rate limit (``--max-handshakes-per-second`` is per worker: N workers
admit up to N times that).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from ..core.grammar import url_host
from ..errors import ConfigurationError
from ..transport.websocket import split_ws_url
from .config import ServeConfig

__all__ = ['supervise', 'worker_config']

logger = logging.getLogger(__name__)

#: most restarts of one worker within RESTART_WINDOW seconds before giving up
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
def worker_config(config: ServeConfig, urls: Sequence[str], node: str) -> ServeConfig:
    """The configuration of one worker: the parent's, listening on ``urls`` (ports filled
    in) with SO_REUSEPORT, as node ``node``, running no workers of its own."""
    return dataclasses.replace(config, listen=list(urls), reuse_port=True, node_id=node,
                               workers=0)


def _reserve(urls: Sequence[str]) -> tuple[list[str], list[socket.socket]]:
    """Each URL with its port; port 0 gets one now, held by a socket bound with
    SO_REUSEPORT (not listening: the workers' sockets get the connections)."""
    resolved, held = [], []
    for url in urls:
        secure, host, port, path = split_ws_url(url)
        if port == 0:
            family = socket.AF_INET6 if ':' in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((host, 0))
            except OSError as exc:
                sock.close()
                raise ConfigurationError('cannot listen on %s: %s' % (url, exc)) from None
            held.append(sock)
            port = sock.getsockname()[1]
        resolved.append('%s://%s:%d%s' % ('wss' if secure else 'ws', url_host(host), port, path))
    return resolved, held


class _Worker:
    def __init__(self, index: int, config_file: Path) -> None:
        self.index = index
        self.config_file = config_file
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: set[str] = set()
        self.starts: deque[float] = deque()
        self.reader: asyncio.Task[None] | None = None


async def supervise(config: ServeConfig) -> int:
    """Run ``config.workers`` workers until SIGINT/SIGTERM (see the module)."""
    if config.workers < 1:
        raise ConfigurationError('--workers must be at least 1')
    resolved, held = _reserve(config.listen_urls)
    node = config.node_id or socket.gethostname().split('.')[0]
    metrics_dir = tempfile.mkdtemp(prefix='aiosip-ws-metrics-')
    private = Path(tempfile.mkdtemp(prefix='aiosip-ws-workers-'))        # mode 0700
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=metrics_dir, PYTHONUNBUFFERED='1')
    workers = []
    for i in range(1, config.workers + 1):
        path = private / ('worker-%d.toml' % i)
        path.write_text(worker_config(config, resolved, '%s-w%d' % (node, i)).to_toml(),
                        encoding='utf-8')
        path.chmod(0o600)
        workers.append(_Worker(i, path))
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    announced = asyncio.Event()

    def forward(signum: int) -> None:
        for worker in workers:
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.send_signal(signum)

    def stop() -> None:
        stopping.set()
        forward(signal.SIGTERM)

    async def relay_output(worker: _Worker) -> None:
        assert worker.proc is not None and worker.proc.stdout is not None
        async for raw in worker.proc.stdout:
            line = raw.decode('utf-8', 'replace').rstrip('\n')
            if 'listening on ' in line:
                worker.ready.add(line.split('listening on ', 1)[1].strip())
                print('aiosip-ws serve: worker %d (pid %d) ready on %s'
                      % (worker.index, worker.proc.pid, line.split('listening on ', 1)[1]),
                      flush=True)
                if not announced.is_set() and all(len(w.ready) >= len(resolved) for w in workers):
                    announced.set()
                    pids = ', '.join(str(w.proc.pid) for w in workers if w.proc is not None)
                    for url in resolved:
                        print('aiosip-ws serve: listening on %s (%d workers: pids %s)'
                              % (url, len(workers), pids), flush=True)
            else:
                print('[worker %d] %s' % (worker.index, line), flush=True)

    async def start(worker: _Worker) -> None:
        worker.starts.append(time.monotonic())
        worker.ready.clear()
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable, '-m', 'aiosip_ws', 'serve', '--config', str(worker.config_file),
            env=env,
            stdout=asyncio.subprocess.PIPE)
        worker.reader = asyncio.ensure_future(relay_output(worker))

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    for signum in (signal.SIGHUP, signal.SIGUSR1):
        loop.add_signal_handler(signum, forward, signum)
    status = 0
    try:
        for worker in workers:
            await start(worker)
        waits = {asyncio.ensure_future(w.proc.wait()): w for w in workers if w.proc is not None}
        stop_wait = asyncio.ensure_future(stopping.wait())
        while waits:
            done, _ = await asyncio.wait([*waits, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            if stop_wait in done:
                break
            for finished in done:
                worker = waits.pop(finished)
                code = finished.result()
                _mark_dead(worker, metrics_dir)
                if stopping.is_set():
                    continue
                now = time.monotonic()
                while worker.starts and now - worker.starts[0] > RESTART_WINDOW:
                    worker.starts.popleft()
                if len(worker.starts) >= MAX_RESTARTS:
                    logger.error('worker %d exited (status %s) %d times within %g s: stopping',
                                 worker.index, code, MAX_RESTARTS, RESTART_WINDOW)
                    status = 1
                    stop()
                    break
                logger.error('worker %d exited unexpectedly (status %s): starting it again',
                             worker.index, code)
                await asyncio.sleep(1.0)
                await start(worker)
                assert worker.proc is not None
                waits[asyncio.ensure_future(worker.proc.wait())] = worker
            if stopping.is_set():
                break
        stop_wait.cancel()
        # every worker closes its clients over --shutdown-window, then exits
        deadline = config.shutdown_window + 20.0
        for worker in workers:
            if worker.proc is None:
                continue
            try:
                code = await asyncio.wait_for(worker.proc.wait(), deadline)
            except asyncio.TimeoutError:
                logger.error('worker %d did not stop within %g s: killed', worker.index, deadline)
                worker.proc.kill()
                code = await worker.proc.wait()
            _mark_dead(worker, metrics_dir)
            if code not in (0, -signal.SIGTERM):
                status = 1
            if worker.reader is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(worker.reader, 5)
        for pending in waits:
            pending.cancel()
        print('aiosip-ws serve: stopped cleanly' if status == 0 else
              'aiosip-ws serve: stopped (a worker failed)', flush=True)
        return status
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
        for worker in workers:
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.kill()
                await worker.proc.wait()
        for sock in held:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)


def _mark_dead(worker: _Worker, metrics_dir: str) -> None:
    """prometheus_client's multiprocess mode: drop the live gauges of a worker gone."""
    if worker.proc is None:
        return
    try:
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.proc.pid, metrics_dir)  # type: ignore[no-untyped-call]
    except (ImportError, OSError):
        pass
