"""Run a real dnsmasq on 127.0.0.1 for the DNS discovery tests.

dnsmasq (Debian package ``dnsmasq-base``/``dnsmasq``) serves NAPTR
(``--naptr-record``), SRV (``--srv-host``) and A/AAAA (``--host-record``) records
from its command line.  :class:`Dnsmasq` starts it in the foreground on a free
port of 127.0.0.1 only, with no upstream server, no ``/etc/hosts``, no config
file, and ``--local`` for the test domains so that unknown names under them
answer NXDOMAIN (names outside them answer REFUSED).  Every query is logged to a
file so tests can assert which names were (not) queried.

    with Dnsmasq(naptr=[('example.test', 10, 50, 's', 'SIPS+D2W', '', '_sips._ws.example.test')],
                 srv=[('_sips._ws.example.test', 'edge.example.test', 5081, 10, 1)],
                 hosts=[('edge.example.test', '127.0.0.1', '::1')]) as dns:
        Resolver(nameservers=[dns.nameserver])
        dns.queries()   # [('NAPTR', 'example.test'), ('SRV', ...), ...]

It is a plain context manager (start/stop are quick and blocking, bounded by
``startup_timeout``); it also works as an async context manager.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query

from tests.support.net import free_port

__all__ = ['Dnsmasq', 'DnsmasqNotFound', 'DnsmasqError', 'find_dnsmasq']

_log = logging.getLogger(__name__)

NaptrSpec = str | Sequence[object]
SrvSpec = str | Sequence[object]
HostSpec = str | Sequence[object]

_QUERY_LINE = re.compile(r'query\[([A-Za-z0-9]+)\] (\S+) from ')
_sentinels = itertools.count(1)


class DnsmasqError(RuntimeError):
    """dnsmasq could not be started or did not answer."""


class DnsmasqNotFound(DnsmasqError):
    """The dnsmasq binary is not installed."""


def find_dnsmasq() -> str:
    """Path of the dnsmasq binary (``$DNSMASQ``, ``$PATH``, ``/usr/sbin``, ``/sbin``)."""
    candidates = [os.environ.get('DNSMASQ'), shutil.which('dnsmasq'),
                  '/usr/sbin/dnsmasq', '/sbin/dnsmasq', '/usr/local/sbin/dnsmasq']
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise DnsmasqNotFound('dnsmasq is not installed (looked in $DNSMASQ, $PATH, /usr/sbin, /sbin); '
                          'the DNS discovery tests need it: apt-get install dnsmasq-base')


def _join(spec: str | Sequence[object]) -> str:
    if isinstance(spec, str):
        return spec
    return ','.join(str(item) for item in spec)


class Dnsmasq:
    """A dnsmasq process serving the given records on ``127.0.0.1:<free port>``.

    :param naptr: ``(name, order, preference, flags, service, regexp, replacement)``
        tuples (or the raw ``--naptr-record`` value).
    :param srv: ``(owner, target, port, priority, weight)`` tuples; ``target`` may be
        ``'.'`` (or the raw ``--srv-host`` value).
    :param hosts: ``(name, address, ...)`` tuples, IPv4 and/or IPv6 (``--host-record``).
    :param local: domains answered only from this configuration (NXDOMAIN for the rest).
    """

    def __init__(self, *, naptr: Sequence[NaptrSpec] = (), srv: Sequence[SrvSpec] = (),
                 hosts: Sequence[HostSpec] = (), local: Sequence[str] = ('test',),
                 extra_args: Sequence[str] = (), address: str = '127.0.0.1',
                 startup_timeout: float = 10.0) -> None:
        self.binary = find_dnsmasq()
        self.naptr = [_join(n) for n in naptr]
        self.srv = [_join(s) for s in srv]
        self.hosts = [_join(h) for h in hosts]
        self.local = list(local)
        self.extra_args = list(extra_args)
        self.address = address
        self.startup_timeout = startup_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log_offset = 0

    # -- paths and arguments ----------------------------------------------------
    @property
    def nameserver(self) -> str:
        """``'127.0.0.1:PORT'`` for ``Resolver(nameservers=[...])`` / ``--dns``."""
        return '%s:%d' % (self.address, self.port)

    @property
    def log_path(self) -> Path:
        assert self._tmp is not None, 'dnsmasq not started'
        return Path(self._tmp.name) / 'dnsmasq.log'

    def _args(self) -> list[str]:
        args = [self.binary, '--keep-in-foreground', '--no-resolv', '--no-hosts',
                '--conf-file=/dev/null', '--pid-file=', '--bind-interfaces',
                '--listen-address=%s' % self.address, '--port=%d' % self.port,
                '--log-queries', '--log-facility=%s' % self.log_path, '--cache-size=0']
        if hasattr(os, 'geteuid') and os.geteuid() == 0:
            args.append('--user=root')       # do not drop to "nobody": it could not write the log
        args += ['--local=/%s/' % domain.strip('.') for domain in self.local]
        args += ['--naptr-record=%s' % n for n in self.naptr]
        args += ['--srv-host=%s' % s for s in self.srv]
        args += ['--host-record=%s' % h for h in self.hosts]
        return args + self.extra_args

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> Dnsmasq:
        if self.process is not None:
            raise DnsmasqError('dnsmasq already started')
        self._tmp = tempfile.TemporaryDirectory(prefix='aiosip-ws-dnsmasq-')
        last_error = ''
        try:
            for _attempt in range(5):
                try:
                    self.port = free_port(self.address, udp=True)
                except OSError as exc:
                    raise DnsmasqError(str(exc)) from exc
                stderr_path = Path(self._tmp.name) / 'stderr'
                with open(stderr_path, 'wb') as stderr:
                    self.process = subprocess.Popen(self._args(), stdin=subprocess.DEVNULL,
                                                    stdout=subprocess.DEVNULL, stderr=stderr)
                if self._wait_ready():
                    _log.debug('dnsmasq pid %d listening on %s', self.process.pid, self.nameserver)
                    return self
                last_error = stderr_path.read_text(errors='replace').strip()
                self._kill()
                if 'in use' not in last_error:
                    break
            raise DnsmasqError('dnsmasq did not start: %s (command: %s)'
                               % (last_error or 'no answer within %gs' % self.startup_timeout,
                                  ' '.join(self._args())))
        except BaseException:
            self.stop()
            raise

    def _probe(self, name: str, timeout: float = 0.5) -> bool:
        """True when dnsmasq answered a query for ``name`` (any rcode)."""
        query = dns.message.make_query(name, 'A')
        try:
            dns.query.udp(query, self.address, port=self.port, timeout=timeout)
        except (OSError, dns.exception.DNSException):
            return False
        return True

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self._probe('dnsmasq-ready.%s' % (self.local[0] if self.local else 'test'), 0.2):
                return True
            time.sleep(0.05)
        return False

    def _kill(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def stop(self) -> None:
        """Stop dnsmasq (SIGTERM, then SIGKILL after 5 s) and remove its files."""
        self._kill()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> Dnsmasq:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> Dnsmasq:
        return self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.stop()

    # -- query log ----------------------------------------------------------------
    def queries(self, timeout: float = 5.0) -> list[tuple[str, str]]:
        """``(type, name)`` of every query since start or the last :meth:`clear_queries`.

        dnsmasq handles queries one at a time, so a sentinel query is sent and the
        log is read until the sentinel shows up: everything asked before it is in.
        """
        if not self.running:
            raise DnsmasqError('dnsmasq is not running')
        sentinel = 'sentinel-%d.%s' % (next(_sentinels), self.local[0] if self.local else 'test')
        deadline = time.monotonic() + timeout
        while True:
            self._probe(sentinel)
            entries = self._read_log()
            for index, (_, name) in enumerate(entries):
                if name == sentinel:
                    return [e for e in entries[:index] if not self._internal(e[1])]
            if time.monotonic() > deadline:
                raise DnsmasqError('sentinel query %s never appeared in the dnsmasq log' % sentinel)
            time.sleep(0.05)

    def clear_queries(self) -> None:
        """Forget the queries logged so far (:meth:`queries` starts afresh)."""
        self.queries()
        self._log_offset = self.log_path.stat().st_size

    def _read_log(self) -> list[tuple[str, str]]:
        try:
            with open(self.log_path, 'rb') as log:
                log.seek(self._log_offset)
                text = log.read().decode('utf-8', 'replace')
        except FileNotFoundError:
            return []
        return [(m.group(1).upper(), m.group(2).rstrip('.').lower())
                for m in _QUERY_LINE.finditer(text)]

    @staticmethod
    def _internal(name: str) -> bool:
        return name.startswith('sentinel-') or name.startswith('dnsmasq-ready.')
