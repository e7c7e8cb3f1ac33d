"""A real redis-server (Debian's ``redis-server``) on a free port of 127.0.0.1, for the
cluster tests: no persistence, no config file, its own directory.  ``stop()`` and
``start()`` again (same port, empty) play a Redis outage."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from tests.support import debian_binary
from tests.support.net import free_port

__all__ = ['RedisServer', 'redis_binary']


def redis_binary() -> str:
    return debian_binary('redis-server', 'redis-server')


class RedisServer:
    """``prefix``: run it under that command (``PRIVATE_NETWORK``: in a network namespace
    of its own, which other processes join with ``nsenter --net=/proc/PID/ns/net``)."""

    def __init__(self, directory: Path, *, prefix: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.port = free_port()
        self.prefix = prefix
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return 'redis://127.0.0.1:%d/0' % self.port

    def start(self, timeout: float = 10) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [*self.prefix, redis_binary(), '--port', str(self.port), '--bind', '127.0.0.1', '--save', '',
             '--appendonly', 'no', '--dir', str(self.directory), '--daemonize', 'no',
             '--logfile', str(self.directory / 'redis.log')],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError('redis-server exited: %s' % self.log())
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError('redis-server did not answer within %g s' % timeout)

    def ping(self) -> bool:
        if self.prefix:                   # in its own namespace: ask from inside it
            assert self.proc is not None
            found = subprocess.run(['nsenter', '--net=/proc/%d/ns/net' % self.proc.pid, '--',
                                    'redis-cli', '-p', str(self.port), 'ping'],
                                   capture_output=True, text=True, timeout=5)
            return found.stdout.strip() == 'PONG'
        try:
            with socket.create_connection(('127.0.0.1', self.port), timeout=0.5) as sock:
                sock.sendall(b'PING\r\n')
                return sock.recv(16).startswith(b'+PONG')
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        path = self.directory / 'redis.log'
        return path.read_text()[-2000:] if path.exists() else ''
