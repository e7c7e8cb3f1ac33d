"""Shared fixtures: TLS material made by the tests, servers on 127.0.0.1, task hygiene."""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

import aiosip_ws  # noqa: F401  - makes aiosip 0.2.0 importable before anything else
from aiosip_ws.serve.relay import RelayServer
from tests.support import REPO



@dataclass
class CertFiles:
    ca_cert: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_cert))


def make_certificates(directory: Path, names: tuple[str, ...] = ('localhost',),
                      ips: tuple[str, ...] = ('127.0.0.1', '::1')) -> CertFiles:
    """A throw-away CA and a server certificate it signs, for ``names`` and ``ips``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'aiosip-ws test CA')])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    paths = CertFiles(directory / 'ca.pem', directory / 'server.pem', directory / 'server.key')
    paths.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return paths


@pytest.fixture(scope='session')
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certificates(tmp_path_factory.mktemp('tls'))


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


class ServeProcess:
    """``python -m aiosip_ws serve`` as a real process, its listening URLs read from stdout."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        self.proc = subprocess.Popen(
            [sys.executable, '-W', 'error::DeprecationWarning', '-m', 'aiosip_ws', 'serve', *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self.urls: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if 'listening on' in line:
                self.urls.append(line.split('listening on', 1)[1].strip())
                if len(self.urls) == max(1, sum(1 for a in args if a == '--listen')):
                    break
        if not self.urls:
            self.proc.kill()
            raise RuntimeError('aiosip-ws serve did not start: %s' % self.proc.stderr.read())

    def stop(self, timeout: float = 15, *, terminate: bool = True) -> tuple[int, str, str]:
        """Wait for the process to end (sending SIGTERM first unless ``terminate`` is False)."""
        if terminate and self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out, err


@pytest.fixture
def serve_process() -> Iterator[type[ServeProcess]]:
    started: list[ServeProcess] = []

    def start(*args: str) -> ServeProcess:
        process = ServeProcess(*args)
        started.append(process)
        return process

    yield start  # type: ignore[misc]
    for process in started:
        process.stop()
