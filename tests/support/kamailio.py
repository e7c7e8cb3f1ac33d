"""Kamailio 5.6 as a test peer: ``kamailio(...)`` runs it in the foreground with
``tests/interop/kamailio/kamailio.cfg`` (registrar + proxy on 127.0.0.1, ws:// and
optionally wss://, static digest credentials); ``ensure_kamailio()`` checks it is installed.

Nothing here talks to anything but 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support import REPO, tail
from tests.support.net import HOST, port_open
from tests.support.websocket import Opcode, check_response, encode_frame, handshake_request, new_key

KAMAILIO_CFG = REPO / "tests" / "interop" / "kamailio" / "kamailio.cfg"

#: Test users known to kamailio.cfg (all share TEST_PASSWORD).
TEST_USERS = ("alice", "bob", "carol", "dave")
TEST_PASSWORD = "secret"
TEST_REALM = "127.0.0.1"
TEST_DOMAIN = "example.com"

KAMAILIO_REQUIRED_MODULES = (
    "tm", "sl", "rr", "pv", "maxfwd", "usrloc", "registrar", "textops",
    "siputils", "xlog", "sanity", "auth", "nathelper", "xhttp", "websocket",
)
KAMAILIO_APT_HINT = (
    "install it with: apt-get install -y kamailio kamailio-websocket-modules "
    "kamailio-tls-modules"
)


def kamailio_binary() -> str | None:
    env = os.environ.get("KAMAILIO_BIN")
    if env:
        return env
    found = shutil.which("kamailio")
    if found:
        return found
    for cand in ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio"):
        if os.access(cand, os.X_OK):
            return cand
    return None


def _kamailio_module_dirs(binary: str) -> list[str]:
    dirs = []
    env = os.environ.get("KAMAILIO_MODULES")
    if env:
        dirs.append(env)
    try:
        out = subprocess.run(
            [binary, "-I"], capture_output=True, text=True, timeout=10)
        m = re.search(r"Default paths to modules:\s*(\S+)", out.stdout + out.stderr)
        if m:
            dirs.extend(m.group(1).split(":"))
    except (OSError, subprocess.SubprocessError):
        pass
    return dirs


def ensure_kamailio(*, tls: bool = False) -> str:
    """Check that Kamailio and the modules kamailio.cfg loads are installed.

    Returns the version string (e.g. ``"5.6.3"``); raises RuntimeError with
    a clear message otherwise."""
    binary = kamailio_binary()
    if binary is None or not os.access(binary, os.X_OK):
        raise RuntimeError(f"kamailio binary not found (set KAMAILIO_BIN); {KAMAILIO_APT_HINT}")
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"cannot run {binary} -v: {exc}") from exc
    m = re.search(r"kamailio (\d+\.\d+\.\d+)", out.stdout + out.stderr)
    if not m:
        raise RuntimeError(f"unexpected output from {binary} -v: {out.stdout!r} {out.stderr!r}")
    version = m.group(1)
    major_minor = tuple(int(x) for x in version.split(".")[:2])
    if major_minor < (5, 4):
        raise RuntimeError(f"kamailio {version} is too old, 5.6 is expected")
    modules = list(KAMAILIO_REQUIRED_MODULES) + (["tls"] if tls else [])
    dirs = _kamailio_module_dirs(binary)
    missing = [mod for mod in modules
               if not any(os.path.exists(os.path.join(d, mod + ".so")) for d in dirs)]
    if missing:
        raise RuntimeError(
            f"kamailio {version} modules missing: {', '.join(missing)} "
            f"(looked in {', '.join(dirs) or 'no module directory'}); {KAMAILIO_APT_HINT}")
    return version


@dataclasses.dataclass
class KamailioPeer:
    """What ``kamailio()`` yields."""

    process: subprocess.Popen
    ws_port: int
    wss_port: int | None
    sip_port: int | None
    log_path: Path
    auth: bool
    realm: str = TEST_REALM
    domain: str = TEST_DOMAIN
    password: str = TEST_PASSWORD
    users: tuple = TEST_USERS
    host: str = HOST
    keepalive: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}/"

    @property
    def wss_url(self) -> str | None:
        return f"wss://{self.host}:{self.wss_port}/" if self.wss_port else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_text(), lines)

    def _log_match(self, rx: re.Pattern, deadline: float, timeout: float) -> re.Match | None:
        """The match in the log so far, None to poll again, TimeoutError past ``deadline``."""
        m = rx.search(self.log_text())
        if m:
            return m
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{rx.pattern!r} not in kamailio log after {timeout}s; tail:\n{self.log_tail()}")
        return None

    def wait_log(self, pattern: str, timeout: float = 5.0) -> re.Match:
        """Poll Kamailio's log until ``pattern`` (a regex) appears."""
        deadline, rx = time.monotonic() + timeout, re.compile(pattern, re.M)
        while (m := self._log_match(rx, deadline, timeout)) is None:
            time.sleep(0.1)
        return m

    async def async_wait_log(self, pattern: str, timeout: float = 5.0) -> re.Match:
        """``wait_log`` without blocking the event loop."""
        deadline, rx = time.monotonic() + timeout, re.compile(pattern, re.M)
        while (m := self._log_match(rx, deadline, timeout)) is None:
            await asyncio.sleep(0.1)
        return m


def _ws_handshake_probe(host: str, port: int, timeout: float = 1.0) -> bool:
    """True once Kamailio answers a WebSocket upgrade with 101 (a blocking probe)."""
    key = new_key()
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(handshake_request(host, port, key))
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            check_response(data.decode("latin-1"), key)     # ConnectionError unless a 101
            # close cleanly (masked Close 1000, wait for the server's Close):
            # an abrupt TCP close leaves Kamailio pinging a "closing" link
            with contextlib.suppress(OSError):
                s.sendall(encode_frame(Opcode.CLOSE, (1000).to_bytes(2, "big")))
                while s.recv(4096):
                    pass
            return True
    except OSError:
        return False


def _stop_process_group(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM Kamailio's main process, wait, then SIGKILL its process group
    (it was started in its own session, so the group holds only Kamailio)."""
    pgid = proc.pid
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    # children normally exit with the main process; make sure of it
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.2)
            return
        time.sleep(0.05)


@contextlib.contextmanager
def kamailio(
    tmpdir,
    *,
    ws_port: int,
    wss_port: int | None = None,
    cert: str | None = None,
    key: str | None = None,
    auth: bool = True,
    proxy_auth: bool = False,
    keepalive: int | None = 5,
    sip_port: int | None = None,
    msgdump: bool = True,
    debug_level: int = 2,
    realm: str = TEST_REALM,
    domain: str = TEST_DOMAIN,
    defines: tuple = (),
    startup_timeout: float = 15.0,
    cfg: os.PathLike | None = None,
) -> Iterator[KamailioPeer]:
    """Run Kamailio in the foreground for the duration of the ``with`` block.

    * ``ws_port``: ws:// listener on 127.0.0.1 (required).
    * ``wss_port`` + ``cert`` + ``key``: also a wss:// listener (PEM files).
    * ``auth``: digest-challenge REGISTER (401); ``proxy_auth`` additionally
      challenges other initial requests (407).
    * ``keepalive``: seconds of idleness before Kamailio pings a WebSocket
      (WS Ping frames); ``None`` or ``0`` disables its keepalives.
    * ``sip_port``: optional plain SIP listener (udp + tcp) on 127.0.0.1.
    * ``msgdump``: log every received request and every sent request
      (``RECV ...`` / ``SEND ...`` lines) to the log file.

    Kamailio's stdout+stderr go to ``<tmpdir>/kamailio.log``
    (``peer.log_text()``). On exit it is terminated and reaped; no process
    is left behind."""
    version = ensure_kamailio(tls=wss_port is not None)
    binary = kamailio_binary()
    tmp = Path(tmpdir)
    tmp.mkdir(parents=True, exist_ok=True)
    rundir = tmp / "kamailio-run"
    rundir.mkdir(exist_ok=True)
    pidfile = tmp / "kamailio.pid"
    log_path = tmp / "kamailio.log"
    cfg_path = Path(cfg) if cfg else KAMAILIO_CFG

    def quoted(name: str, value: str) -> str:
        if '"' in value or "\n" in value:
            raise ValueError(f"{name} must not contain quotes or newlines: {value!r}")
        return f'{name}="{value}"'

    args = [
        binary, "-DD", "-E", "-f", str(cfg_path), "-Y", str(rundir),
        "-P", str(pidfile), "-m", "64", "-M", "8", "-w", str(tmp),
        "-A", f"WS_PORT={int(ws_port)}",
        "-A", f"DEBUG_LEVEL={int(debug_level)}",
        "-A", quoted("AUTH_REALM", realm),
        "-A", quoted("SIP_DOMAIN", domain),
    ]
    if wss_port is not None:
        if not cert or not key:
            raise ValueError("wss_port needs cert= and key= (PEM file paths)")
        args += ["-A", "WITH_TLS", "-A", f"WSS_PORT={int(wss_port)}",
                 "-A", quoted("TLS_CERT", str(Path(cert).resolve())),
                 "-A", quoted("TLS_KEY", str(Path(key).resolve()))]
    if auth:
        args += ["-A", "WITH_AUTH"]
        if proxy_auth:
            args += ["-A", "WITH_PROXY_AUTH"]
    if keepalive:
        args += ["-A", "WS_KA_MECHANISM=1", "-A", f"WS_KA_TIMEOUT={int(keepalive)}"]
    else:
        args += ["-A", "WS_KA_MECHANISM=0"]
    if sip_port is not None:
        args += ["-A", f"SIP_PORT={int(sip_port)}"]
    if msgdump:
        args += ["-A", "WITH_MSGDUMP"]
    for d in defines:
        args += ["-A", d]

    with open(log_path, "ab") as logf:
        logf.write(("+ " + " ".join(args) + "\n").encode())
        logf.flush()
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            cwd=str(tmp), start_new_session=True)

    peer = KamailioPeer(
        process=proc, ws_port=int(ws_port), wss_port=wss_port, sip_port=sip_port,
        log_path=log_path, auth=auth, realm=realm, domain=domain,
        keepalive=keepalive or None)
    try:
        deadline = time.monotonic() + startup_timeout
        ports = [int(ws_port)] + ([int(wss_port)] if wss_port is not None else [])
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"kamailio {version} exited with code {proc.returncode} during "
                    f"startup; log tail ({log_path}):\n{peer.log_tail()}")
            if (pidfile.exists() and all(port_open(HOST, p) for p in ports)
                    and _ws_handshake_probe(HOST, int(ws_port))):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"kamailio did not accept WebSocket connections on "
                    f"{HOST}:{ports} within {startup_timeout}s; log tail ({log_path}):\n"
                    f"{peer.log_tail()}")
            time.sleep(0.1)
        yield peer
    finally:
        _stop_process_group(proc)
