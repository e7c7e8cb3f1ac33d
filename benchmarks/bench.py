#!/usr/bin/env python3
"""aiosip-ws benchmark: one run, one machine, one table (run by hand, not a test).

    python benchmarks/bench.py                  # everything, ~5 minutes on 2 cores
    python benchmarks/bench.py --only a,b       # some parts
    python benchmarks/bench.py --profile DIR    # also cProfile serve/callee/client, print where time goes
    python benchmarks/bench.py --json FILE      # also write the raw figures

What it measures (all traffic on 127.0.0.1, every run bounded in count and time):

(a) the ceiling: the MESSAGE pattern over raw ``websockets`` (client -> relay -> callee,
    response callee -> relay -> client: four WebSocket messages per transaction, the
    same sizes as the SIP messages), through a relay that forwards bytes without
    parsing them (responses go back in FIFO order).  Closed loop, C clients x W
    outstanding transactions.
(b) MESSAGE transactions per second from aiosip-ws clients (``aiosip-ws bench``,
    closed loop, same C and W) through ``aiosip-ws serve`` to a registered aiosip-ws
    client answering with the public API (``router.add_route`` + ``dialog.reply``),
    and back.  (b') the same with a callee that answers without an aiosip dialog,
    to separate the cost of serve from the cost of the aiosip callee.
(c) the REGISTER rate ``aiosip-ws bench`` sustains (open loop, 1,000 clients) against
    ``aiosip-ws serve`` and against Kamailio 5.6 with its websocket module (config of
    tests/interop/kamailio, no auth, no message dump); "sustained" = every request
    answered 200, no errors, answered rate >= 97 % of the offered rate, p99 < 50 ms,
    send lag p99 < 10 ms.  Plus the p99 latency at 1,000 clients and 1,000 REGISTER/s.
(d) server RSS per idle registered WebSocket client (raw ``websockets`` clients in two
    helper processes, one REGISTER each, then idle) at 1,000 and 10,000 clients:
    (RSS with N clients - RSS after a warm-up) / N, read from /proc/PID/status.

(f) the cluster, on one redis-server: MESSAGE as in (b') through ``serve --redis`` with
    the callee on the same node, and across two nodes (client -> node 1 -> Redis Pub/Sub
    -> node 2 -> callee, and back), with their latency; the REGISTER rate sustained as in
    (c) by ``serve --workers N --redis`` for N = 1, 2, 4, with the CPU per REGISTER of the
    workers and of Redis.

(h) bridging: MESSAGE as in (b') from WebSocket clients through ``aiosip-ws serve`` to a
    callee registered over UDP (``--listen udp://``: serve's UDP transport and its
    transaction layer), next to the same run's WebSocket callee.
(j) the media relay: calls with a G.711 tone both ways (SIPp's ``rtp_stream``) from a SIPp
    UAC through the SIP server to a SIPp UAS, all plain RTP over UDP, every call anchored
    on one rtpengine-daemon with the same flags: through ``serve --media-relay always``
    and through Kamailio's ``rtpengine_manage()`` (``kamailio-rtpengine.cfg``), in pairs
    (serve, Kamailio, serve, Kamailio...): calls per second, the SIP server's CPU per
    call, the set-up time (INVITE to 200) and rtpengine's own CPU.
(l) routing apps (``--app``): serve's CPU per MESSAGE (the (b') pattern) and per REGISTER
    (at a fixed rate, as (c)'s p99 run) with a no-op app and with
    ``examples/routing/blocklist.py``, against the same without an app, in rounds
    whose order rotates (none, no-op, blocklist; no-op, blocklist, none; ...).
(g) media (the ``[media]`` extra): CPU per concurrent call of the voice bot (``aiosip-ws
    answer --echo --codec PCMU`` through ``aiosip-ws serve``), for 10 and 25 calls from
    one Python caller process (``aiosip_ws.media.call``, a 440 Hz tone each), then more
    until the RTP loss the callers see passes 1 %; against the same number of aiortc
    peer-to-peer echo calls without SIP (SDP handed over on a TCP socket).  Everything
    runs in a private network namespace (``unshare --net``, 127.0.0.2 on its loopback).

Each helper is this same file run with a ``_mode`` argument.  CPU seconds of every
process are read from /proc so the table shows which process was the bottleneck.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import pstats
import queue
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
CLK_TCK = os.sysconf('SC_CLK_TCK')
HOST = '127.0.0.1'

# The SIP messages of a MESSAGE transaction, as aiosip-ws sends them (sizes matter for (a)).
MESSAGE_TEXT = (
    'MESSAGE sip:callee@bench.test SIP/2.0\r\n'
    'Via: SIP/2.0/WS 4k2jd9a8xk1p.invalid;branch=z9hG4bK5f1c2a9e03b7d4c8\r\n'
    'Max-Forwards: 70\r\nFrom: <sip:bench0@bench.test>;tag=8c1d0e5f3a\r\n'
    'To: <sip:callee@bench.test>\r\nCall-ID: 3f9a1c0d7e2b4a6c8e01\r\nCSeq: 17 MESSAGE\r\n'
    'Content-Type: text/plain\r\nContent-Length: 15\r\n\r\naiosip-ws bench')
RESPONSE_TEXT = (
    'SIP/2.0 200 OK\r\n'
    'Via: SIP/2.0/WS 127.0.0.1:40000;branch=z9hG4bK0123456789abcdef\r\n'
    'Via: SIP/2.0/WS 4k2jd9a8xk1p.invalid;branch=z9hG4bK5f1c2a9e03b7d4c8\r\n'
    'From: <sip:bench0@bench.test>;tag=8c1d0e5f3a\r\nTo: <sip:callee@bench.test>;tag=a1b2c3d4\r\n'
    'Call-ID: 3f9a1c0d7e2b4a6c8e01\r\nCSeq: 17 MESSAGE\r\nContent-Length: 0\r\n\r\n')
#: a REGISTER as the (c) clients send it, for the raw echo of part (c)
REGISTER_TEXT = (
    'REGISTER sip:bench.test SIP/2.0\r\n'
    'Via: SIP/2.0/WS 4k2jd9a8xk1p.invalid;branch=z9hG4bK5f1c2a9e03b7d4c8\r\n'
    'Max-Forwards: 70\r\nFrom: <sip:bench0@bench.test>;tag=8c1d0e5f3a\r\n'
    'To: <sip:bench0@bench.test>\r\nCall-ID: 3f9a1c0d7e2b4a6c8e01\r\nCSeq: 17 REGISTER\r\n'
    'Contact: <sip:bench@4k2jd9a8xk1p.invalid;transport=ws>\r\nExpires: 300\r\n'
    'Content-Length: 0\r\n\r\n')


# ============================================================================ helpers: processes
def raise_nofile(limit: int = 65536) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(limit, hard) if hard != resource.RLIM_INFINITY else limit
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 if it is gone)."""
    try:
        fields = Path('/proc/%d/stat' % pid).read_text().rsplit(')', 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of every live process of process group ``pgid`` (Kamailio's children)."""
    total = 0.0
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / 'stat').read_text().rsplit(')', 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def system_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine (all cores) since boot."""
    fields = Path('/proc/stat').read_text().split('\n', 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in Path('/proc/%d/status' % pid).read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
    raise RuntimeError('no VmRSS for pid %d' % pid)


class Helper:
    """A child process (this file in a _mode, or aiosip-ws serve) printing 'READY ...' first."""

    def __init__(self, args: list[str], *, ready: str = 'READY', timeout: float = 60,
                 log: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._log_file = open(log, 'wb') if log else subprocess.DEVNULL  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log_file,
                                     stdin=subprocess.PIPE, text=True, cwd=REPO,
                                     env=dict(os.environ, PYTHONUNBUFFERED='1', **(env or {})),
                                     preexec_fn=raise_nofile)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ready_line = self._wait_line(ready, timeout)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _wait_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            if prefix in line:
                return line.strip()
        self.stop()
        raise RuntimeError('%s did not print %r in %s s (log: %s)' % (
            ' '.join(self.proc.args[:6]), prefix, timeout, self.log))

    def wait_line(self, prefix: str, timeout: float = 120) -> str:
        return self._wait_line(prefix, timeout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log_file is not subprocess.DEVNULL:
            self._log_file.close()
        return self.proc.returncode


def free_port(udp: bool = False) -> int:
    import socket
    with socket.socket(type=socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def kamailio(tmp: Path, *, shm_mb: int = 512, tcp_children: int = 2,
             timeout: float = 20) -> Iterator[tuple[str, int, str]]:
    """Kamailio with benchmarks/kamailio-bench.cfg in its own session: (ws URL, pgid, version)."""
    binary = shutil.which('kamailio') or '/usr/sbin/kamailio'
    if not os.access(binary, os.X_OK):
        raise RuntimeError('kamailio is not installed')
    version_text = subprocess.run([binary, '-v'], capture_output=True, text=True,
                                  timeout=10).stdout
    match = re.search(r'kamailio (\S+)', version_text)
    version = match.group(1) if match else '?'
    port = free_port()
    work = tmp / 'kamailio'
    (work / 'run').mkdir(parents=True, exist_ok=True)
    log = open(work / 'kamailio.log', 'wb')  # noqa: SIM115 - open while Kamailio runs, closed below
    proc = subprocess.Popen(
        [binary, '-DD', '-E', '-f', str(HERE / 'kamailio-bench.cfg'), '-Y', str(work / 'run'),
         '-P', str(work / 'kamailio.pid'), '-m', str(shm_mb), '-M', '16', '-w', str(work),
         '-A', 'WS_PORT=%d' % port, '-A', 'TCP_CHILDREN=%d' % tcp_children],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(work),
        start_new_session=True, preexec_fn=raise_nofile)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError('kamailio exited: %s' % (work / 'kamailio.log').read_text()[-2000:])
            if _ws_ok(port):
                break
            if time.monotonic() > deadline:
                raise RuntimeError('kamailio did not accept WebSocket connections')
            time.sleep(0.2)
        yield 'ws://%s:%d/' % (HOST, port), proc.pid, version
    finally:
        _stop_session(proc)
        log.close()


def sipp() -> str:
    binary = shutil.which('sipp')
    if binary is None:
        raise RuntimeError('sipp is not installed (Debian package sip-tester)')
    return binary


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _udp_bound(port: int) -> bool:
    """Whether something on this machine listens on UDP ``port`` (from /proc/net/udp)."""
    needle = ':%04X ' % port
    return any(needle in line.split()[1] + ' ' for line in
               Path('/proc/net/udp').read_text().splitlines()[1:] if line.split())


def _until_udp_bound(proc: subprocess.Popen[bytes], port: int, timeout: float, what: str,
                     log: Path) -> None:
    """Wait until ``proc`` (``what``) listens on UDP ``port``; RuntimeError if it exits or
    takes longer than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not _udp_bound(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError('%s did not start (log: %s)' % (what, log))
        time.sleep(0.1)


@contextlib.contextmanager
def rtpengine_daemon(tmp: Path, media_ports: int = 2000) -> Iterator[tuple[int, int]]:
    """Debian's rtpengine on 127.0.0.1, user-space forwarding: (its ng port, its pid)."""
    binary = shutil.which('rtpengine') or '/usr/bin/rtpengine'
    if not os.access(binary, os.X_OK):
        raise RuntimeError('rtpengine is not installed (Debian package rtpengine-daemon)')
    port, low = free_port(udp=True), 30000
    log = open(tmp / 'rtpengine.log', 'wb')  # noqa: SIM115 - open while rtpengine runs
    proc = subprocess.Popen(
        [binary, '--config-file=none', '--foreground', '--log-stderr', '--log-level=4',
         '--table=-1', '--delete-delay=0', '--interface=%s' % HOST,
         '--listen-ng=%s:%d' % (HOST, port), '--port-min=%d' % low,
         '--port-max=%d' % (low + media_ports), '--pidfile=%s' % (tmp / 'rtpengine.pid')],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        _until_udp_bound(proc, port, 10, 'rtpengine', tmp / 'rtpengine.log')
        yield port, proc.pid
    finally:
        _stop_process(proc)
        log.close()


@contextlib.contextmanager
def kamailio_udp(tmp: Path, port: int, ng_port: int, uas_port: int, *,
                 children: int = 2) -> Iterator[int]:
    """Kamailio with benchmarks/kamailio-rtpengine.cfg in its own session: its pgid."""
    binary = shutil.which('kamailio') or '/usr/sbin/kamailio'
    work = tmp / 'kamailio-j'
    (work / 'run').mkdir(parents=True, exist_ok=True)
    log = open(work / 'kamailio.log', 'wb')  # noqa: SIM115 - open while Kamailio runs
    proc = subprocess.Popen(
        [binary, '-DD', '-E', '-f', str(HERE / 'kamailio-rtpengine.cfg'), '-Y',
         str(work / 'run'), '-P', str(work / 'kamailio.pid'), '-m', '128', '-M', '16', '-w',
         str(work), '-A', 'SIP_PORT=%d' % port,
         '-A', 'NG_SOCKET="udp:%s:%d"' % (HOST, ng_port),
         '-A', 'UAS="sip:%s:%d"' % (HOST, uas_port), '-A', 'CHILDREN=%d' % children],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(work),
        start_new_session=True)
    try:
        _until_udp_bound(proc, port, 20, 'kamailio', work / 'kamailio.log')
        time.sleep(0.5)                                   # its children take the socket
        yield proc.pid
    finally:
        _stop_session(proc)
        log.close()


def write_ulaw_tone(path: Path, frequency: float, seconds: float, rate: int = 8000) -> Path:
    """A G.711 mu-law WAV of a sine tone (what SIPp's rtp_stream plays as PCMU)."""
    import math
    import struct

    def ulaw(sample: int) -> int:                      # ITU-T G.711, 16-bit linear in
        sign = 0x80 if sample < 0 else 0
        sample = min(abs(sample), 32635) + 0x84
        exponent = max(0, sample.bit_length() - 8)
        mantissa = (sample >> (exponent + 3)) & 0x0F
        return ~(sign | (exponent << 4) | mantissa) & 0xFF
    data = bytes(ulaw(int(16000 * math.sin(2 * math.pi * frequency * i / rate)))
                 for i in range(int(rate * seconds)))
    header = (b'RIFF' + struct.pack('<I', 38 + 12 + len(data)) + b'WAVE'
              + b'fmt ' + struct.pack('<IHHIIHHH', 18, 7, 1, rate, rate, 1, 8, 0)
              + b'fact' + struct.pack('<II', 4, len(data))
              + b'data' + struct.pack('<I', len(data)))
    path.write_bytes(header + data)
    return path


def _rtt_ms(directory: Path) -> list[float]:
    """The set-up times SIPp's -trace_rtt wrote (ms), from every *_rtt.csv there."""
    out = []
    for csv in directory.glob('*_rtt.csv'):
        for line in csv.read_text().splitlines()[1:]:
            fields = line.split(';')
            with contextlib.suppress(ValueError, IndexError):
                out.append(float(fields[1]))        # Date_ms;response_time_ms;rtd_no
    return out


def _pct(values: list[float], q: float) -> float | None:
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def _stop_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to a server started in a session of its own, then SIGKILL to what is left
    of its process group (Kamailio's children)."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def _ws_ok(port: int) -> bool:
    """True once a WebSocket handshake offering `sip` gets 101 (then closed cleanly)."""
    async def probe() -> bool:
        from websockets.asyncio.client import connect
        try:
            async with connect('ws://%s:%d/' % (HOST, port), subprotocols=['sip'], proxy=None,
                               open_timeout=2):
                return True
        except (OSError, asyncio.TimeoutError, Exception):  # noqa: BLE001 - not up yet
            return False
    return asyncio.run(probe())


def serve(tmp: Path, name: str, *extra: str, profile: Path | None = None) -> Helper:
    args = [PY]
    if profile is not None:
        args += ['-m', 'cProfile', '-o', str(profile)]
    args += ['-m', 'aiosip_ws', 'serve', '--listen', 'ws://%s:0/' % HOST,
             '--max-handshakes-per-second', '0', '--log-level',
             'WARNING', *extra]
    return Helper(args, ready='listening on', log=tmp / ('%s.log' % name))


def url_of(helper: Helper) -> str:
    """The ws:// URL a server helper printed on its first line."""
    return helper.ready_line.split('listening on', 1)[1].split()[0] if 'listening on' in \
        helper.ready_line else helper.ready_line.split()[1]


def run_cli_bench(url: str, *args: str, tmp: Path, name: str, profile: Path | None = None,
                  timeout: float = 300) -> tuple[dict[str, Any], float]:
    """``aiosip-ws bench ... --json`` in a child process: (report, its CPU seconds)."""
    cmd = [PY]
    if profile is not None:
        cmd += ['-m', 'cProfile', '-o', str(profile)]
    cmd += ['-m', 'aiosip_ws', 'bench', url, '--json', '--no-progress', *args]
    out_path, err_path = tmp / ('%s.json' % name), tmp / ('%s.err' % name)
    with open(out_path, 'wb') as out, open(err_path, 'wb') as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, preexec_fn=raise_nofile)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = out_path.read_text()
    if not text.strip():
        raise RuntimeError('aiosip-ws bench printed nothing: %s' % err_path.read_text()[-2000:])
    if profile is not None:      # cProfile prints nothing with -o, but be safe
        text = text[text.index('{'):]
    return json.loads(text), usage.ru_utime + usage.ru_stime


class CpuWatch:
    """Samples the CPU seconds of some processes (or process groups) every 0.25 s.

    :meth:`stop` returns, per process, the busiest 1-second window as a fraction of
    one core ("peak": the steady state of a run, without start-up and set-up) and
    the average over the whole watch.
    """

    def __init__(self, pids: dict[str, int], groups: dict[str, int] | None = None,
                 interval: float = 0.25) -> None:
        self.pids, self.groups, self.interval = pids, groups or {}, interval
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> dict[str, float]:
        out = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        out.update({name: group_cpu_seconds(pgid) for name, pgid in self.groups.items()})
        out['machine'] = system_cpu_seconds()
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self._read()))
            self._stop.wait(self.interval)

    def start(self) -> CpuWatch:
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        """{name: peak fraction of a core, name + ' avg': average fraction}."""
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic(), self._read()))
        out: dict[str, float] = {}
        first_t, first = self.samples[0]
        last_t, last = self.samples[-1]
        per = max(1, int(round(1.0 / self.interval)))
        for name in first:
            peak = 0.0
            for i in range(len(self.samples) - per):
                (t0, a), (t1, b) = self.samples[i], self.samples[i + per]
                if t1 > t0 and name in a and name in b:
                    peak = max(peak, (b[name] - a[name]) / (t1 - t0))
            out[name] = peak
            out[name + ' avg'] = (last[name] - first[name]) / max(1e-6, last_t - first_t)
        return out


def others(cpu: dict[str, float]) -> float:
    """CPU (fraction of a core) used by processes not ours during a measurement, at least.

    Busiest-second peaks of our processes can come from different seconds than the
    machine's peak, so this underestimates: a positive value means real interference.
    """
    ours = sum(v for k, v in cpu.items() if k != 'machine' and not k.endswith(' avg'))
    return max(0.0, cpu.get('machine', 0.0) - ours)


DISTURBED = 0.25     # a measurement with more foreign CPU than this is repeated once


def us_per_tx(cpu: dict[str, float], rate: float) -> str:
    """Peak CPU fraction / rate, per process: microseconds of CPU per transaction."""
    if not rate:
        return '-'
    return ', '.join('%s %.0f us' % (name, value * 1e6 / rate) for name, value in cpu.items()
                     if not name.endswith(' avg') and name != 'machine')


def cpu_text(cpu: dict[str, float]) -> str:
    return ', '.join('%s %.0f%%' % (name, value * 100) for name, value in cpu.items()
                     if not name.endswith(' avg'))


# ---------------------------------------------------------------------------- (g) media
MEDIA_STEPS = (10, 25, 40, 60, 80, 100, 130, 160)


async def _rtp_totals(pcs: list[Any]) -> tuple[int, int]:
    received = lost = 0
    for pc in pcs:
        for stats in (await pc.getStats()).values():
            if stats.type == 'inbound-rtp':
                received += stats.packetsReceived or 0
                lost += max(0, stats.packetsLost or 0)
    return received, lost


async def mode_media_callers(kind: str, target: str, count: int, hold: float) -> None:
    """``count`` concurrent PCMU calls, each playing a tone, to the SIP bot at ``target``
    (kind ``sip``) or to the peer-to-peer echo at ``target`` (``p2p``, HOST:PORT); prints
    READY when all are up, START/STOP around the measured ``hold`` seconds, then RESULT."""
    from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription

    from aiosip_ws import Application, media
    pcs: list[Any] = []
    calls: list[Any] = []
    app = Application() if kind == 'sip' else None
    writer = None
    try:
        if kind == 'sip':
            options = media.MediaOptions(tone=440, codecs=('PCMU',))
            for i in range(count):
                call = await media.call(app, 'sip:caller%d@bench.test' % i, 'sip:bot@bench.test',
                                        remote_addr=target, options=options, timeout=30)
                calls.append(call)
                pcs.append(call.pc)
        else:
            host, port = target.rsplit(':', 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            pcmu = [c for c in RTCRtpSender.getCapabilities('audio').codecs
                    if c.mimeType == 'audio/PCMU']
            for _ in range(count):
                pc = RTCPeerConnection()
                transceiver = pc.addTransceiver(media.ToneTrack(440, rate=8000), direction='sendrecv')
                transceiver.setCodecPreferences(pcmu)
                await pc.setLocalDescription(await pc.createOffer())
                writer.write(json.dumps(pc.localDescription.sdp).encode() + b'\n')
                answer = json.loads(await asyncio.wait_for(reader.readline(), 30))
                await pc.setRemoteDescription(RTCSessionDescription(answer, 'answer'))
                pcs.append(pc)
        print('READY %d calls' % count, flush=True)
        await asyncio.sleep(2.0)                            # ICE, DTLS, jitter buffers settle
        received0, lost0 = await _rtp_totals(pcs)
        print('START', flush=True)
        await asyncio.sleep(hold)
        print('STOP', flush=True)
        received1, lost1 = await _rtp_totals(pcs)
        got, lost = received1 - received0, lost1 - lost0
        expected = count * hold * 50                        # 20 ms packets
        # lost: gaps in the RTP sequence; shortfall: packets that did not arrive in real time
        # (a sender or echo falling behind); either is media a listener does not hear
        print('RESULT ' + json.dumps({'received': got, 'lost': lost, 'expected': expected,
                                      'lost_fraction': lost / max(1, got + lost),
                                      'shortfall': max(0.0, 1 - got / expected),
                                      'loss': max(lost / max(1, got + lost),
                                                  1 - got / expected if expected else 0.0)}),
              flush=True)
    finally:
        for call in calls:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call.hangup(), 5)
        if kind != 'sip':
            for pc in pcs:
                await pc.close()
        if writer is not None:
            writer.close()
        if app is not None:
            await app.close()


async def mode_p2p_echo() -> None:
    """Peer-to-peer echo calls without SIP: one offer per line (JSON), one answer back;
    each peer connection sends back what it hears."""
    from aiortc import RTCPeerConnection, RTCSessionDescription
    pcs: list[Any] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            pc = RTCPeerConnection()
            pcs.append(pc)
            await pc.setRemoteDescription(RTCSessionDescription(json.loads(line), 'offer'))
            transceiver = pc.getTransceivers()[0]
            transceiver.direction = 'sendrecv'
            transceiver.sender.replaceTrack(transceiver.receiver.track)
            await pc.setLocalDescription(await pc.createAnswer())
            writer.write(json.dumps(pc.localDescription.sdp).encode() + b'\n')
        for pc in pcs:
            await pc.close()
        pcs.clear()

    server = await asyncio.start_server(handle, HOST, 0)
    print('READY %s:%d' % (HOST, server.sockets[0].getsockname()[1]), flush=True)
    await _until_stdin_closes()
    server.close()
    for pc in pcs:
        await pc.close()


def media_step(tmp: Path, kind: str, target: str, count: int, server_pid: int,
               hold: float = 8.0) -> dict[str, Any]:
    """One measurement of (g): ``count`` calls; CPU of the answering process and of the
    callers over the measured window, and the RTP loss."""
    callers = Helper([PY, __file__, '_media-callers', kind, target, str(count), str(hold)],
                     timeout=60 + count, log=tmp / ('media-callers-%s-%d.log' % (kind, count)))
    try:
        callers.wait_line('START', 30)
        t0, a0, c0 = time.monotonic(), cpu_seconds(server_pid), cpu_seconds(callers.pid)
        callers.wait_line('STOP', hold + 30)
        t1, a1, c1 = time.monotonic(), cpu_seconds(server_pid), cpu_seconds(callers.pid)
        result = json.loads(callers.wait_line('RESULT', 30).split(' ', 1)[1])
    finally:
        callers.stop(signal.SIGTERM, timeout=60)
    span = max(1e-6, t1 - t0)
    result.update(calls=count, answerer_cpu=(a1 - a0) / span, callers_cpu=(c1 - c0) / span)
    result['answerer_cpu_per_call'] = result['answerer_cpu'] / count
    return result


def mode_media_part(hold: float, max_calls: int) -> None:
    """(g), run inside a private network namespace: serve, the bot, the steps; then the
    peer-to-peer baseline for the same counts.  Prints one RESULT line (JSON)."""
    tmp = Path(tempfile.mkdtemp(prefix='aiosip-ws-media-'))
    out: dict[str, Any] = {'sip': [], 'p2p': []}
    server = serve(tmp, 'media-serve')
    bot = Helper([PY, '-m', 'aiosip_ws', 'answer', url_of(server), '--aor', 'sip:bot@bench.test',
                  '--echo', '--codec', 'PCMU', '--json'], ready='registered',
                 log=tmp / 'media-bot.log')
    try:
        for count in MEDIA_STEPS:
            if count > max_calls:
                break
            step = media_step(tmp, 'sip', url_of(server), count, bot.pid, hold)
            out['sip'].append(step)
            print('    sip %d calls: bot %.0f %% of a core (%.2f %% per call), callers %.0f %%, '
                  'loss %.2f %%' % (count, step['answerer_cpu'] * 100,
                                    step['answerer_cpu_per_call'] * 100,
                                    step['callers_cpu'] * 100, step['loss'] * 100),
                  file=sys.stderr, flush=True)
            if step['loss'] > 0.01 and count >= 25:
                break
    finally:
        bot.stop()
        server.stop()
    echo = Helper([PY, __file__, '_p2p-echo'], log=tmp / 'p2p-echo.log')
    try:
        for step in out['sip']:
            count = step['calls']
            base = media_step(tmp, 'p2p', echo.ready_line.split()[1], count, echo.pid, hold)
            out['p2p'].append(base)
            print('    p2p %d calls: echo %.0f %% of a core (%.2f %% per call), loss %.2f %%' % (
                count, base['answerer_cpu'] * 100, base['answerer_cpu_per_call'] * 100,
                base['loss'] * 100), file=sys.stderr, flush=True)
    finally:
        echo.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print('RESULT ' + json.dumps(out), flush=True)


# ============================================================================ helper modes
async def _serve_raw(handler: Any) -> None:
    """A raw websockets server on HOST (no SIP, no keep-alive) until stdin closes."""
    from websockets.asyncio.server import serve as ws_serve
    async with ws_serve(handler, HOST, 0, subprotocols=['sip'], compression=None,
                        ping_interval=None, max_queue=None) as server:
        port = server.sockets[0].getsockname()[1]
        print('READY ws://%s:%d/' % (HOST, port), flush=True)
        await _until_stdin_closes()


async def mode_raw_relay() -> None:
    """Forward bytes between callers and the callee (path /callee) without parsing them."""
    callees: list[Any] = []
    waiting: dict[Any, collections.deque[Any]] = {}

    async def handler(ws: Any) -> None:
        if ws.request.path.startswith('/callee'):
            callees.append(ws)
            fifo: collections.deque[Any] = collections.deque()
            waiting[ws] = fifo
            async for data in ws:                     # responses, in request order
                caller = fifo.popleft()
                await caller.send(data)
            return
        turn = 0
        async for data in ws:
            callee = callees[turn % len(callees)]
            turn += 1
            waiting[callee].append(ws)
            await callee.send(data)

    await _serve_raw(handler)


_ANSWERED = ('Via:', 'From', 'To: ', 'Call', 'CSeq')


def raw_answer(request: str) -> str:
    """The 200 to ``request`` made by string splits, with no SIP parser: its Via, From,
    To (with a tag), Call-ID and CSeq lines, as the clients of (a) need to match it."""
    lines = request.partition('\r\n\r\n')[0].split('\r\n')
    kept = [line + ';tag=raw' if line.startswith('To: ') else line
            for line in lines[1:] if line[:4] in _ANSWERED]
    return 'SIP/2.0 200 OK\r\n' + '\r\n'.join(kept) + '\r\nContent-Length: 0\r\n\r\n'


async def mode_raw_callee(url: str) -> None:
    from websockets.asyncio.client import connect
    async with connect(url.rstrip('/') + '/callee', subprotocols=['sip'], compression=None,
                       ping_interval=None, max_queue=None) as ws:
        print('READY', flush=True)
        async for data in ws:                  # until the relay goes away (or SIGTERM)
            await ws.send(raw_answer(data if isinstance(data, str) else data.decode()))


async def mode_raw_echo() -> None:
    """Send every WebSocket message back as it came: the floor of a server answering one
    message with one message (part (c)'s yardstick for serve's CPU per REGISTER)."""

    async def handler(ws: Any) -> None:
        async for data in ws:
            await ws.send(data)

    await _serve_raw(handler)


async def mode_raw_clients(url: str, clients: int, window: int, duration: float,
                           payload: str = MESSAGE_TEXT) -> None:
    """Closed loop over raw websockets: ``window`` outstanding MESSAGEs (or ``payload``)
    per connection."""
    from websockets.asyncio.client import connect
    conns = [await connect(url, subprotocols=['sip'], compression=None, ping_interval=None,
                           max_queue=None) for _ in range(clients)]
    done = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + duration
    cpu_started = time.process_time()

    async def run(ws: Any) -> None:
        nonlocal done
        for _ in range(window):
            await ws.send(payload)
        async for _ in ws:
            done += 1
            if loop.time() >= end:
                return
            await ws.send(payload)

    await asyncio.gather(*(run(ws) for ws in conns))
    elapsed = loop.time() - start
    cpu = time.process_time() - cpu_started
    for ws in conns:
        await ws.close()
    print('READY %s' % json.dumps({'transactions': done, 'elapsed': elapsed,
                                   'rate': done / elapsed, 'cpu': cpu / elapsed}), flush=True)


async def mode_callee(url: str, aor: str, fast: bool) -> None:
    """A registered aiosip-ws client answering MESSAGE 200: through the aiosip route and
    ``dialog.reply`` (the public API), or (``fast``) straight from the codec."""
    sys.path.insert(0, str(REPO))
    import aiosip_ws
    from aiosip_ws.core import codec
    count = 0

    class FastApp(aiosip_ws.Application):
        def message_received(self, conn: Any, message: Any) -> None:
            nonlocal count
            if message.is_request and message.method == 'MESSAGE':
                count += 1
                conn.send(codec.make_response(message, 200, to_tag='fa57'))
                return
            super().message_received(conn, message)

    app = FastApp() if fast else aiosip_ws.Application()

    async def on_message(dialog: Any, request: Any) -> None:
        nonlocal count
        count += 1
        dialog.reply(request, 200)

    app.router.add_route('MESSAGE', on_message)
    registration = await app.start_dialog(aor, aor, remote_addr=url)
    response = await asyncio.wait_for(registration.register(expires=3600), 10)
    if response.status_code != 200:
        raise SystemExit('callee registration failed: %s' % response.status_code)
    print('READY', flush=True)
    await _until_stdin_closes()
    print('COUNT %d' % count, flush=True)
    await app.close()


async def mode_udp_callee(server: str, aor: str) -> None:
    """A callee registered over UDP with serve at ``server`` (HOST:PORT), answering each
    MESSAGE 200 straight from the codec."""
    sys.path.insert(0, str(REPO))
    from aiosip_ws.core import codec
    host, port = server.rsplit(':', 1)
    loop = asyncio.get_running_loop()
    registered: asyncio.Future[int] = loop.create_future()
    count = 0

    class Callee(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            nonlocal count
            message = codec.parse(data)
            if message.is_request and message.method == 'MESSAGE':
                count += 1
                self.transport.sendto(codec.serialize(codec.make_response(message, 200,
                                                                          to_tag='fa57')), addr)
            elif not message.is_request and not registered.done():
                registered.set_result(message.status or 0)

    transport, _ = await loop.create_datagram_endpoint(Callee, local_addr=(HOST, 0))
    local = transport.get_extra_info('sockname')[1]
    user = aor.split(':', 1)[1].split('@')[0]
    transport.sendto(('REGISTER sip:bench.test SIP/2.0\r\nVia: SIP/2.0/UDP %s:%d;branch=z9hG4bKu1;'
                      'rport\r\nMax-Forwards: 70\r\nFrom: <%s>;tag=u1\r\nTo: <%s>\r\n'
                      'Call-ID: udp-callee\r\nCSeq: 1 REGISTER\r\nContact: <sip:%s@%s:%d>\r\n'
                      'Expires: 3600\r\nContent-Length: 0\r\n\r\n'
                      % (HOST, local, aor, aor, user, HOST, local)).encode(), (host, int(port)))
    status = await asyncio.wait_for(registered, 10)
    if status != 200:
        raise SystemExit('callee registration over UDP failed: %d' % status)
    print('READY', flush=True)
    await _until_stdin_closes()
    print('COUNT %d' % count, flush=True)
    transport.close()


class LeanRelay:
    """Registrar + stateful relay on aiosip_ws.transport.listener/websocket and
    aiosip_ws.core.codec alone (no aiosip objects, no dialogs): what serve does for
    REGISTER/OPTIONS/MESSAGE, with the same Registrar and codec calls.  It measures the
    floor of codec + transport."""

    def __init__(self) -> None:
        from aiosip_ws.serve.registrar import Registrar
        self.registrar = Registrar()
        self.pending: dict[str, tuple[Any, Any]] = {}

    def connection_made(self, conn: Any) -> None:
        pass

    def connection_lost(self, conn: Any, exc: BaseException | None) -> None:
        self.registrar.remove_connection(conn)
        for branch, (origin, _) in list(self.pending.items()):
            if origin is conn:
                del self.pending[branch]

    def message_received(self, conn: Any, msg: Any) -> None:
        from aiosip_ws.core import codec
        from aiosip_ws.core.sipuri import NameAddr
        if not msg.is_request:
            branch = msg.top_branch
            entry = self.pending.pop(branch, None)
            if entry is not None and msg.status >= 200:
                origin, _ = entry
                vias = [i for i, (name, _) in enumerate(msg.headers) if name == 'Via']
                del msg.headers[vias[0]]
                origin.send(msg)
            return
        tag = secrets.token_hex(4)
        if msg.method == 'REGISTER':
            result = self.registrar.register(msg, conn)
            conn.send(codec.make_response(msg, result.status, result.reason, to_tag=tag,
                                          headers=result.headers))
            return
        target = NameAddr.parse(msg.uri).uri
        if target.user is None:
            conn.send(codec.make_response(msg, 200, to_tag=tag))
            return
        bindings = self.registrar.lookup(target.aor)
        if not bindings:
            conn.send(codec.make_response(msg, 404, to_tag=tag))
            return
        binding = bindings[0]
        out = binding.connection
        branch = 'z9hG4bK' + secrets.token_hex(8)
        forwarded = codec.SIPMessage(method=msg.method, uri=str(binding.uri),
                                     headers=[('Via', str(codec.Via(out.via_transport,
                                                                    out.via_host, None,
                                                                    (('branch', branch),))))]
                                     + list(msg.headers), body=msg.body)
        forwarded.set('Max-Forwards', str(int(msg.get('Max-Forwards') or '70') - 1))
        self.pending[branch] = (conn, msg)
        out.send(forwarded)


async def mode_lean_relay() -> None:
    from aiosip_ws.options import ServerOptions
    from aiosip_ws.transport.listener import listen
    listener = await listen('ws://%s:0/' % HOST, LeanRelay(), ServerOptions())
    print('READY %s' % listener.bound_url, flush=True)
    await _until_stdin_closes()
    await listener.close()


async def mode_idle_clients(url: str, count: int, offset: int, source: str,
                            concurrency: int) -> None:
    """``count`` raw websockets clients, each REGISTERed once, then idle until stdin closes."""
    from websockets.asyncio.client import connect
    raise_nofile()
    conns: list[Any] = []
    semaphore = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        async with semaphore:
            try:
                ws = await connect(url, subprotocols=['sip'], compression=None,
                                   ping_interval=None, open_timeout=30, proxy=None,
                                   local_addr=(source, 0))
                host = secrets.token_hex(6) + '.invalid'
                await ws.send(
                    'REGISTER sip:bench.test SIP/2.0\r\n'
                    'Via: SIP/2.0/WS %s;branch=z9hG4bK%s\r\nMax-Forwards: 70\r\n'
                    'From: <sip:idle%d@bench.test>;tag=%s\r\nTo: <sip:idle%d@bench.test>\r\n'
                    'Call-ID: %s\r\nCSeq: 1 REGISTER\r\n'
                    'Contact: <sip:idle%d@%s;transport=ws>\r\nExpires: 3600\r\n'
                    'Content-Length: 0\r\n\r\n' % (host, secrets.token_hex(8), i,
                                                   secrets.token_hex(4), i, secrets.token_hex(8),
                                                   i, host))
                answer = await asyncio.wait_for(ws.recv(), 30)
                if not answer.startswith('SIP/2.0 200'):
                    raise RuntimeError(answer.split('\r\n', 1)[0])
                conns.append(ws)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                failures += 1
                if failures < 5:
                    print('client %d failed: %r' % (i, exc), file=sys.stderr, flush=True)

    await asyncio.gather(*(one(offset + i) for i in range(count)))
    print('READY %d %d' % (len(conns), failures), flush=True)
    await _until_stdin_closes()
    for ws in conns:
        ws.transport.abort()      # no closing handshake: fast teardown


async def _until_stdin_closes() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


# ============================================================================ measurements
@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    results: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, Path] = field(default_factory=dict)

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def wait_for_quiet(self, limit: float = 0.25, patience: float = 90.0) -> None:
        """Wait (bounded) until other processes use less than ``limit`` of a core."""
        deadline = time.monotonic() + patience
        said = False
        while True:
            before = system_cpu_seconds()
            time.sleep(1.0)
            busy = system_cpu_seconds() - before
            if busy < limit or time.monotonic() > deadline:
                break
            if not said:
                self.log('    (the machine is busy: %.0f %% of a core used by other processes; '
                         'waiting up to %.0f s)' % (busy * 100, patience))
                said = True
        self.results.setdefault('background_cpu', []).append(round(busy, 2))

    # -- (a) ---------------------------------------------------------------------
    def part_a(self) -> None:
        for attempt in (1, 2):
            self._part_a()
            foreign = others(self.results['a']['cpu'])
            if foreign <= DISTURBED or attempt == 2:
                break
            self.log('    disturbed (%.0f %% of a core used by other processes): again' % (foreign * 100))

    def _part_a(self) -> None:
        a = self.args
        self.wait_for_quiet()
        self.log('(a) raw websockets relay, %d clients x %d outstanding, %g s ...'
                 % (a.clients, a.window, a.duration))
        relay = Helper([PY, __file__, '_raw-relay'], log=self.tmp / 'raw-relay.log')
        url = relay.ready_line.split()[1]
        callee = Helper([PY, __file__, '_raw-callee', url], log=self.tmp / 'raw-callee.log')
        try:
            # the clients of (b), (b') and (b-K): the ratios charge no client cost to a server
            watch = CpuWatch({'relay': relay.pid, 'callee': callee.pid}).start()
            report, _ = run_cli_bench(
                url, '--scenario', 'message', '--to', 'sip:callee@bench.test', '--rate', '0',
                '--window', str(a.window), '--clients', str(a.clients), '--duration',
                str(a.duration), '--timeout', '10', tmp=self.tmp, name='bench-a')
            cpu = watch.stop()
            # the same relay and callee under raw websockets clients, for comparison
            raw = Helper([PY, __file__, '_raw-clients', url, str(a.clients), str(a.window),
                          str(a.duration)], timeout=a.duration + 60,
                         log=self.tmp / 'raw-clients.log')
            raw_report = json.loads(raw.ready_line.split(' ', 1)[1])
            raw.stop()
        finally:
            callee.stop()
            relay.stop()
        cpu['clients'] = (report['generator_cpu_pct'] or 0) / 100.0
        rate = report['achieved_rate'] or 0.0
        self.results['a'] = {'rate': rate, 'answered': report['answered'],
                             'errors': report['errors'], 'cpu': cpu,
                             'raw_clients_rate': raw_report['rate']}
        self.log('    %.0f tx/s, errors %s (peak CPU: %s); with raw websockets clients %.0f '
                 'tx/s' % (rate, report['errors'] or 0, cpu_text(cpu), raw_report['rate']))

    # -- (b) ---------------------------------------------------------------------
    def part_b(self, fast: bool, profile: bool = False, key: str | None = None,
               lean: bool = False, via_kamailio: bool = False,
               extra: tuple[str, ...] = ()) -> dict[str, Any]:
        for attempt in (1, 2):
            result = self._part_b(fast, profile, key, lean, via_kamailio, extra)
            foreign = others(result['cpu'])
            if profile or foreign <= DISTURBED or attempt == 2:
                return result
            self.log('    disturbed (%.0f %% of a core used by other processes): again' % (foreign * 100))
        return result

    def _part_b(self, fast: bool, profile: bool = False, key: str | None = None,
                lean: bool = False, via_kamailio: bool = False,
                extra: tuple[str, ...] = ()) -> dict[str, Any]:
        if via_kamailio:
            with kamailio(self.tmp) as (url, pgid, _):
                return self._part_b_on(url, None, {'kamailio': pgid}, fast, False, key or 'b-K')
        key = key or ("b''" if lean else "b'" if fast else 'b')
        prof = (lambda name: self.tmp / ('%s-%s.prof' % (key.replace("'", 'p'), name))) \
            if profile else (lambda name: None)
        if lean:
            server = Helper([PY, __file__, '_lean-relay'], log=self.tmp / 'lean-relay.log')
        else:
            server = serve(self.tmp, 'serve-%s' % key, *extra, profile=prof('serve'))
        try:
            return self._part_b_on(url_of(server), server, {}, fast, profile, key, lean=lean)
        finally:
            server.stop()

    def _part_b_on(self, url: str, server: Helper | None, groups: dict[str, int], fast: bool,
                   profile: bool, key: str, lean: bool = False) -> dict[str, Any]:
        """The MESSAGE closed loop against the server at ``url`` (a Helper, or process
        groups such as Kamailio's): its rate, latency and everyone's CPU."""
        a = self.args
        self.wait_for_quiet()
        name = 'Kamailio' if groups else 'the lean relay' if lean else 'serve'
        self.log('(%s) aiosip-ws MESSAGE via %s to a %s callee, %d clients x %d outstanding, '
                 '%g s ...' % (key, name, 'fast' if fast else 'dialog-API', a.clients,
                               a.window, a.duration))
        prof = (lambda name: self.tmp / ('%s-%s.prof' % (key.replace("'", 'p'), name))) \
            if profile else (lambda name: None)
        aor = 'sip:callee@bench.test'
        callee_cmd = [PY]
        if prof('callee') is not None:
            callee_cmd += ['-m', 'cProfile', '-o', str(prof('callee'))]
        callee_cmd += [__file__, '_callee', url, aor] + (['--fast'] if fast else [])
        callee = Helper(callee_cmd, log=self.tmp / ('callee-%s.log' % key))
        try:
            pids = {'callee': callee.pid}
            if server is not None:
                pids['lean relay' if lean else 'serve'] = server.pid
            watch = CpuWatch(pids, groups).start()
            report, client_cpu = run_cli_bench(
                url, '--scenario', 'message', '--to', aor, '--rate', '0', '--window',
                str(a.window), '--clients', str(a.clients), '--duration', str(a.duration),
                '--timeout', '10', tmp=self.tmp, name='bench-%s' % key, profile=prof('client'))
            cpu = watch.stop()
            assert callee.proc.stdin is not None
            callee.proc.stdin.close()
            callee.wait_line('COUNT', 30)
            with contextlib.suppress(subprocess.TimeoutExpired):
                callee.proc.wait(30)             # let cProfile write its file
        finally:
            callee.stop()
        if profile:
            for name in ('serve', 'callee', 'client'):
                self.profiles['%s %s' % (key, name)] = prof(name)
        rate = report['achieved_rate'] or 0.0
        cpu['clients'] = (report['generator_cpu_pct'] or 0) / 100.0
        result = {'rate': rate, 'answered': report['answered'], 'errors': report['errors'],
                  'latency_ms': report['latency_ms'], 'cpu': cpu}
        self.log('    %.0f tx/s, answered %s, errors %s (peak CPU: %s)'
                 % (rate, report['answered'], report['errors'] or 0, cpu_text(cpu)))
        if not profile:
            self.results[key] = result
        return result

    # -- (c) ---------------------------------------------------------------------
    def _register_run(self, url: str, rate: float, server_pids: dict[str, int],
                      groups: dict[str, int], name: str, duration: float | None = None,
                      clients: int | None = None, source: str = '127.0.0.2',
                      domain: str | None = None) -> dict[str, Any]:
        for attempt in (1, 2):
            report = self._register_run_once(url, rate, server_pids, groups, name + '-%d' % attempt,
                                             duration, clients, source, domain)
            foreign = others(report['server_cpu'])
            report['foreign_cpu'] = foreign
            if foreign <= DISTURBED or attempt == 2:
                return report
            self.log('    disturbed (%.0f %% of a core used by other processes): again'
                     % (foreign * 100))
            source = '%s.%d' % (source.rsplit('.', 1)[0], int(source.rsplit('.', 1)[1]) + 100)
        return report

    def _register_run_once(self, url: str, rate: float, server_pids: dict[str, int],
                           groups: dict[str, int], name: str, duration: float | None,
                           clients: int | None, source: str,
                           domain: str | None) -> dict[str, Any]:
        """REGISTER with ``--generators`` bench processes sharing clients and rate.

        Their reports are merged conservatively: counts add up, latency and lag
        percentiles are the worst of the processes, ok only if every one is ok.
        """
        a = self.args
        duration = duration or a.register_duration
        clients = clients or a.register_clients
        n = a.generators
        self.wait_for_quiet()
        watch = CpuWatch(server_pids, groups).start()
        extra = ['--domain', domain] if domain else []
        base = source.rsplit('.', 1)
        results: list[tuple[dict[str, Any], float]] = [None] * n  # type: ignore[list-item]
        # every generator measures the same window: one's un-REGISTER burst and
        # disconnections must not land in another's measurement
        start_at = time.time() + 3.0 + clients / n / 400.0

        def one(i: int) -> None:
            results[i] = run_cli_bench(
                url, '--scenario', 'register', '--clients', str(clients // n), '--rate',
                str(rate / n), '--window', '2', '--duration', str(duration), '--timeout', '5',
                '--source-address', '%s.%d' % (base[0], int(base[1]) + 20 * i),
                '--aor-template', 'sip:g%d-{i}@{domain}' % i, '--connect-concurrency', '200',
                '--start-at', '%.3f' % start_at, *extra, tmp=self.tmp, name='%s-g%d' % (name, i))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        cpu = watch.stop()
        reports = [r for r, _ in results]
        merged = merge_reports(reports)
        for i, report in enumerate(reports):
            cpu['generator %d' % i] = (report['generator_cpu_pct'] or 0) / 100.0
        merged['server_cpu'] = cpu
        return merged

    @staticmethod
    def sustained(report: dict[str, Any]) -> bool:
        answered, sent = report['answered_total'], report['sent']
        offered = report['offered_rate'] or 0
        return (report['errors_total'] == 0 and report['ok'] and sent > 0
                and answered == sent and (report['achieved_rate'] or 0) >= 0.97 * offered
                and (report['latency_ms']['p99'] or 1e9) < 50
                and (report['send_lag_ms']['p99'] or 1e9) < 10)

    def _search(self, label: str, url: str, pids: dict[str, int], groups: dict[str, int],
                source: str, domain: str | None = None) -> dict[str, Any]:
        a = self.args
        self.log('(c) REGISTER against %s: closed-loop estimate (%d clients x 2) ...'
                 % (label, a.register_clients))
        estimate = self._register_run(url, 0, pids, groups, 'c-%s-closed' % label,
                                      duration=4, source=source, domain=domain)
        capacity = estimate['achieved_rate'] or 1.0
        self.log('    capacity ~%.0f/s (peak CPU: %s)' % (capacity,
                                                        cpu_text(estimate['server_cpu'])))
        steps = []
        best = None
        for factor in (1.0, 0.85, 0.7, 0.6, 0.5, 0.42, 0.35, 0.3):
            rate = max(50.0, round(capacity * factor, -1))
            report = self._register_run(url, rate, pids, groups, 'c-%s-%d' % (label, rate),
                                        source=source, domain=domain)
            ok = self.sustained(report)
            steps.append({'rate': rate, 'ok': ok, 'achieved': report['achieved_rate'],
                          'p99_ms': report['latency_ms']['p99'],
                          'lag_p99_ms': report['send_lag_ms']['p99'],
                          'errors': report['errors'], 'answered': report['answered'],
                          'server_cpu': report['server_cpu']})
            self.log('    %6.0f/s offered: achieved %s/s, p50 %s ms, p99 %s ms, lag p99 %s ms, '
                     'errors %s -> %s (peak CPU: %s)' % (
                         rate, report['achieved_rate'], report['latency_ms']['p50'],
                         report['latency_ms']['p99'], report['send_lag_ms']['p99'],
                         report['errors_total'], 'sustained' if ok else 'not sustained',
                         cpu_text(report['server_cpu'])))
            if ok:
                best = report
                break
        return {'capacity_closed_loop': capacity, 'estimate_cpu': estimate['server_cpu'],
                'steps': steps, 'sustained_rate': best['offered_rate'] if best else None,
                'report': best}

    def raw_echo(self) -> None:
        """Part (c)'s floor: raw websockets echoing REGISTER-sized messages, closed loop
        (the (a) clients and window), and the echo server's CPU per message."""
        a = self.args
        self.wait_for_quiet()
        self.log('(c) raw websockets echo of a REGISTER, %d clients x %d outstanding, %g s ...'
                 % (a.clients, a.window, a.duration))
        echo = Helper([PY, __file__, '_raw-echo'], log=self.tmp / 'raw-echo.log')
        try:
            watch = CpuWatch({'echo': echo.pid}).start()
            clients = Helper([PY, __file__, '_raw-clients', echo.ready_line.split()[1],
                              str(a.clients), str(a.window), str(a.duration), 'register'],
                             timeout=a.duration + 60, log=self.tmp / 'raw-echo-clients.log')
            cpu = watch.stop()
            report = json.loads(clients.ready_line.split(' ', 1)[1])
            clients.stop()
        finally:
            echo.stop()
        cpu['clients'] = report['cpu']
        self.results['c_echo'] = {'rate': report['rate'], 'cpu': cpu}
        self.log('    %.0f echoes/s (peak CPU: %s; echo %.0f us per message)' % (
            report['rate'], cpu_text(cpu), cpu['echo'] * 1e6 / max(1.0, report['rate'])))

    def part_c(self) -> None:
        a = self.args
        self.raw_echo()
        server = serve(self.tmp, 'serve-c')
        url = url_of(server)
        try:
            result = self._search('serve', url, {'serve': server.pid}, {}, '127.0.0.2')
            self.log('(c) p99 at %d clients, %d REGISTER/s against serve ...'
                     % (a.register_clients, a.p99_rate))
            fixed = self._register_run(url, a.p99_rate, {'serve': server.pid}, {}, 'c-serve-p99',
                                       duration=a.register_duration, source='127.0.0.3')
            result['fixed_rate'] = {'rate': a.p99_rate, 'latency_ms': fixed['latency_ms'],
                                    'ok': fixed['ok'], 'errors': fixed['errors'],
                                    'send_lag_ms': fixed['send_lag_ms'],
                                    'server_cpu': fixed['server_cpu']}
            self.log('    p50 %s ms, p99 %s ms, max %s ms' % (
                fixed['latency_ms']['p50'], fixed['latency_ms']['p99'], fixed['latency_ms']['max']))
        finally:
            server.stop()
        self.results['c_serve'] = result
        if a.no_kamailio:
            return
        try:
            with kamailio(self.tmp, tcp_children=a.kamailio_children) as (url, pgid, version):
                groups = {'kamailio': pgid}
                result = self._search('kamailio', url, {}, groups, '127.0.0.4',
                                      domain='127.0.0.1')
                self.log('(c) p99 at %d clients, %d REGISTER/s against Kamailio ...'
                         % (a.register_clients, a.p99_rate))
                fixed = self._register_run(url, a.p99_rate, {}, groups, 'c-kam-p99',
                                           source='127.0.0.5', domain='127.0.0.1')
                result['fixed_rate'] = {'rate': a.p99_rate, 'latency_ms': fixed['latency_ms'],
                                        'ok': fixed['ok'], 'errors': fixed['errors'],
                                        'send_lag_ms': fixed['send_lag_ms'],
                                        'server_cpu': fixed['server_cpu']}
                self.log('    p50 %s ms, p99 %s ms' % (fixed['latency_ms']['p50'],
                                                       fixed['latency_ms']['p99']))
        except RuntimeError as exc:
            self.log('(c) Kamailio skipped: %s' % exc)
            self.results['c_kamailio'] = {'skipped': str(exc)}
            return
        result['version'] = version
        self.results['c_kamailio'] = result

    # -- (f) ---------------------------------------------------------------------
    # -- (h) ---------------------------------------------------------------------
    def part_h(self) -> None:
        """MESSAGE through serve to a callee over UDP, next to one over WebSocket."""
        a = self.args
        self.part_b(fast=True, key='h_ws')
        self.wait_for_quiet()
        self.log("(h) MESSAGE via serve to a callee registered over UDP, %d clients x %d "
                 "outstanding, %g s ..." % (a.clients, a.window, a.duration))
        port = free_port(udp=True)
        server = serve(self.tmp, 'serve-h-udp', '--listen', 'udp://%s:%d' % (HOST, port))
        aor = 'sip:callee@bench.test'
        callee = Helper([PY, __file__, '_udp-callee', '%s:%d' % (HOST, port), aor],
                        log=self.tmp / 'callee-h-udp.log')
        try:
            watch = CpuWatch({'serve': server.pid, 'callee': callee.pid}).start()
            report, _ = run_cli_bench(
                url_of(server), '--scenario', 'message', '--to', aor, '--rate', '0',
                '--window', str(a.window), '--clients', str(a.clients), '--duration',
                str(a.duration), '--timeout', '10', tmp=self.tmp, name='bench-h-udp')
            cpu = watch.stop()
        finally:
            callee.stop()
            server.stop()
        cpu['clients'] = (report['generator_cpu_pct'] or 0) / 100.0
        self.results['h_udp'] = {'rate': report['achieved_rate'] or 0.0,
                                 'answered': report['answered'], 'errors': report['errors'],
                                 'latency_ms': report['latency_ms'], 'cpu': cpu}
        self.log('    %.0f tx/s, errors %s (peak CPU: %s)' % (
            report['achieved_rate'] or 0, report['errors'] or 0, cpu_text(cpu)))

    # -- (i) ---------------------------------------------------------------------
    def part_i(self) -> None:
        """Calls (``aiosip-ws bench --scenario call``) through serve and through Kamailio:
        the same clients, each calling the next one, closed loop."""
        helper = serve(self.tmp, 'serve-i')
        try:
            self.results['i_serve'] = self._calls(url_of(helper), {'serve': helper.pid}, {},
                                                  'serve')
        finally:
            helper.stop()
        if not self.args.no_kamailio:
            with kamailio(self.tmp) as (url, pgid, _):
                self.results['i_kamailio'] = self._calls(url, {}, {'kamailio': pgid},
                                                         'kamailio')

    def _calls(self, url: str, pids: dict[str, int], groups: dict[str, int],
               name: str) -> dict[str, Any]:
        a = self.args
        for attempt in (1, 2):
            self.wait_for_quiet()
            self.log('(i) calls via %s: %d clients each calling the next, %g s held, closed '
                     'loop, %g s ...' % (name, a.call_clients, a.call_hold, a.duration))
            watch = CpuWatch(pids, groups).start()
            report, _ = run_cli_bench(
                url, '--scenario', 'call', '--rate', '0', '--window', '1', '--clients',
                str(a.call_clients), '--hold', str(a.call_hold), '--duration', str(a.duration),
                '--timeout', '10', '--domain', 'bench.test', tmp=self.tmp,
                name='bench-i-%s' % name)
            cpu = watch.stop()
            cpu['clients'] = (report['generator_cpu_pct'] or 0) / 100.0
            if others(cpu) <= DISTURBED or attempt == 2:
                break
            self.log('    disturbed: again')
        rate = report['achieved_rate'] or 0.0
        result = {'rate': rate, 'answered': report['answered'], 'errors': report['errors'],
                  'latency_ms': report['latency_ms'], 'cpu': cpu}
        self.log('    %.0f calls/s, answered %s, errors %s, set-up p50 %s ms p99 %s ms (peak '
                 'CPU: %s)' % (rate, report['answered'], report['errors'] or 0,
                               report['latency_ms']['p50'], report['latency_ms']['p99'],
                               cpu_text(cpu)))
        return result

    # -- (j) ---------------------------------------------------------------------
    def part_j(self) -> None:
        """Calls anchored on rtpengine through serve and through Kamailio, in pairs."""
        a = self.args
        tone = write_ulaw_tone(self.tmp / 'tone.wav', 440, 2.0)
        with rtpengine_daemon(self.tmp) as (ng_port, rtpengine_pid):
            for _ in range(a.relay_pairs):
                for name in ('serve', 'kamailio'):
                    if name == 'kamailio' and a.no_kamailio:
                        continue
                    result = self._relayed_calls(name, ng_port, rtpengine_pid, tone)
                    self.results.setdefault('j_' + name, []).append(result)
        runs = self.results.get('j_serve', [])
        kamailio_runs = self.results.get('j_kamailio', [])
        if runs and kamailio_runs:
            ratios = [s['cpu_ms_per_call'] / k['cpu_ms_per_call']
                      for s, k in zip(runs, kamailio_runs, strict=False)
                      if k['cpu_ms_per_call']]
            self.results['j_ratio'] = sorted(ratios)[len(ratios) // 2] if ratios else None
            self.log('    serve / Kamailio CPU per call, median of %d pairs: %s' % (
                len(ratios), fmt(self.results['j_ratio'], '%.2f')))

    def _relayed_calls(self, name: str, ng_port: int, rtpengine_pid: int,
                       tone: Path) -> dict[str, Any]:
        a = self.args
        self.wait_for_quiet()
        self.log('(j) %d calls at %g/s held %g s with RTP both ways, through %s and '
                 'rtpengine ...' % (a.relay_calls, a.relay_rate, a.relay_hold, name))
        port, uas_port = free_port(udp=True), free_port(udp=True)
        with contextlib.ExitStack() as stack:
            if name == 'serve':
                server = serve(self.tmp, 'serve-j', '--listen', 'udp://%s:%d' % (HOST, port),
                               '--rtpengine', 'udp://%s:%d' % (HOST, ng_port),
                               '--media-relay', 'always', '--route',
                               'bench.test=sip:%s:%d' % (HOST, uas_port),
                               profile=self.tmp / 'serve-j.prof' if a.profile else None)
                stack.callback(server.stop)
                pid, pgid = server.pid, 0
            else:
                pid, pgid = 0, stack.enter_context(kamailio_udp(self.tmp, port, ng_port,
                                                                 uas_port))

            def cpu_of() -> float:
                return cpu_seconds(pid) if pid else group_cpu_seconds(pgid)
            common = ['-i', HOST, '-mi', HOST, '-nostdin',
                      '-timeout', '%ds' % (a.relay_calls / a.relay_rate + 60), '-timeout_error']
            uas = subprocess.Popen(
                [sipp(), '-sf', str(HERE / 'sipp' / 'uas_rtp.xml'), '-p', str(uas_port),
                 *common, '-trace_err', '-error_file', str(self.tmp / ('uas-%s.err' % name))],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.tmp)
            stack.callback(_stop_process, uas)
            time.sleep(0.5)
            rtt = self.tmp / ('uac-%s-%d' % (name, len(self.results.get('j_' + name, []))))
            rtt.mkdir(exist_ok=True)
            shutil.copy(tone, rtt / tone.name)            # rtp_stream reads it from the cwd
            before, engine_before = cpu_of(), cpu_seconds(rtpengine_pid)
            started = time.monotonic()
            uac = subprocess.run(
                [sipp(), '%s:%d' % (HOST, port), '-sf', str(HERE / 'sipp' / 'uac_rtp.xml'),
                 '-p', str(free_port(udp=True)), *common, '-d',
                 str(int(a.relay_hold * 1000)), '-r', str(a.relay_rate), '-m',
                 str(a.relay_calls), '-trace_rtt', '-rtt_freq', '1', '-trace_err',
                 '-error_file', str(self.tmp / ('uac-%s.err' % name))],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=rtt,
                timeout=a.relay_calls / a.relay_rate + 120)
            elapsed = time.monotonic() - started
            used, engine = cpu_of() - before, cpu_seconds(rtpengine_pid) - engine_before
        setup_ms = sorted(_rtt_ms(rtt))
        failed = uac.returncode != 0
        result = {'calls': a.relay_calls, 'failed': failed,
                  'rate': a.relay_calls / elapsed, 'cpu_ms_per_call': used * 1000 / a.relay_calls,
                  'rtpengine_ms_per_call': engine * 1000 / a.relay_calls,
                  'setup_ms': {'p50': _pct(setup_ms, 0.5), 'p99': _pct(setup_ms, 0.99)}}
        self.log('    %s: %.1f calls/s, %s, CPU per call %.2f ms (rtpengine %.2f ms), set-up '
                 'p50 %s ms p99 %s ms' % (name, result['rate'], 'SOME FAILED (%s)'
                                          % uac.stderr.decode()[-300:] if failed else 'all ok',
                                          result['cpu_ms_per_call'],
                                          result['rtpengine_ms_per_call'],
                                          fmt(result['setup_ms']['p50'], '%.1f'),
                                          fmt(result['setup_ms']['p99'], '%.1f')))
        return result

    # -- (k) ---------------------------------------------------------------------
    def part_k(self) -> None:
        """HEP export: serve's CPU per MESSAGE in (b') with ``--hep`` to a UDP collector
        against the same without, in pairs (the order alternating)."""
        a = self.args
        sink = Helper([PY, __file__, '_hep-sink'], ready='READY', log=self.tmp / 'hep-sink.log')
        url = 'udp://127.0.0.1:%s' % sink.ready_line.split()[1]
        ratios, runs = [], []
        try:
            for n in range(a.hep_pairs):
                order = (False, True) if n % 2 == 0 else (True, False)
                pair = {}
                for hep in order:
                    result = self.part_b(fast=True, key='k-hep' if hep else 'k-plain',
                                         extra=('--hep', url) if hep else ())
                    pair[hep] = result['cpu']['serve'] * 1e6 / (result['rate'] or 1)
                runs.append({'hep_us': pair[True], 'plain_us': pair[False]})
                ratios.append(pair[True] / pair[False])
                self.log('    serve CPU per MESSAGE: %.1f us with --hep, %.1f us without '
                         '(%.2f)' % (pair[True], pair[False], ratios[-1]))
        finally:
            assert sink.proc.stdin is not None
            sink.proc.stdin.close()
            received = sink.wait_line('COUNT', 30).split()[1]
            sink.stop()
        ratio = sorted(ratios)[len(ratios) // 2]
        self.results['k'] = {'pairs': runs, 'ratio': ratio, 'packets': int(received)}
        self.log('    with / without --hep, median of %d pairs: %.2f (%s HEP packets '
                 'received)' % (len(ratios), ratio, received))

    # -- (l) ---------------------------------------------------------------------
    def part_l(self) -> None:
        """Routing apps: serve's CPU per MESSAGE and per REGISTER with ``--app`` loading a
        no-op app and the blocklist example, against the same without, in rounds."""
        a = self.args
        noop = self.tmp / 'noop_app.py'
        noop.write_text('async def on_request(request):\n    return None\n')
        # the blocklist's configuration; none of the bench's users is listed
        os.environ['BLOCKED'] = 'sip:spam@example.com,sip:robot@example.net'
        variants = [('none', ()), ('noop', ('--app', str(noop))),
                    ('blocklist', ('--app', str(REPO / 'examples/routing/blocklist.py')))]
        per_message: dict[str, list[float]] = {name: [] for name, _ in variants}
        per_register: dict[str, list[float]] = {name: [] for name, _ in variants}
        self.log('(l) routing apps: serve CPU per MESSAGE and per REGISTER (%d/s), without '
                 'an app, with a no-op app, with blocklist.py, %d rounds ...'
                 % (a.app_register_rate, a.app_rounds))
        for n in range(a.app_rounds):
            for name, extra in variants[n % 3:] + variants[:n % 3]:
                result = self.part_b(fast=True, key='l-%s' % name, extra=extra)
                per_message[name].append(result['cpu']['serve'] * 1e6 / (result['rate'] or 1))
                server = serve(self.tmp, 'serve-l-%s' % name, *extra)
                try:
                    report = self._register_run(url_of(server), a.app_register_rate,
                                                {'serve': server.pid}, {}, 'l-reg-%s' % name,
                                                duration=a.register_duration,
                                                source='127.0.0.6')
                finally:
                    server.stop()
                per_register[name].append(report['server_cpu']['serve'] * 1e6 /
                                          (report['achieved_rate'] or 1))
            self.log('    round %d: us per MESSAGE %s; per REGISTER %s' % (n + 1, ', '.join(
                '%s %.1f' % (k, v[-1]) for k, v in per_message.items()), ', '.join(
                '%s %.1f' % (k, v[-1]) for k, v in per_register.items())))

        def ratios(table: dict[str, list[float]], name: str) -> list[float]:
            return [x / y for x, y in zip(table[name], table['none'], strict=True)]
        summary = {}
        for name in ('noop', 'blocklist'):
            for what, table in (('message', per_message), ('register', per_register)):
                values = sorted(ratios(table, name))
                summary['%s_%s' % (name, what)] = {'ratios': values,
                                                    'median': values[len(values) // 2]}
        self.results['l'] = {'us_per_message': per_message, 'us_per_register': per_register,
                             'ratios': summary}
        self.log('    with / without an app, median of %d rounds: no-op %.2f per MESSAGE, %.2f '
                 'per REGISTER; blocklist %.2f per MESSAGE, %.2f per REGISTER' % (
                     a.app_rounds, summary['noop_message']['median'],
                     summary['noop_register']['median'], summary['blocklist_message']['median'],
                     summary['blocklist_register']['median']))

    # -- (g) ---------------------------------------------------------------------
    def part_g(self) -> None:
        """Media: the bot's CPU per concurrent PCMU echo call against aiortc alone."""
        self.wait_for_quiet()
        self.log('(g) media: PCMU echo calls to aiosip-ws answer through serve, then aiortc '
                 'peer-to-peer, %s calls ...' % ', '.join(str(n) for n in MEDIA_STEPS
                                                          if n <= self.args.max_calls))
        namespace = ['unshare', '--net', '--', 'sh', '-c',
                     'ip link set lo up && ip addr add 127.0.0.2/8 dev lo && exec "$@"', '_']
        part = Helper([*namespace, PY, __file__, '_media-part', str(self.args.media_hold),
                       str(self.args.max_calls)], ready='RESULT', timeout=1800,
                      log=self.tmp / 'media-part.log')
        with contextlib.suppress(subprocess.TimeoutExpired):
            part.proc.wait(60)                              # it cleans up after RESULT
        part.stop()
        self.results['g'] = json.loads(part.ready_line.split(' ', 1)[1])

    def part_f(self) -> None:
        """The cluster on one Redis: MESSAGE (the (b') pattern) within one node and across
        two nodes; REGISTER sustained by --workers 1, 2 and 4; CPU of Redis too."""
        a = self.args
        port = free_port()
        redis = subprocess.Popen(['redis-server', '--port', str(port), '--bind', '127.0.0.1',
                                  '--save', '', '--appendonly', 'no', '--dir', str(self.tmp)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if subprocess.run(['redis-cli', '-p', str(port), 'ping'], capture_output=True,
                              text=True).stdout.strip() == 'PONG':
                break
            time.sleep(0.05)
        redis_pid = redis.pid
        url = 'redis://127.0.0.1:%d/0' % port
        try:
            for key, cross in (('f_one_node', False), ('f_two_nodes', True)):
                self.wait_for_quiet()
                self.log('(f) MESSAGE %s on Redis, %d clients x %d outstanding, %g s ...'
                         % ('across two nodes' if cross else 'within one node', a.clients,
                            a.window, a.duration))
                first = serve(self.tmp, key + '-1', '--redis', url, '--node-id', 'n1')
                second = serve(self.tmp, key + '-2', '--redis', url, '--node-id', 'n2') \
                    if cross else first
                aor = 'sip:callee@bench.test'
                callee = Helper([PY, __file__, '_callee', url_of(second), aor, '--fast'],
                                log=self.tmp / ('callee-%s.log' % key))
                try:
                    pids = {'node 1': first.pid, 'callee': callee.pid, 'redis': redis_pid}
                    if cross:
                        pids['node 2'] = second.pid
                    watch = CpuWatch(pids).start()
                    report, _ = run_cli_bench(
                        url_of(first), '--scenario', 'message', '--to', aor, '--rate', '0',
                        '--window', str(a.window), '--clients', str(a.clients), '--duration',
                        str(a.duration), '--timeout', '10', tmp=self.tmp, name='bench-' + key)
                    cpu = watch.stop()
                finally:
                    callee.stop()
                    first.stop()
                    if cross:
                        second.stop()
                cpu['clients'] = (report['generator_cpu_pct'] or 0) / 100.0
                self.results[key] = {'rate': report['achieved_rate'] or 0.0,
                                     'answered': report['answered'], 'errors': report['errors'],
                                     'latency_ms': report['latency_ms'], 'cpu': cpu}
                self.log('    %.0f tx/s, p50 %s ms, p99 %s ms, errors %s (peak CPU: %s)' % (
                    report['achieved_rate'] or 0, report['latency_ms']['p50'],
                    report['latency_ms']['p99'], report['errors'] or 0, cpu_text(cpu)))
            for workers in a.workers:
                server = serve(self.tmp, 'f-w%d' % workers, '--workers', str(workers),
                               '--redis', url, '--node-id', 'w')
                try:
                    pids = {'worker %d' % (i + 1): int(pid) for i, pid in enumerate(
                        server.ready_line.split('pids ', 1)[1].rstrip(')').split(', '))}
                    pids['redis'] = redis_pid
                    self.results['f_workers_%d' % workers] = self._search(
                        '%d worker(s)' % workers, url_of(server), pids, {},
                        '127.0.%d.2' % (10 + workers))
                finally:
                    server.stop()
        finally:
            redis.terminate()
            redis.wait(10)

    # -- (d) ---------------------------------------------------------------------
    def part_d(self) -> None:
        for n, sources in ((1000, ['127.0.0.6']), (10000, ['127.0.0.7', '127.0.0.8'])):
            if n > self.args.max_idle:
                continue
            self.results['d_%d' % n] = self.idle_rss(n, sources)
        # as many as serve's open-file hard limit allows, less its own reserve
        sys.path.insert(0, str(REPO))
        from aiosip_ws.serve.fdlimit import connection_cap
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard == resource.RLIM_INFINITY or self.args.max_idle <= 10000:
            return
        cap = min(connection_cap(hard), self.args.max_idle)
        result = self.idle_rss(cap, ['127.0.0.%d' % i for i in range(10, 14)])
        result.update(hard_limit=hard, cap=cap)
        self.results['d_most'] = result

    def idle_rss(self, n: int, sources: list[str], *serve_args: str) -> dict[str, Any]:
        self.wait_for_quiet()
        self.log('(d) RSS with %d idle registered clients%s ...' % (
            n, ' (serve %s)' % ' '.join(serve_args) if serve_args else ''))
        server = serve(self.tmp, 'serve-d%d' % n, *serve_args)
        url = url_of(server)
        helpers: list[Helper] = []
        try:
            # warm-up: 200 clients connect, register and leave, so imports, caches and the
            # allocator's first arenas are not counted as per-client memory
            warm = Helper([PY, __file__, '_idle-clients', url, '200', '900000', '127.0.0.9', '100'],
                          log=self.tmp / 'warm.log')
            warm.stop()
            time.sleep(1.0)
            before = rss_kib(server.pid)
            per = n // len(sources)
            started = time.monotonic()
            for index, source in enumerate(sources):
                helpers.append(Helper([PY, __file__, '_idle-clients', url, str(per),
                                       str(index * per), source, '200'],
                                      timeout=300, log=self.tmp / ('idle-%d-%d.log' % (n, index))))
            connected = sum(int(h.ready_line.split()[1]) for h in helpers)
            failed = sum(int(h.ready_line.split()[2]) for h in helpers)
            setup = time.monotonic() - started
            time.sleep(2.0)
            after = rss_kib(server.pid)
            time.sleep(1.0)
            after2 = rss_kib(server.pid)
        finally:
            for helper in helpers:
                helper.stop()
            server.stop()
        per_client = (after2 - before) / max(1, connected)
        self.log('    RSS %d KiB -> %d KiB with %d clients (%d failed, set-up %.1f s): '
                 '%.1f KiB per client' % (before, after2, connected, failed, setup, per_client))
        return {'clients': connected, 'failed': failed, 'rss_before_kib': before,
                'rss_after_kib': after2, 'rss_after_2s_kib': after, 'per_client_kib': per_client,
                'setup_s': setup}

    # -- (e) ---------------------------------------------------------------------
    def part_e(self) -> None:
        """Per-message costs of the codec and of the aiosip conversion, in this process."""
        self.wait_for_quiet()
        self.log('(e) codec micro-benchmarks ...')
        self.results['e'] = codec_costs()
        for name, us in self.results['e'].items():
            self.log('    %8.1f us  %s' % (us, name))

    # -- profiles ------------------------------------------------------------------
    def profile_runs(self) -> None:
        a = self.args
        self.log('profiling (cProfile; rates under the profiler are lower) ...')
        self.part_b(fast=False, profile=True, key='prof-b')
        server = serve(self.tmp, 'serve-prof-c', profile=self.tmp / 'prof-c-serve.prof')
        url = url_of(server)
        try:
            run_cli_bench(url, '--scenario', 'register', '--clients', str(a.register_clients),
                          '--rate', str(a.p99_rate), '--duration', '5', '--source-address',
                          '127.0.0.10', tmp=self.tmp, name='prof-c-client',
                          profile=self.tmp / 'prof-c-client.prof')
        finally:
            server.stop()
        self.profiles['prof-c serve'] = self.tmp / 'prof-c-serve.prof'
        self.profiles['prof-c client'] = self.tmp / 'prof-c-client.prof'


def codec_costs(repeat: int = 5, number: int = 2000) -> dict[str, float]:
    """Microseconds per call (best of ``repeat``) of the pieces a relayed MESSAGE goes through."""
    import timeit
    sys.path.insert(0, str(REPO))
    from websockets.frames import Frame, Opcode

    import aiosip_ws
    from aiosip_ws.adapter import convert
    from aiosip_ws.core import codec, framing
    from aiosip_ws.core.sipuri import NameAddr, split_header_values

    request = codec.parse(MESSAGE_TEXT)
    response = codec.parse(RESPONSE_TEXT)
    from_value = request.get('From') or ''
    loop = asyncio.new_event_loop()

    def minimal_split() -> Any:        # the floor of any Python parser: one pass of C splits
        head, _, body = MESSAGE_TEXT.partition('\r\n\r\n')
        lines = head.split('\r\n')
        return lines[0].split(' ', 2), [line.partition(':') for line in lines[1:]], body

    async def conversions() -> dict[str, Any]:
        return {'adapter.to_aiosip(request)': lambda: convert.to_aiosip(request)}

    cases: dict[str, Any] = {
        'codec.parse(MESSAGE, 9 headers)': lambda: codec.parse(MESSAGE_TEXT),
        'codec.parse(200 OK, 2 Vias)': lambda: codec.parse(RESPONSE_TEXT),
        'framing.receive(MESSAGE) (parse + classify)': lambda: framing.receive(MESSAGE_TEXT),
        'codec.serialize(MESSAGE)': lambda: codec.serialize(request),
        'framing.encode(MESSAGE) (serialize + UTF-8 check)': lambda: framing.encode(request),
        'framing.encode_frame(MESSAGE) (bytes for the frame)': lambda: framing.encode_frame(
            request),
        'SIPMessage.vias[0].branch (response, 2 Vias)': lambda: response.vias[0].branch,
        'SIPMessage.top_via.branch (response)': lambda: response.top_via.branch,
        'SIPMessage.top_branch (response, one pass)': lambda: response.top_branch,
        'SIPMessage.get("Call-ID")': lambda: request.get('Call-ID'),
        'NameAddr.parse(From), remembered': lambda: NameAddr.parse(from_value),
        'NameAddr parse of From, not remembered': lambda: NameAddr._parse(from_value),
        'split_header_values(From)': lambda: split_header_values(from_value),
        'codec.make_response(MESSAGE, 200)': lambda: codec.make_response(request, 200,
                                                                         to_tag='abc'),
        'aiosip.Contact.from_header(From)': lambda: aiosip_ws.aiosip.Contact.from_header(
            from_value),
        'floor: str.partition + split of the MESSAGE': minimal_split,
        'websockets: Frame.serialize (client, masked)': lambda: Frame(
            Opcode.TEXT, MESSAGE_TEXT.encode()).serialize(mask=True),
    }
    cases.update(loop.run_until_complete(conversions()))

    async def in_loop(fn: Any) -> float:
        return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6

    out: dict[str, float] = {}
    for name, fn in cases.items():
        out[name] = round(loop.run_until_complete(in_loop(fn)), 2)
    out["serve's SIP path per REGISTER, in process (1,000 clients)"] = round(
        loop.run_until_complete(register_path()), 2)
    out["the same, the CPU idle 0.2 ms before each REGISTER (as a server between packets)"] = \
        round(loop.run_until_complete(register_path(rounds=3, pause=0.0002)), 2)
    loop.close()
    return out


class _FakeConnection:
    """What the relay needs of a WSConnection, with no socket: send() serialises."""

    transport_name, via_transport, secure, identity, url = 'ws', 'WS', False, None, None

    def __init__(self, index: int) -> None:
        from aiosip_ws.options import ClientOptions
        self.state: dict[str, Any] = {}
        self.flow_state: Any = None
        self.is_open = True
        self.remote_addr = ('127.0.0.%d' % (index % 200 + 2), 40000 + index)
        self.local_addr = (HOST, 5060)
        self.via_host = '%s:5060' % HOST
        self.options = ClientOptions()
        self.sent = 0

    def send(self, message: Any) -> bool:
        from aiosip_ws.core import framing
        framing.encode_frame(message)
        self.sent += 1
        return True

    def via(self, branch: str) -> str:
        return 'SIP/2.0/WS %s;branch=%s' % (self.via_host, branch)


async def register_path(clients: int = 1000, rounds: int = 6, pause: float = 0.0) -> float:
    """Microseconds of serve's SIP work per REGISTER (framing.receive, the relay, the
    registrar, the 200 serialised), best round: serve's CPU per REGISTER without the
    WebSocket, asyncio and socket costs.

    ``pause``: the process sleeps that long before each REGISTER, and only the SIP work is
    timed.  A live server's CPU idles (or serves a syscall) between packets; on a shared
    virtual machine the same work then runs slower, its caches cold: this shows how
    much, and why serve's CPU per REGISTER over the wire is several times this loop's."""
    from aiosip_ws.core import framing
    from aiosip_ws.serve.relay import RelayServer
    relay = RelayServer()
    conns = [_FakeConnection(i) for i in range(clients)]
    for conn in conns:
        relay.connection_made(conn)  # type: ignore[arg-type]
    best = float("inf")
    for r in range(rounds):
        frames = [REGISTER_TEXT.replace('bench0@', 'bench%d@' % i)
                  .replace('4k2jd9a8xk1p', 'c%d' % i).replace('z9hG4bK5f1c2a9e03b7d4c8',
                                                             'z9hG4bK%dr%d' % (i, r))
                  .replace('3f9a1c0d7e2b4a6c8e01', 'reg%d' % i)
                  .replace('CSeq: 17', 'CSeq: %d' % (r + 1)) for i in range(clients)]
        worked = 0.0
        for conn, frame in zip(conns, frames, strict=True):
            if pause:
                time.sleep(pause)                  # a benchmark helper: the idle CPU is the point
            started = time.perf_counter()
            event = framing.receive(frame)
            relay.message_received(conn, event.message)  # type: ignore[arg-type, attr-defined]
            worked += time.perf_counter() - started
        best = min(best, worked / clients)
    if not all(conn.sent == rounds for conn in conns):
        raise RuntimeError('the in-process REGISTERs were not all answered')
    return best * 1e6


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several ``aiosip-ws bench --json`` reports run side by side."""
    if len(reports) == 1:
        return dict(reports[0])
    merged = dict(reports[0])
    merged['sent'] = sum(r['sent'] for r in reports)
    answered: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    for r in reports:
        answered.update(r['answered'])
        errors.update(r['errors'])
    merged['answered'] = dict(answered)
    merged['errors'] = dict(errors)
    merged['answered_total'] = sum(answered.values())
    merged['errors_total'] = sum(errors.values())
    merged['offered_rate'] = sum(r['offered_rate'] or 0 for r in reports)
    merged['achieved_rate'] = sum(r['achieved_rate'] or 0 for r in reports)
    merged['ok'] = all(r['ok'] for r in reports)
    for key in ('latency_ms', 'send_lag_ms'):
        merged[key] = {k: max((r[key][k] for r in reports if r[key][k] is not None),
                              default=None) for k in reports[0][key]}
        merged[key]['count'] = sum(r[key]['count'] for r in reports)
        mins = [r[key]['min'] for r in reports if r[key]['min'] is not None]
        merged[key]['min'] = min(mins) if mins else None
    merged['generators'] = len(reports)
    return merged


# ============================================================================ reporting
CATEGORIES = (
    ('codec', re.compile(r'aiosip_ws/(codec|framing|sipuri)\.py')),
    ('adapter', re.compile(r'aiosip_ws/adapter\.py')),
    ('transport', re.compile(r'aiosip_ws/transport\.py')),
    ('relay+registrar', re.compile(r'aiosip_ws/(relay|registrar)\.py')),
    ('loadgen', re.compile(r'aiosip_ws/loadgen\.py')),
    ('aiosip_ws other', re.compile(r'aiosip_ws/')),
    ('aiosip', re.compile(r'site-packages/aiosip/')),
    ('multidict', re.compile(r'multidict')),
    ('websockets', re.compile(r'websockets/')),
    ('asyncio+selectors', re.compile(r'asyncio/|selectors\.py|socket\.py')),
    ('logging', re.compile(r'logging/')),
)


def categorize(filename: str, funcname: str) -> str:
    if filename == '~':
        if re.search(r"'(send|recv|sendto|recv_into)' of '_socket|method 'poll' of 'select",
                     funcname):
            return 'syscalls (send/recv/epoll)'
        if 're.Pattern' in funcname or "'_sre" in funcname:
            return 're (C)'
        return 'builtins (C)'
    for name, pattern in CATEGORIES:
        if pattern.search(filename):
            return name
    return 'other python'


def profile_summary(path: Path, top: int = 12) -> dict[str, Any]:
    stats = pstats.Stats(str(path))
    raw = stats.stats  # type: ignore[attr-defined]
    by_category: collections.Counter[str] = collections.Counter()
    total = 0.0
    idle = 0.0
    for (filename, _, funcname), (_, _, tottime, _, _) in raw.items():
        category = categorize(filename, funcname)
        if "method 'poll' of 'select" in funcname or funcname == '<built-in method sys.stdin.read>':
            idle += tottime
        by_category[category] += tottime
        total += tottime
    busy = total - idle
    by_category['syscalls (send/recv/epoll)'] -= idle
    cumulative = []
    wanted = re.compile(r'aiosip_ws/(codec|adapter|transport|relay|registrar|framing|loadgen)\.py|'
                        r'aiosip/(dialog|message|contact|application)\.py|'
                        r'websockets/(asyncio/connection|protocol|frames)\.py')
    for (filename, line, funcname), (_cc, nc, _tottime, cumtime, _) in raw.items():
        if wanted.search(filename):
            cumulative.append((cumtime, '%s:%d(%s)' % (re.sub(r'.*/(aiosip_ws|aiosip|websockets)/',
                                                             r'\1/', filename), line, funcname), nc))
    cumulative.sort(reverse=True)
    return {'busy_s': busy, 'idle_s': idle,
            'self_time_pct': {k: round(100.0 * v / busy, 1) for k, v in by_category.most_common()
                              if busy > 0 and v > 0},
            'top_cumulative': [(name, round(cum, 3), calls) for cum, name, calls in cumulative[:top]]}


def machine() -> dict[str, str]:
    import websockets
    sys.path.insert(0, str(REPO))
    import aiosip_ws
    cpu = 'unknown'
    with contextlib.suppress(OSError):
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    mem = 'unknown'
    with contextlib.suppress(OSError):
        kib = int(Path('/proc/meminfo').read_text().split()[1])
        mem = '%.1f GiB' % (kib / 1024 / 1024)
    kamailio = 'not found'
    binary = shutil.which('kamailio') or '/usr/sbin/kamailio'
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([binary, '-v'], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r'kamailio (\S+)', out)
        kamailio = m.group(1) if m else kamailio
    return {'cpu': '%s, %d cores' % (cpu, os.cpu_count() or 0), 'memory': mem,
            'os': '%s %s' % (platform.system(), platform.release()),
            'python': '%s (%s)' % (platform.python_version(), sys.base_prefix),
            'websockets': websockets.__version__,
            'aiosip': '0.2.0', 'aiosip-ws': aiosip_ws.__version__, 'kamailio': kamailio,
            'loop': event_loop()}


def fmt(value: Any, spec: str = '%.0f') -> str:
    return '-' if value is None else spec % value


def report(bench: Bench) -> str:
    r = bench.results
    a = bench.args
    rows: list[tuple[str, str, str, str, str]] = []

    def row(name: str, value: str, target: str = '', ratio: str = '', verdict: str = '') -> None:
        rows.append((name, value, target, ratio, verdict))

    ceiling = r.get('a', {}).get('rate')
    if 'a' in r:
        row('(a) raw websockets relay ceiling, aiosip-ws bench clients (tx/s)', fmt(ceiling),
            '', '1.00')
        if r['a'].get('raw_clients_rate'):
            row("    the same relay under raw websockets clients (tx/s)",
                fmt(r['a']['raw_clients_rate']), '', '')
    targets = {'b': 0.35, "b'": 0.5}            # issue 14: fractions of (a)
    for key, label in (('b', "(b) aiosip-ws MESSAGE via serve, dialog-API callee (tx/s)"),
                       ("b'", "(b') same, callee answering from the codec (tx/s)"),
                       ("b''", "(b'') lean relay: aiosip_ws codec+transport, no aiosip (tx/s)"),
                       ('b-K', "(b-K) the (b') pattern via Kamailio (tx/s)")):
        if key in r:
            rate = r[key]['rate']
            ratio = rate / ceiling if ceiling else None
            goal = targets.get(key)
            verdict = '' if ratio is None or goal is None else 'met' if ratio >= goal else 'NOT met'
            row(label, fmt(rate), '>= %g x (a)' % goal if goal else '', fmt(ratio, '%.2f'),
                verdict)
            raw_ceiling = r.get('a', {}).get('raw_clients_rate')
            if raw_ceiling and goal:
                row('    against the raw-client ceiling', '', '', fmt(rate / raw_ceiling, '%.2f'))
    per_message = {}
    for key, proc in (("b'", 'serve'), ('b-K', 'kamailio')):
        if key in r and r[key]['rate'] and r[key]['cpu'].get(proc):
            per_message[proc] = r[key]['cpu'][proc] * 1e6 / r[key]['rate']
    if len(per_message) == 2:
        times = per_message['serve'] / per_message['kamailio']
        row("(b'/b-K) CPU per MESSAGE: serve / Kamailio (us)", '%.0f / %.0f' % (
            per_message['serve'], per_message['kamailio']), '<= 2.5 x', '%.1f x' % times,
            'met' if times <= 2.5 else 'NOT met')
    serve_rate = r.get('c_serve', {}).get('sustained_rate')
    kam = r.get('c_kamailio', {})
    kam_rate = kam.get('sustained_rate')
    if 'c_serve' in r:
        row('(c) REGISTER/s sustained, aiosip-ws serve, %d clients' % a.register_clients,
            fmt(serve_rate))
    if kam_rate is not None:
        row('(c) REGISTER/s sustained, Kamailio %s, %d clients' % (kam.get('version', ''),
                                                                 a.register_clients),
            fmt(kam_rate))
        ratio = serve_rate / kam_rate if serve_rate and kam_rate else None
        row('    serve / Kamailio', '', '>= 0.6', fmt(ratio, '%.2f'),
            '' if ratio is None else 'met' if ratio >= 0.6 else 'NOT met')
    per_register = {}
    for key, proc in (('c_serve', 'serve'), ('c_kamailio', 'kamailio')):
        part = r.get(key, {})
        if part.get('capacity_closed_loop') and part.get('estimate_cpu', {}).get(proc):
            per_register[proc] = part['estimate_cpu'][proc] * 1e6 / part['capacity_closed_loop']
            row('(c) %s CPU per REGISTER (us) at %.0f/s (closed loop)' % (
                proc, part['capacity_closed_loop']), fmt(per_register[proc]))
    echo = r.get('c_echo')
    if echo and echo['rate'] and per_register.get('serve'):
        floor = echo['cpu']['echo'] * 1e6 / echo['rate']
        times = per_register['serve'] / floor
        row('(c) serve CPU per REGISTER / raw websockets echo of it (%.0f us)' % floor, '',
            '<= 2.5 x', '%.1f x' % times, 'met' if times <= 2.5 else 'NOT met')
    if len(per_register) == 2 and per_register['serve']:
        ratio = per_register['kamailio'] / per_register['serve']
        row('    per core: serve / Kamailio (REGISTER/s per CPU)', '', '>= 0.5',
            fmt(ratio, '%.2f'), 'met' if ratio >= 0.5 else 'NOT met')
    for key, name in (('c_serve', 'serve'), ('c_kamailio', 'Kamailio')):
        fixed = r.get(key, {}).get('fixed_rate')
        if fixed:
            p99 = fixed['latency_ms']['p99']
            row('(c) p99 REGISTER latency (ms), %s, %d clients, %d/s' % (
                name, a.register_clients, fixed['rate']), fmt(p99, '%.1f'),
                '< 10 ms' if key == 'c_serve' else '', '',
                ('met' if p99 is not None and p99 < 10 and fixed['ok'] else 'NOT met')
                if key == 'c_serve' else '')
    for key in sorted((k for k in r if k.startswith('d_')), key=lambda k: r[k]['clients']):
        d = r[key]
        row('(d) RSS per idle registered client (KiB), %d clients' % d['clients'],
            fmt(d['per_client_kib'], '%.1f'), '<= 16 KiB', '',
            'met' if d['per_client_kib'] <= 16 else 'NOT met')
    most = r.get('d_most')
    if most:
        row('(d) idle clients held at once (open-file hard limit %d, cap %d)' % (
            most['hard_limit'], most['cap']), '%d (%d failed)' % (most['clients'],
                                                                 most['failed']),
            '>= cap', '', 'met' if most['clients'] >= most['cap'] else 'NOT met')
    one, two = r.get('f_one_node'), r.get('f_two_nodes')
    fast = r.get("b'", {}).get('rate')
    for key, label in (('f_one_node', "(f) MESSAGE, serve --redis, callee on the same node (tx/s)"),
                       ('f_two_nodes', '(f) MESSAGE across two nodes on one Redis (tx/s)')):
        if key in r:
            rate = r[key]['rate']
            row(label, fmt(rate), '', fmt(rate / fast if fast else None, '%.2f'),
                "x (b')" if fast else '')
            row('    p50 / p99 latency (ms)', '%s / %s' % (r[key]['latency_ms']['p50'],
                                                         r[key]['latency_ms']['p99']))
    if one and two and one['rate']:
        row('    across two nodes / within one', '', '', fmt(two['rate'] / one['rate'], '%.2f'))
    first = r.get('f_workers_1', {}).get('sustained_rate')
    for workers in a.workers if 'f' in a.only.split(',') else ():
        part = r.get('f_workers_%d' % workers)
        if not part:
            continue
        rate = part.get('sustained_rate')
        row('(f) REGISTER/s sustained, serve --workers %d --redis' % workers, fmt(rate), '',
            fmt(rate / first if rate and first else None, '%.2f'), 'x 1 worker' if first else '')
        cpu = part.get('estimate_cpu', {})
        capacity = part.get('capacity_closed_loop') or 0
        if capacity:
            serve_cpu = sum(v for k, v in cpu.items() if k.startswith('worker'))
            row('    CPU per REGISTER (us): workers / Redis (closed loop, %.0f/s)' % capacity,
                '%s / %s' % (fmt(serve_cpu * 1e6 / capacity), fmt(cpu.get('redis', 0) * 1e6 / capacity)))
    per_call = {}
    for key, proc in (('i_serve', 'serve'), ('i_kamailio', 'kamailio')):
        part = r.get(key)
        if not part:
            continue
        row('(i) calls/s via %s (%d clients, %g s held; set-up p50/p99 ms %s/%s)' % (
            'serve' if proc == 'serve' else 'Kamailio', a.call_clients, a.call_hold,
            fmt(part['latency_ms']['p50'], '%.1f'), fmt(part['latency_ms']['p99'], '%.1f')),
            fmt(part['rate']), '', '', 'failures %d' % sum((part['errors'] or {}).values()))
        if part['rate'] and part['cpu'].get(proc):
            per_call[proc] = part['cpu'][proc] * 1e6 / part['rate']
    if len(per_call) == 2:
        ratio = per_call['kamailio'] / per_call['serve']
        row('(i) CPU per call: serve / Kamailio (us); per-CPU ratio', '%.0f / %.0f' % (
            per_call['serve'], per_call['kamailio']), '>= 0.4', fmt(ratio, '%.2f'),
            'met' if ratio >= 0.4 else 'NOT met')
    ws_h, udp_h = r.get('h_ws'), r.get('h_udp')
    if ws_h and udp_h:
        row("(h) MESSAGE via serve, WebSocket callee (tx/s)", fmt(ws_h['rate']), '', '1.00')
        row("(h) MESSAGE via serve, callee over UDP (tx/s)", fmt(udp_h['rate']), '',
            fmt(udp_h['rate'] / ws_h['rate'] if ws_h['rate'] else None, '%.2f'), 'x WS')
        for label, part in (('WS', ws_h), ('UDP', udp_h)):
            row('    %s: p50 / p99 (ms), serve CPU per tx' % label, '%s / %s, %s' % (
                part['latency_ms']['p50'], part['latency_ms']['p99'],
                us_per_tx({'serve': part['cpu'].get('serve', 0)}, part['rate'])))
    g = r.get('g')
    if g:
        for step, base in zip(g['sip'], g['p2p'], strict=False):
            ratio = (step['answerer_cpu_per_call'] / base['answerer_cpu_per_call']
                     if base['answerer_cpu_per_call'] else None)
            row('(g) bot CPU per PCMU echo call (%% of a core), %d calls' % step['calls'],
                fmt(step['answerer_cpu_per_call'] * 100, '%.2f'), '', fmt(ratio, '%.2f'),
                'x aiortc')
            row('    RTP loss: via serve / peer-to-peer (%)', '%.2f / %.2f' % (
                step['loss'] * 100, base['loss'] * 100))
        over = [step['calls'] for step in g['sip'] if step['loss'] > 0.01]
        row('(g) concurrent calls where the loss passes 1 %', str(over[0]) if over else
            '> %d' % g['sip'][-1]['calls'] if g['sip'] else '-')
    width = max(len(x[0]) for x in rows) if rows else 10
    e = r.get('e')
    lines = ['%-*s %10s %14s %7s %8s' % (width, 'measurement', 'value', 'target', 'ratio', ''),
             '-' * (width + 43)]
    lines += ['%-*s %10s %14s %7s %8s' % (width, *x) for x in rows]
    m = machine()
    lines.append('')
    lines.append('machine: %s, %s RAM, %s; Python %s, websockets %s, aiosip %s, aiosip-ws %s, '
                 'Kamailio %s; event loop %s' % (
                     m['cpu'], m['memory'], m['os'], m['python'], m['websockets'], m['aiosip'],
                     m['aiosip-ws'], m['kamailio'], m['loop']))
    lines.append('(a)/(b): %d clients x %d outstanding, closed loop, %g s; (c): open loop, '
                 '%g s per step, %d generator processes; every process shares the same cores.'
                 % (a.clients, a.window, a.duration, a.register_duration, a.generators))
    busy = [v for v in r.get('background_cpu', [])]
    if busy:
        lines.append('load from other processes before each measurement: max %.0f %% of a core'
                     % (100 * max(busy)))
    cpu_notes = []
    for key in ('a', 'b', "b'", "b''", 'b-K', 'i_serve', 'i_kamailio'):
        if key in r:
            cpu_notes.append('(%s) %s; CPU per transaction: %s' % (
                key, cpu_text(r[key]['cpu']), us_per_tx(r[key]['cpu'], r[key]['rate'])))
    for key, name in (('c_serve', 'serve'), ('c_kamailio', 'kamailio')):
        rep = r.get(key, {}).get('report')
        if rep:
            cpu_notes.append('(c) %s at its sustained rate: %s' % (name,
                                                                   cpu_text(rep['server_cpu'])))
    if cpu_notes:
        lines.append('CPU per process, busiest second (100% = one core):')
        lines += ['  ' + note for note in cpu_notes]
    if e:
        lines.append('')
        lines.append('(e) per-call costs (best of 5 x 2000, this process):')
        lines += ['  %8.1f us  %s' % (us, name) for name, us in e.items()]
    return '\n'.join(lines)


def print_profiles(bench: Bench) -> str:
    out = []
    for name, path in bench.profiles.items():
        if path is None or not Path(path).exists():
            out.append('%s: no profile written' % name)
            continue
        summary = profile_summary(Path(path))
        bench.results.setdefault('profiles', {})[name] = summary
        out.append('%s: %.2f s busy (%.2f s waiting in epoll/stdin)' % (
            name, summary['busy_s'], summary['idle_s']))
        out.append('  self time: ' + ', '.join('%s %.1f%%' % item for item in
                                               summary['self_time_pct'].items()))
        out.append('  inclusive (cumulative s, calls):')
        for func, cum, calls in summary['top_cumulative']:
            out.append('    %7.3f  %8d  %s' % (cum, calls, func))
    return '\n'.join(out)


# ============================================================================ main
def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1].startswith('_'):
        return helper_main(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--only', default='a,b,c,d,e,f,i',
                        help='parts to run (default a,b,c,d,e,f,i; g, media, needs the [media] '
                        'extra and unshare; h: bridging to UDP; j: the media relay, needs '
                        'rtpengine-daemon and SIPp; k: the cost of --hep)')
    parser.add_argument('--clients', type=int, default=50, help='(a)/(b) client connections')
    parser.add_argument('--window', type=int, default=4, help='(a)/(b) outstanding per client')
    parser.add_argument('--duration', type=float, default=8.0, help='(a)/(b) seconds')
    parser.add_argument('--register-clients', type=int, default=1000, help='(c) clients')
    parser.add_argument('--register-duration', type=float, default=6.0, help='(c) seconds per step')
    parser.add_argument('--p99-rate', type=int, default=5000, help='(c) REGISTER/s of the p99 run')
    parser.add_argument('--generators', type=int, default=2,
                        help='(c) aiosip-ws bench processes sharing the load (default 2)')
    parser.add_argument('--max-idle', type=int, default=10 ** 6,
                        help='(d) most idle clients (default: as many as the open-file hard '
                        'limit allows serve, less its reserve)')
    parser.add_argument('--no-kamailio', action='store_true')
    parser.add_argument('--workers', type=lambda text: [int(n) for n in text.split(',')],
                        default=[1, 2, 4], help='(f) serve --workers counts (default 1,2,4)')
    parser.add_argument('--kamailio-children', type=int, default=2,
                        help='Kamailio tcp_children (default 2: one per core here)')
    parser.add_argument('--profile', action='store_true', help='also run under cProfile and '
                        'print where the time goes')
    parser.add_argument('--max-calls', type=int, default=160, help='(g) most concurrent calls')
    parser.add_argument('--call-clients', type=int, default=200,
                        help='(i) clients, each calling the next one (default 200)')
    parser.add_argument('--call-hold', type=float, default=0.5,
                        help='(i) seconds each call is held (default 0.5)')
    parser.add_argument('--relay-calls', type=int, default=250,
                        help='(j) calls per run (default 250)')
    parser.add_argument('--relay-rate', type=float, default=25.0,
                        help='(j) calls started per second (default 25)')
    parser.add_argument('--relay-hold', type=float, default=1.0,
                        help='(j) seconds of RTP per call (default 1)')
    parser.add_argument('--relay-pairs', type=int, default=3,
                        help='(j) serve/Kamailio pairs of runs (default 3)')
    parser.add_argument('--hep-pairs', type=int, default=3,
                        help='(k) pairs of (b\') runs with and without --hep (default 3)')
    parser.add_argument('--app-rounds', type=int, default=3,
                        help='(l) rounds of runs without an app, with a no-op app, with '
                        'blocklist.py (default 3)')
    parser.add_argument('--app-register-rate', type=int, default=1500,
                        help='(l) REGISTER/s of the REGISTER runs (default 1500)')
    parser.add_argument('--media-hold', type=float, default=8.0,
                        help='(g) seconds measured per step')
    parser.add_argument('--json', metavar='FILE', help='write every figure to FILE')
    parser.add_argument('--keep', action='store_true', help='keep the work directory (logs)')
    parser.add_argument('--loop', choices=('auto', 'asyncio', 'uvloop'), default='auto',
                        help='the event loop of serve, the bench clients and the raw '
                        'baselines alike (default auto: uvloop when installed, as with '
                        '"aiosip-ws[fast]", which the Kamailio ratios assume)')
    args = parser.parse_args()
    os.environ['AIOSIP_WS_LOOP'] = args.loop          # every child process inherits it
    raise_nofile()
    parts = set(args.only.split(','))
    tmp = Path(tempfile.mkdtemp(prefix='aiosip-ws-bench-'))
    bench = Bench(args, tmp)
    started = time.monotonic()
    try:
        if 'a' in parts:
            bench.part_a()
        if 'b' in parts:
            bench.part_b(fast=False)
            bench.part_b(fast=True)
            bench.part_b(fast=True, lean=True)
            if not args.no_kamailio:
                bench.part_b(fast=True, via_kamailio=True)
        if 'c' in parts:
            bench.part_c()
        if 'd' in parts:
            bench.part_d()
        if 'e' in parts:
            bench.part_e()
        if 'f' in parts:
            bench.part_f()
        if 'g' in parts:
            bench.part_g()
        if 'h' in parts:
            bench.part_h()
        if 'i' in parts:
            bench.part_i()
        if 'j' in parts:
            bench.part_j()
        if 'k' in parts:
            bench.part_k()
        if 'l' in parts:
            bench.part_l()
        if args.profile:
            bench.profile_runs()
        table = report(bench)
        print()
        print(table)
        if args.profile:
            print()
            print(print_profiles(bench))
        print('\n(total %.0f s; work directory %s)' % (time.monotonic() - started, tmp))
        if args.json:
            bench.results['machine'] = machine()
            Path(args.json).write_text(json.dumps(bench.results, indent=2, default=str))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def event_loop() -> str:
    """The loop every process of the run uses (``--loop``, passed on to the children as
    ``$AIOSIP_WS_LOOP``, which ``aiosip-ws serve`` and ``bench`` read too): ``uvloop
    VERSION`` or ``asyncio``."""
    choice = os.environ.get('AIOSIP_WS_LOOP', 'asyncio')
    if choice in ('auto', 'uvloop'):
        try:
            import uvloop
        except ImportError:
            if choice == 'uvloop':
                raise SystemExit('--loop uvloop: pip install "aiosip-ws[fast]"') from None
        else:
            return 'uvloop %s' % uvloop.__version__
    return 'asyncio'


def run_helper(coro: Any) -> None:
    """A helper's main coroutine on the run's event loop (the raw baselines run on the
    same loop as serve, so that a ratio compares servers, not loops)."""
    if event_loop().startswith('uvloop'):
        import uvloop
        uvloop.run(coro)
    else:
        asyncio.run(coro)


def mode_hep_sink() -> None:
    """A HEP collector that only counts: READY PORT, then COUNT N once stdin closes."""
    import socket
    import threading
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.bind(('127.0.0.1', 0))
    count = [0]

    def receive() -> None:
        while True:
            data = sock.recv(65535)
            if data[:4] == b'HEP3':
                count[0] += 1
    threading.Thread(target=receive, daemon=True).start()
    print('READY %d' % sock.getsockname()[1], flush=True)
    sys.stdin.read()
    print('COUNT %d' % count[0], flush=True)


def helper_main(argv: list[str]) -> int:
    mode, rest = argv[0], argv[1:]
    if mode == '_raw-relay':
        run_helper(mode_raw_relay())
    elif mode == '_raw-callee':
        run_helper(mode_raw_callee(rest[0]))
    elif mode == '_raw-clients':
        run_helper(mode_raw_clients(rest[0], int(rest[1]), int(rest[2]), float(rest[3]),
                                    REGISTER_TEXT if rest[4:] == ['register'] else MESSAGE_TEXT))
    elif mode == '_raw-echo':
        run_helper(mode_raw_echo())
    elif mode == '_lean-relay':
        run_helper(mode_lean_relay())
    elif mode == '_callee':
        run_helper(mode_callee(rest[0], rest[1], '--fast' in rest))
    elif mode == '_media-callers':
        asyncio.run(mode_media_callers(rest[0], rest[1], int(rest[2]), float(rest[3])))
    elif mode == '_udp-callee':
        run_helper(mode_udp_callee(rest[0], rest[1]))
    elif mode == '_p2p-echo':
        asyncio.run(mode_p2p_echo())
    elif mode == '_media-part':
        mode_media_part(float(rest[0]), int(rest[1]))
    elif mode == '_hep-sink':
        mode_hep_sink()
    elif mode == '_idle-clients':
        run_helper(mode_idle_clients(rest[0], int(rest[1]), int(rest[2]), rest[3], int(rest[4])))
    else:
        raise SystemExit('unknown helper mode %s' % mode)
    return 0


if __name__ == '__main__':
    sys.exit(main())
