"""Debian's rtpengine-daemon for a test: user-space forwarding on 127.0.0.1 only (no
kernel table), sessions deleted at once (``--delete-delay=0``), its ng port and media
ports chosen free, stopped (and waited for) at the end; in the private network namespace
of another process when asked (``netns_pid``), where :func:`own_sessions` reads it; and
:class:`FakeRelay`, a UDP socket standing in for rtpengine where its behaviour is what a
test is about (a lost datagram, a silence, an error)."""
from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from aiosip_ws.core.ng import bdecode, bencode, decode_reply, encode_command
from tests.support import debian_binary, tail
from tests.support.cli import stop_process
from tests.support.net import free_port, netns_socket


def rtpengine_binary() -> str:
    return debian_binary('rtpengine', 'rtpengine-daemon')


def arguments(port: int, low: int, high: int) -> list[str]:
    """rtpengine's options in the tests (docs/calls.rst shows them): the ng port, the media
    ports, loopback only, user space, sessions deleted at once."""
    return ['--config-file=none', '--foreground', '--log-stderr', '--table=-1',
            '--delete-delay=0', '--interface=127.0.0.1', '--listen-ng=127.0.0.1:%d' % port,
            '--port-min=%d' % low, '--port-max=%d' % high]


def _ask(port: int, command: dict, netns_pid: int | None, timeout: float = 0.2) -> dict:
    """One ng command to rtpengine on 127.0.0.1:``port`` (of ``netns_pid``'s network)."""
    if netns_pid is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(('127.0.0.1', port))
    else:
        sock = netns_socket(netns_pid, connect=('127.0.0.1', port))
    with sock:
        sock.settimeout(timeout)
        sock.send(encode_command(secrets.token_hex(6), command))   # rtpengine caches by cookie
        return decode_reply(sock.recv(65536))[1]


def _pong(port: int, netns_pid: int | None = None) -> bool:
    try:
        return _ask(port, {'command': 'ping'}, netns_pid).get('result') == 'pong'
    except OSError:
        return False


def own_sessions(url: str, netns_pid: int | None = None) -> int:
    """How many sessions of its own the rtpengine at ``url`` holds now."""
    port = int(url.rsplit(':', 1)[1])
    reply = _ask(port, {'command': 'statistics'}, netns_pid, timeout=2)
    return int(reply['statistics']['currentstatistics']['sessionsown'])


@contextlib.contextmanager
def rtpengine(tmp: Path, *, media_ports: int = 40, netns_pid: int | None = None,
              port: int | None = None) -> Iterator[str]:
    """Run rtpengine (in the network of ``netns_pid`` if given, its ng port ``port`` if
    given); yields its ng URL ``udp://127.0.0.1:PORT``."""
    port = port or free_port(udp=True)
    low = free_port(udp=True)
    log = tmp / 'rtpengine.log'
    prefix = ['nsenter', '--net=/proc/%d/ns/net' % netns_pid, '--'] if netns_pid else []
    with log.open('w') as out:
        process = subprocess.Popen(
            [*prefix, rtpengine_binary(), *arguments(port, low, low + media_ports),
             '--pidfile=%s' % (tmp / 'rtpengine.pid')],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not _pong(port, netns_pid):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError('rtpengine did not start:\n%s' % tail(log.read_text()))
            time.sleep(0.05)
        url = 'udp://127.0.0.1:%d' % port
        RUNNING[url] = process
        yield url
    finally:
        RUNNING.pop('udp://127.0.0.1:%d' % port, None)
        _stop(process)


#: the rtpengines running now, by ng URL (for :func:`stop_rtpengine`)
RUNNING: dict[str, subprocess.Popen[bytes]] = {}


def stop_rtpengine(url: str) -> None:
    """Stop the rtpengine at ``url`` before its context ends (a relay that goes away)."""
    _stop(RUNNING[url])


def _stop(process: subprocess.Popen[bytes]) -> None:
    stop_process(process)


class FakeRelay(asyncio.DatagramProtocol):
    """Answers as ``answer(command)`` says (None: stays silent), after dropping the
    first ``drop`` datagrams; keeps every datagram it got."""

    def __init__(self, answer, drop=0):
        self.answer, self.drop = answer, drop
        self.got: list[bytes] = []

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.got.append(data)
        if len(self.got) <= self.drop:
            return
        cookie, _, body = data.partition(b' ')
        reply = self.answer(bdecode(body))
        if reply is not None:
            self.transport.sendto(cookie + b' ' + bencode(reply), addr)
