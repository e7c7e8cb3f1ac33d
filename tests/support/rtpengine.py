"""Debian's rtpengine-daemon for a test: user-space forwarding on 127.0.0.1 only (no
kernel table), sessions deleted at once (``--delete-delay=0``), its ng port and media
ports chosen free, stopped (and waited for) at the end."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support import debian_binary, tail
from tests.support.net import free_port


def rtpengine_binary() -> str:
    return debian_binary('rtpengine', 'rtpengine-daemon')


def _pong(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(b'up d7:command4:pinge', ('127.0.0.1', port))
            return b'pong' in sock.recv(1024)
        except OSError:
            return False


@contextlib.contextmanager
def rtpengine(tmp: Path, *, media_ports: int = 40) -> Iterator[str]:
    """Run rtpengine; yields its ng URL ``udp://127.0.0.1:PORT``."""
    port = free_port(udp=True)
    low = free_port(udp=True)
    log = tmp / 'rtpengine.log'
    with log.open('w') as out:
        process = subprocess.Popen(
            [rtpengine_binary(), '--config-file=none', '--foreground', '--log-stderr',
             '--table=-1', '--delete-delay=0', '--interface=127.0.0.1',
             '--listen-ng=127.0.0.1:%d' % port, '--port-min=%d' % low,
             '--port-max=%d' % (low + media_ports), '--pidfile=%s' % (tmp / 'rtpengine.pid')],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not _pong(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError('rtpengine did not start:\n%s' % tail(log.read_text()))
            time.sleep(0.05)
        yield 'udp://127.0.0.1:%d' % port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
