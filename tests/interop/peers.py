"""Real SIP-over-WebSocket peers for interop tests.

* ``kamailio(...)``: runs Kamailio 5.6 in the foreground with
  ``tests/interop/kamailio/kamailio.cfg`` (registrar + proxy on 127.0.0.1,
  ws:// and optionally wss://, static digest credentials).
* ``NodeAgent``: drives ``node/jssip_agent.js`` or ``node/sipjs_agent.js``
  (JsSIP 3.13 / SIP.js 0.21) over a JSON line protocol.
* helpers: ``free_port()``, ``ensure_kamailio()``, ``ensure_node_modules()``,
  ``make_test_certs()``, ``digest_authorization()``.

Only the standard library is needed here (tests may add ``websockets``).
Nothing in this module talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

HERE = Path(__file__).resolve().parent
KAMAILIO_CFG = HERE / "kamailio" / "kamailio.cfg"
NODE_DIR = HERE / "node"

HOST = "127.0.0.1"

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
NODE_PACKAGES = ("jssip", "sip.js", "ws")


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def free_port(host: str = HOST) -> int:
    """Return a TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def digest_authorization(
    challenge: str,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    header: str = "Authorization",
    cnonce: Optional[str] = None,
    nc: int = 1,
) -> str:
    """Build an ``Authorization:`` (or ``Proxy-Authorization:``) header line
    answering an MD5 digest ``challenge`` (the WWW-Authenticate value),
    qop=auth when offered. For raw-socket tests; returns ``"Name: value"``."""
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge.split(None, 1)[1]))
    realm, nonce = params["realm"], params["nonce"]
    ha1 = hashlib.md5(f"{username}:{realm}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
    fields = [
        f'username="{username}"', f'realm="{realm}"', f'nonce="{nonce}"',
        f'uri="{uri}"', "algorithm=MD5",
    ]
    if "auth" in qops:
        cnonce = cnonce or secrets.token_hex(8)
        ncs = f"{nc:08x}"
        resp = hashlib.md5(
            f"{ha1}:{nonce}:{ncs}:{cnonce}:auth:{ha2}".encode()).hexdigest()
        fields += [f'response="{resp}"', "qop=auth", f'cnonce="{cnonce}"', f"nc={ncs}"]
    else:
        resp = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
        fields.append(f'response="{resp}"')
    if "opaque" in params:
        fields.append(f'opaque="{params["opaque"]}"')
    return f"{header}: Digest " + ", ".join(fields)


# --------------------------------------------------------------------------
# Kamailio
# --------------------------------------------------------------------------

def kamailio_binary() -> Optional[str]:
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
    wss_port: Optional[int]
    sip_port: Optional[int]
    log_path: Path
    auth: bool
    realm: str = TEST_REALM
    domain: str = TEST_DOMAIN
    password: str = TEST_PASSWORD
    users: tuple = TEST_USERS
    host: str = HOST
    keepalive: Optional[int] = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}/"

    @property
    def wss_url(self) -> Optional[str]:
        return f"wss://{self.host}:{self.wss_port}/" if self.wss_port else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_text(), lines)

    def _log_match(self, rx: re.Pattern, deadline: float, timeout: float) -> Optional[re.Match]:
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
    """True once Kamailio answers a WebSocket upgrade with 101."""
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    req = (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
           f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n")
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(req.encode())
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            if not data.startswith(b"HTTP/1.1 101"):
                return False
            # close cleanly (masked Close 1000, wait for the server's Close):
            # an abrupt TCP close leaves Kamailio pinging a "closing" link
            mask = os.urandom(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"\x03\xe8"))
            with contextlib.suppress(OSError):
                s.sendall(b"\x88\x82" + mask + payload)
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
    wss_port: Optional[int] = None,
    cert: Optional[str] = None,
    key: Optional[str] = None,
    auth: bool = True,
    proxy_auth: bool = False,
    keepalive: Optional[int] = 5,
    sip_port: Optional[int] = None,
    msgdump: bool = True,
    debug_level: int = 2,
    realm: str = TEST_REALM,
    domain: str = TEST_DOMAIN,
    defines: tuple = (),
    startup_timeout: float = 15.0,
    cfg: Optional[os.PathLike] = None,
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
            if (pidfile.exists() and all(_port_open(HOST, p) for p in ports)
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


# --------------------------------------------------------------------------
# A frame-level WebSocket client (stdlib only)
# --------------------------------------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class RawWebSocket:
    """Minimal RFC 6455 client that exposes every frame, control frames
    included (the ``websockets`` library answers pings silently). Meant for
    observing a server's keep-alives and exact bytes; no extensions, no
    fragmentation on send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 response_head: str):
        self.reader = reader
        self.writer = writer
        self.response_head = response_head
        self.frames: list[tuple[int, bytes]] = []  # every frame received

    @property
    def response_headers(self) -> list[tuple[str, str]]:
        out = []
        for line in self.response_head.split("\r\n")[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                out.append((k.strip(), v.strip()))
        return out

    @classmethod
    async def connect(cls, host: str, port: int, *, path: str = "/",
                      subprotocols: tuple = ("sip",), ssl=None,
                      timeout: float = 5.0) -> "RawWebSocket":
        import base64
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl,
                                    server_hostname=host if ssl else None), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        if subprotocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        text = head.decode("latin-1")
        if not text.startswith("HTTP/1.1 101"):
            writer.close()
            raise ConnectionError(f"WebSocket handshake refused: {text!r}")
        return cls(reader, writer, text)

    async def send_frame(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = bytes([0x80 | opcode, 0x80 | n])
        elif n < 65536:
            head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)
        await self.writer.drain()

    async def send_text(self, text: str) -> None:
        await self.send_frame(OP_TEXT, text.encode("utf-8"))

    async def recv_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """Next frame as (opcode, payload); fragments are not reassembled."""
        async def read():
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            mask = await self.reader.readexactly(4) if b1 & 0x80 else None
            data = await self.reader.readexactly(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            return b0 & 0x0F, data
        frame = await asyncio.wait_for(read(), timeout)
        self.frames.append(frame)
        return frame

    async def recv_text(self, timeout: float = 5.0, *, auto_pong: bool = True) -> str:
        """Next text/binary message as str; answers pings on the way."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            op, data = await self.recv_frame(max(0.01, deadline - loop.time()))
            if op == OP_PING and auto_pong:
                await self.send_frame(OP_PONG, data)
            elif op in (OP_TEXT, OP_BINARY):
                return data.decode("utf-8", "replace")
            elif op == OP_CLOSE:
                raise ConnectionError(f"server closed the WebSocket: {data!r}")

    async def close(self, code: int = 1000) -> None:
        with contextlib.suppress(Exception):
            await self.send_frame(OP_CLOSE, code.to_bytes(2, "big"))
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)


# --------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------

@dataclasses.dataclass
class TestCerts:
    ca_cert: Path
    cert: Path
    key: Path


def make_test_certs(tmpdir, *, host: str = HOST) -> TestCerts:
    """Create a throw-away CA and a server certificate for ``host`` (IP SAN
    127.0.0.1 + DNS localhost), with the ``openssl`` command or else the
    ``cryptography`` package. Point NODE_EXTRA_CA_CERTS /
    ``ssl.create_default_context(cafile=...)`` at ``ca_cert``."""
    openssl = shutil.which("openssl")
    if not openssl:
        try:
            return _make_test_certs_cryptography(tmpdir, host=host)
        except ImportError:
            raise RuntimeError(
                "neither the openssl command nor the cryptography package is available "
                "(apt-get install -y openssl)") from None
    d = Path(tmpdir)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = d / "ca.key", d / "ca.pem"
    key, csr, cert = d / "server.key", d / "server.csr", d / "server.pem"
    ext = d / "server.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:{host},DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    cmds = [
        [openssl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_cert),
         "-days", "2", "-subj", "/CN=aiosip-ws interop test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", "-new", *ec, "-keyout", str(key), "-out", str(csr),
         "-subj", f"/CN={host}"],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca_cert),
         "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
         "-days", "2", "-extfile", str(ext)],
    ]
    for cmd in cmds:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout}{res.stderr}")
    return TestCerts(ca_cert=ca_cert, cert=cert, key=key)


def _make_test_certs_cryptography(tmpdir, *, host: str = HOST) -> TestCerts:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = Path(tmpdir)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2)

    def key_usage(**on):
        names = ("digital_signature", "content_commitment", "key_encipherment",
                 "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                 "encipher_only", "decipher_only")
        return x509.KeyUsage(**{n: on.get(n, False) for n in names})

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aiosip-ws interop test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(digital_signature=True, key_encipherment=True),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out = TestCerts(ca_cert=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")
    out.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    return out


# --------------------------------------------------------------------------
# Node agents (JsSIP / SIP.js)
# --------------------------------------------------------------------------

AGENT_SCRIPTS = {
    "jssip": NODE_DIR / "jssip_agent.js",
    "sipjs": NODE_DIR / "sipjs_agent.js",
}


def node_binary() -> str:
    node = os.environ.get("NODE_BIN") or shutil.which("node")
    if not node:
        raise RuntimeError("node not found (Node.js 18+ is needed; set NODE_BIN)")
    return node


def ensure_node_modules(*, timeout: float = 600) -> None:
    """Install tests/interop/node dependencies (``npm ci``) unless present."""
    node = node_binary()
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    m = re.match(r"v(\d+)", out.stdout.strip())
    if not m or int(m.group(1)) < 18:
        raise RuntimeError(f"Node.js 18+ needed, found {out.stdout.strip() or out.stderr.strip()}")
    mods = NODE_DIR / "node_modules"
    if all((mods / pkg / "package.json").exists() for pkg in NODE_PACKAGES):
        return
    npm = shutil.which("npm")
    if not npm:
        raise RuntimeError(f"node_modules missing in {NODE_DIR} and npm not found")
    sub = "ci" if (NODE_DIR / "package-lock.json").exists() else "install"
    cmd = [npm, sub, "--no-audit", "--no-fund"]
    try:
        res = subprocess.run(cmd, cwd=NODE_DIR, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"`{' '.join(cmd)}` in {NODE_DIR} timed out after {timeout}s") from exc
    if res.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` in {NODE_DIR} failed ({res.returncode}):\n"
            f"{_tail(res.stdout)}\n{_tail(res.stderr)}")
    missing = [p for p in NODE_PACKAGES if not (mods / p / "package.json").exists()]
    if missing:
        raise RuntimeError(f"npm {sub} succeeded but {missing} are still missing in {mods}")


def _summarize(ev: dict) -> str:
    name = ev.get("event")
    if name == "raw":
        first = ev.get("data", "").split("\r\n", 1)[0]
        return f"raw[{ev.get('dir')}] {first!r}"
    rest = {k: v for k, v in ev.items() if k not in ("event", "stack", "headers")}
    return f"{name} {json.dumps(rest)[:200]}" if rest else str(name)


class AgentError(RuntimeError):
    pass


class NodeAgent:
    """One JsSIP or SIP.js user agent in a Node subprocess.

    ::

        async with NodeAgent("jssip", url=peer.ws_url, aor="sip:alice@example.com",
                             password="secret") as alice:
            await alice.send({"cmd": "register"})
            await alice.wait_event("registered")

    ``wait_event`` returns the first matching event that no earlier
    ``wait_event`` call returned, so waiting twice for "registered" after
    two registrations works. ``events`` holds everything received.
    """

    def __init__(
        self,
        kind: str,
        *,
        url: str,
        aor: str,
        user: Optional[str] = None,
        password: Optional[str] = None,
        display: Optional[str] = None,
        expires: Optional[int] = None,
        keepalive: Optional[int] = None,
        user_agent: Optional[str] = None,
        debug: bool = False,
        env: Optional[dict] = None,
        name: Optional[str] = None,
        stderr_lines: int = 200,
    ):
        kind = {"sip.js": "sipjs", "JsSIP": "jssip"}.get(kind, kind)
        if kind not in AGENT_SCRIPTS:
            raise ValueError(f"kind must be one of {sorted(AGENT_SCRIPTS)}")
        self.kind = kind
        self.name = name or f"{kind}:{aor}"
        self.args = [str(AGENT_SCRIPTS[kind]), "--url", url, "--aor", aor]
        for flag, value in (("--user", user), ("--password", password),
                            ("--display", display), ("--expires", expires),
                            ("--keepalive", keepalive), ("--user-agent", user_agent)):
            if value is not None:
                self.args += [flag, str(value)]
        if debug:
            self.args.append("--debug")
        self.env = dict(os.environ)
        if env:
            self.env.update({k: str(v) for k, v in env.items()})
        self.events: list[dict] = []
        self.stderr: collections.deque = collections.deque(maxlen=stderr_lines)
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.returncode: Optional[int] = None
        self._returned: set[int] = set()
        self._cond: Optional[asyncio.Condition] = None
        self._tasks: list[asyncio.Task] = []
        self._eof = False

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> "NodeAgent":
        self._cond = asyncio.Condition()
        self.proc = await asyncio.create_subprocess_exec(
            node_binary(), *self.args, cwd=str(NODE_DIR), env=self.env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=16 * 1024 * 1024)
        self._tasks = [asyncio.create_task(self._read_stdout()),
                       asyncio.create_task(self._read_stderr())]
        return self

    async def __aenter__(self) -> "NodeAgent":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self, timeout: float = 8.0) -> Optional[int]:
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.send({"cmd": "quit"})
            with contextlib.suppress(Exception):
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.wait_for(proc.wait(), 5)
        for t in self._tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(t, 2)
        self.returncode = proc.returncode
        return self.returncode

    # -- I/O --------------------------------------------------------------

    async def _read_stdout(self) -> None:
        assert self.proc and self.proc.stdout
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                text = line.decode("utf-8", "replace").strip()
                if not text:
                    continue
                try:
                    ev = json.loads(text)
                    if not isinstance(ev, dict):
                        raise ValueError
                except ValueError:
                    ev = {"event": "_nonjson", "line": text}
                async with self._cond:
                    self.events.append(ev)
                    self._cond.notify_all()
        finally:
            async with self._cond:
                self._eof = True
                self._cond.notify_all()

    async def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                break
            self.stderr.append(line.decode("utf-8", "replace").rstrip("\n"))

    async def send(self, command: dict | None = None, **fields: Any) -> None:
        """Send one command, e.g. ``send({"cmd": "register"})`` or
        ``send(cmd="message", to="sip:bob@example.com", body="hi")``."""
        cmd = dict(command or {}, **fields)
        if self.proc is None or self.proc.returncode is not None:
            raise AgentError(f"{self.name} is not running (events: {self.event_names()})")
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()

    async def register(self, timeout: float = 10) -> dict:
        await self.send(cmd="register")
        return await self.wait_event("registered", timeout=timeout)

    async def unregister(self, timeout: float = 10) -> dict:
        await self.send(cmd="unregister")
        return await self.wait_event("unregistered", timeout=timeout)

    async def message(self, to: str, body: str, *, content_type: Optional[str] = None) -> None:
        cmd = {"cmd": "message", "to": to, "body": body}
        if content_type:
            cmd["contentType"] = content_type
        await self.send(cmd)

    # -- events -----------------------------------------------------------

    def event_names(self) -> list[str]:
        return [e.get("event") for e in self.events]

    def raw(self, dir: Optional[str] = None) -> list[str]:
        """Texts of the WebSocket data frames seen so far (``dir`` "in"/"out")."""
        return [e.get("data", "") for e in self.events
                if e.get("event") == "raw" and (dir is None or e.get("dir") == dir)]

    def sip(self, dir: Optional[str] = None, start: Optional[str] = None) -> list[str]:
        """Raw SIP messages (frames that are not just CRLF keep-alives),
        optionally only those whose first line starts with ``start``
        (e.g. "REGISTER", "MESSAGE", "SIP/2.0 401")."""
        out = []
        for data in self.raw(dir):
            if not data.strip("\r\n"):
                continue
            if start is None or data.startswith(start):
                out.append(data)
        return out

    def _describe(self) -> str:
        lines = [f"events seen by {self.name} ({len(self.events)}):"]
        lines += ["  " + _summarize(e) for e in self.events[-60:]]
        if self.stderr:
            lines.append("stderr tail:")
            lines += ["  " + s for s in list(self.stderr)[-20:]]
        if self.proc is not None and self.proc.returncode is not None:
            lines.append(f"process exited with code {self.proc.returncode}")
        return "\n".join(lines)

    async def wait_event(
        self,
        name: str,
        timeout: float = 10,
        predicate: Optional[Callable[[dict], bool]] = None,
        *,
        consume: bool = True,
    ) -> dict:
        """Wait for an event called ``name`` (and matching ``predicate``).

        Raises TimeoutError listing the events seen so far, or AgentError
        if the agent exits (or reports {"event":"error"}) first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._cond:
            while True:
                for i, ev in enumerate(self.events):
                    if i in self._returned or ev.get("event") != name:
                        continue
                    if predicate is not None and not predicate(ev):
                        continue
                    if consume:
                        self._returned.add(i)
                    return ev
                if name != "error":
                    errors = [e for e in self.events if e.get("event") == "error"]
                    if errors:
                        raise AgentError(
                            f"{self.name} reported an error while waiting for "
                            f"{name!r}: {errors[0].get('message')}\n{self._describe()}")
                if self._eof:
                    # let the process finish so the exit code is known
                    if self.proc is not None:
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(asyncio.shield(self.proc.wait()), 1)
                    raise AgentError(
                        f"{self.name} exited before event {name!r}\n{self._describe()}")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no {name!r} event from {self.name} within {timeout}s\n"
                        f"{self._describe()}")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._cond.wait(), remaining)
