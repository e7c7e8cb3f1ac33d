"""A real Prometheus (Debian's ``prometheus``, 2.42) scraping test targets on 127.0.0.1:
its own configuration (every second, 1 s timeout), its own storage directory, its web
port on loopback; ``query()`` and ``targets()`` ask its HTTP API.

Prometheus's discovery manager passes new targets on every 5 s, so a target is first
scraped 5 to 6 s after the start."""
from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.support import debian_binary, tail
from tests.support.net import HOST, free_port

__all__ = ['Prometheus', 'prometheus_binary']

#: the scrape job's name in the configuration
JOB = 'aiosip-ws'

CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: {job}
    metrics_path: {metrics_path}
    scheme: {scheme}
{tls}    static_configs:
      - targets: [{targets}]
"""


def prometheus_binary() -> str:
    return debian_binary('prometheus', 'prometheus')


class Prometheus:
    """Prometheus scraping ``targets`` (``host:port`` each; kept as ``scraped``) at
    ``metrics_path`` over ``scheme``; ``ca_file``: the CA that signs an https target's
    certificate.  A context manager (``start()`` then ``stop()``); its log is
    ``<directory>/prometheus.log``."""

    def __init__(self, directory: Path, targets: list[str], *, metrics_path: str = '/metrics',
                 scheme: str = 'http', ca_file: Path | None = None) -> None:
        self.directory = directory
        self.scraped = targets
        self.metrics_path = metrics_path
        self.scheme = scheme
        self.ca_file = ca_file
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    @property
    def url(self) -> str:
        return 'http://%s:%d' % (HOST, self.port)

    def start(self, timeout: float = 15) -> Prometheus:
        """Start it and wait until ``/-/ready`` answers 200 (``timeout`` s at most)."""
        binary = prometheus_binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / 'prometheus.yml'
        tls = ('    tls_config:\n      ca_file: %s\n' % json.dumps(str(self.ca_file))
               if self.ca_file else '')
        config.write_text(CONFIG.format(
            job=JOB, metrics_path=json.dumps(self.metrics_path), scheme=self.scheme, tls=tls,
            targets=', '.join(json.dumps(target) for target in self.scraped)))
        with open(self.directory / 'prometheus.log', 'wb') as log:
            self.proc = subprocess.Popen(
                [binary, '--config.file=%s' % config,
                 '--storage.tsdb.path=%s' % (self.directory / 'data'),
                 '--storage.tsdb.retention.time=1h',
                 '--web.listen-address=%s:%d' % (HOST, self.port),
                 '--web.console.templates=%s' % self.directory,
                 '--web.console.libraries=%s' % self.directory,
                 '--log.level=warn'],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.directory)
        self.started = time.monotonic()
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError('prometheus exited (status %s): %s'
                                   % (self.proc.returncode, self.log()))
            try:
                with urllib.request.urlopen(self.url + '/-/ready', timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError('prometheus not ready within %g s: %s' % (timeout, self.log()))

    def stop(self, timeout: float = 10) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        path = self.directory / 'prometheus.log'
        return tail(path.read_text(errors='replace'), 20) if path.exists() else ''

    # --- the HTTP API (blocking calls run in a thread: the test's loop keeps going) -------

    def _api(self, path: str, **params: str) -> Any:
        url = '%s/api/v1/%s' % (self.url, path)
        if params:
            url += '?' + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as answer:
            found = json.loads(answer.read())
        assert found['status'] == 'success', found
        return found['data']

    async def targets(self) -> list[dict[str, Any]]:
        """The active targets (``health``, ``lastError``, ``scrapeUrl``, ...)."""
        data = await asyncio.to_thread(self._api, 'targets', state='active')
        return list(data['activeTargets'])

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: the vector's samples (``metric`` labels, ``value`` [time, text])."""
        data = await asyncio.to_thread(self._api, 'query', query=expr)
        assert data['resultType'] == 'vector', data
        return list(data['result'])

    async def value(self, expr: str) -> float | None:
        """The value of ``expr``, a single sample (None: no sample)."""
        found = await self.query(expr)
        if not found:
            return None
        [sample] = found
        return float(sample['value'][1])

    async def wait_up(self, timeout: float = 10) -> dict[str, Any]:
        """The (only) target once its health is ``up``, or as it is ``timeout`` s after the
        start (the caller checks ``health`` and ``lastError``)."""
        deadline = self.started + timeout
        while True:
            found = await self.targets()
            if (len(found) == 1 and found[0]['health'] == 'up') or time.monotonic() > deadline:
                assert len(found) == 1, 'not one target after %g s: %s\n%s' % (
                    timeout, found, self.log())
                return found[0]
            await asyncio.sleep(0.1)

    async def wait_value(self, expr: str, expected: float, timeout: float = 10) -> float | None:
        """Poll ``expr`` until it equals ``expected`` (``timeout`` s at most); its last value."""
        deadline = time.monotonic() + timeout
        while True:
            got = await self.value(expr)
            if got == expected or time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.2)
