"""Find SIP WebSocket servers from a SIP URI (RFC 3263 as extended by RFC 7118).

``sip:example.com``, ``sips:alice@example.com`` or ``sip:example.com;transport=ws``
is turned into an ordered list of concrete :class:`Target` objects (transport,
IP address, port, URL path, Host name, TLS name); a client tries them in order
and moves to the next one when a connection fails (RFC 3263 section 4.3,
RFC 7118 section 4.1), which :func:`connect_first` does.

Example (inside a coroutine)::

    targets = await resolve_sip_uri('sips:alice@example.com', nameservers=['127.0.0.1:5353'])
    target, ws = await connect_first(targets, lambda t: websockets.asyncio.client.connect(
        t.url, subprotocols=['sip'], **t.connect_kwargs()))

Procedure (RFC 3263 section 4, RFC 7118 section 5.5)
----------------------------------------------------
The *target* is the URI host, or its ``maddr`` parameter when present.

1. **Transport.**  ``;transport=ws`` is the only value RFC 7118 defines; it
   means WS for a ``sip:`` URI and WS over TLS (WSS) for a ``sips:`` URI.  The
   non-standard ``;transport=wss`` is accepted as an alias meaning WSS.  Any
   other transport (udp, tcp, tls, sctp ...) raises
   :class:`~aiosip_ws.errors.ConfigurationError`: aiosip-ws only speaks
   WebSocket.  A ``sips:`` URI only ever yields ``wss`` targets (RFC 3261 26.2,
   RFC 7118 9.2); if the resolver is configured without ``wss`` it is
   refused locally with ``ConfigurationError``.
2. **Numeric IP host** (``sip:127.0.0.1``, ``sip:[::1]:8080``): no DNS at all.
   Transport: the explicit one, else ``ws`` for ``sip:`` (``wss`` if ``ws`` is
   not enabled) and ``wss`` for ``sips:`` (the RFC 3263 "UDP for SIP, TCP for
   SIPS" rule transposed to WebSocket).  Port: explicit, else the default port.
3. **Explicit port** (``sip:example.com:8080``): NAPTR and SRV are skipped
   (RFC 3263 4.2); A/AAAA of the target, same transport choice as 2.
4. **Explicit transport, no port**: NAPTR is skipped (RFC 3263 4.1); the SRV
   names for that transport (see below) are queried, then A/AAAA of the target
   at the default port.
5. **Otherwise NAPTR** for the target.  Records are kept when their service is
   ``SIPS+D2W`` (wss) or ``SIP+D2W`` (ws, never for a ``sips:`` URI) *and* that
   transport is enabled (RFC 7118 §5.5); they are sorted by order, then preference,
   and all of them are used, in that order, as failover candidates.  Flag ``S``:
   the replacement is an SRV owner name and is queried verbatim (RFC 7118 §5.5); flag
   ``A``: the replacement is a host name, looked up with A/AAAA at the default
   port.  If none of the kept records leads to an address, A/AAAA of the target
   at the default port is used (RFC 3263 4.2).  When NAPTR records exist but
   none is usable (e.g. only ``SIP+D2U``) RFC 3263 4.1 does not fall back ("If
   no NAPTR records are found ..." does not apply: the domain published its
   transports and WebSocket is not one of them), so :class:`DiscoveryError` is
   raised naming the services found; ``naptr_fallback=True`` makes the resolver
   treat that case like "no NAPTR" instead.
6. **No NAPTR records**: SRV queries for each enabled transport ("constructs
   SRV queries for those transport protocols it supports", RFC 3263 4.1), wss
   names first (a TLS-capable client prefers TLS).  If no SRV record exists,
   A/AAAA of the target with the default transport of step 2 at its default
   port.
7. **SRV ordering** (RFC 2782): lowest priority first; inside one priority, the
   weighted random selection of RFC 2782 (weight-0 records first in the running
   sum; ``rng`` is injectable for tests).  A lone SRV record with target ``.``
   means "service decidedly not available" and yields nothing.
8. **Addresses**: every SRV target (and A-fallback name) is looked up with A
   and AAAA (in the order given by ``address_types``, default A then AAAA);
   each address becomes one :class:`Target`.  Duplicates (same transport,
   address and port) are removed, keeping the first.

SRV names and default ports (RFC 7118 §5.5)
-------------------------------------------
No RFC defines an SRV label for WebSocket.  With NAPTR the replacement field
names the SRV record, so no label is needed.  Without NAPTR (or with an
explicit ``;transport=``) this module queries, by default
(:data:`DEFAULT_SRV_LABELS`):

* ``wss``: ``_sips._ws.<domain>`` then ``_sips._wss.<domain>``
  (``_sips._ws`` mirrors RFC 3263's ``_sips._tcp``: service ``sips``, transport
  parameter ``ws``; ``_sips._wss`` is a common guess, also tried);
* ``ws``: ``_sip._ws.<domain>``.

``srv_labels`` replaces that table; ``srv_labels={}`` disables the guess and
goes straight to A/AAAA (no guess at all).  Default ports when
no SRV record gives one (:data:`DEFAULT_PORTS`): **80 for ws, 443 for wss**
(RFC 7118 5.5), i.e. the ``ws://`` and ``wss://`` URI defaults of
RFC 6455.  The 5080/5081 ports some servers use are only found through SRV or
an explicit port.

URL path, Host header and TLS name (RFC 7118 §5.5, §9.1)
--------------------------------------------------------
NAPTR and SRV only give a host and a port.

* **Path**: ``paths`` maps a name to a path; the SRV/NAPTR target name is
  looked up first, then the SIP domain (case-insensitive), else
  ``default_path`` (``/``).  Many servers expect ``/ws`` or ``/sip``; there is
  no standard (RFC 7118 §5.5 is silent), so it has to be configuration.
* **Host header and TLS name** (``name_policy``): by default (``'domain'``)
  the WebSocket URL is built with the *SIP domain the user asked for*
  (``wss://example.com:5081/``), so that name is the Host header, the TLS SNI
  and the name the certificate must match, while the TCP connection goes to
  the address found through NAPTR/SRV/A.  Why: RFC 7118 9.1 asks for
  HTTPS-style checking of "the host in the WS URI"; which name that is, is our
  choice, and only the user-supplied domain is trustworthy: NAPTR/SRV answers
  are not authenticated without DNSSEC, so checking the certificate against
  the SRV target would let anyone who can spoof DNS redirect the client to a
  host holding any valid certificate (the reasoning of RFC 6125 6.2.1 and RFC
  5922 4 for SIP over TLS, and what XMPP does with SRV).  It also gives the
  server the domain as virtual host.  ``name_policy='target'`` uses the SRV
  (or NAPTR ``A``) target name instead, the way a browser configured with
  ``wss://edge.example.net/`` would behave; use it when the edge servers only
  have certificates for their own names and you trust your DNS.  Targets from
  an A/AAAA fallback or an explicit port use the target name either way; a
  numeric host uses the IP address (the certificate then needs an IP SAN).

The connection itself: :meth:`Target.connect_kwargs` gives ``host``/``port``
(the address to connect the socket to; websockets passes them to
``loop.create_connection`` while the URL keeps the name, so Host stays the
name), ``server_hostname`` (the TLS name, for SNI and certificate checking),
and ``proxy=None`` (websockets >= 15 otherwise honours ``*_proxy``
environment variables and would ignore ``host``/``port``).

DNS goes through dnspython's asyncio resolver; ``nameservers`` takes
``'HOST'`` / ``'HOST:PORT'`` / ``'[V6]:PORT'`` strings (default: the system
configuration), every query is bounded by ``timeout`` (per server) and
``lifetime`` (per query).  Names are queried as absolute names (no search
list).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

try:
    import dns.nameserver
    _Do53Nameserver: Any = dns.nameserver.Do53Nameserver
except ImportError:  # pragma: no cover - dnspython < 2.4
    _Do53Nameserver = None

from ..core.grammar import (
    SIP_SCHEMES,
    WS_DEFAULT_PORTS,
    WS_SCHEMES,
    ip_literal,
    strip_brackets,
    url_host,
    ws_scheme_for,
)
from ..core.grammar import is_sip_uri as is_sip_uri  # still importable from here, as before
from ..core.sipuri import SipURI
from ..errors import AllTargetsFailed, ConfigurationError, DiscoveryError, SIPParseError

__all__ = [
    'Target',
    'Resolver',
    'resolve_sip_uri',
    'connect_first',
    'AllTargetsFailed',
    'order_srv',
    'parse_nameserver',
    'DEFAULT_PORTS',
    'DEFAULT_SRV_LABELS',
    'NAPTR_SERVICES',
]

_log = logging.getLogger(__name__)

T = TypeVar('T')

#: Default port per transport when no SRV record gives one (RFC 7118 5.5).
DEFAULT_PORTS: Mapping[str, int] = WS_DEFAULT_PORTS

#: SRV owner labels tried without NAPTR (or with an explicit transport), per transport,
#: in order.  No RFC defines them; see the module docstring.
DEFAULT_SRV_LABELS: Mapping[str, tuple[str, ...]] = {
    'wss': ('_sips._ws', '_sips._wss'),
    'ws': ('_sip._ws',),
}

#: NAPTR service field (RFC 7118 10.2) -> transport.
NAPTR_SERVICES: Mapping[str, str] = {'SIPS+D2W': 'wss', 'SIP+D2W': 'ws'}
_SERVICE_OF = {'wss': 'SIPS+D2W', 'ws': 'SIP+D2W'}

_TRANSPORTS = WS_SCHEMES
_NAME_POLICIES = ('domain', 'target')
_ADDRESS_TYPES = ('A', 'AAAA')


# --------------------------------------------------------------------------- targets
def _norm_name(name: str) -> str:
    return name.rstrip('.').lower()


@dataclass(frozen=True)
class Target:
    """One concrete place to open a SIP WebSocket connection.

    ``host``/``port`` are where the TCP socket goes (an IP address from A/AAAA, or
    the numeric host of the URI); ``host_header`` is the name put in the WebSocket
    URL and therefore in the ``Host`` header (websockets appends ``:port`` when the
    port is not the scheme default); ``tls_name`` is the name sent as SNI and
    checked against the server certificate (``None`` for ``ws``).  The remaining
    fields record how the target was found, for logs and errors.
    """

    transport: str
    host: str
    port: int
    path: str = '/'
    host_header: str = ''
    tls_name: str | None = None
    #: how the target was found: 'naptr' (NAPTR -> SRV/A), 'srv' (SRV label guess),
    #: 'a' (A/AAAA at the default port), 'explicit' (explicit port), 'numeric'.
    via: str = 'explicit'
    #: the SIP domain (URI host or maddr) resolution started from
    domain: str | None = None
    #: the SRV target / NAPTR 'A' replacement / name whose A/AAAA gave ``host``
    target_name: str | None = None
    #: the SRV owner name queried, if any
    srv_name: str | None = None
    #: the NAPTR service (``SIPS+D2W``/``SIP+D2W``) the target came from, if any
    naptr_service: str | None = None
    #: SRV priority and weight, if any
    priority: int | None = field(default=None, compare=False)
    weight: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.transport not in _TRANSPORTS:
            raise ConfigurationError('Target transport must be ws or wss, not %r' % (self.transport,))
        if not 0 < int(self.port) < 65536:
            raise ConfigurationError('Target port out of range: %r' % (self.port,))
        object.__setattr__(self, 'host', strip_brackets(self.host))
        if not self.host_header:
            object.__setattr__(self, 'host_header', self.host)
        object.__setattr__(self, 'host_header', strip_brackets(self.host_header))
        path = self.path or '/'
        if not path.startswith('/'):
            path = '/' + path
        object.__setattr__(self, 'path', path)
        if self.transport == 'wss':
            if not self.tls_name:
                object.__setattr__(self, 'tls_name', self.host_header)
        else:
            object.__setattr__(self, 'tls_name', None)

    @property
    def secure(self) -> bool:
        return self.transport == 'wss'

    @property
    def url(self) -> str:
        """The WebSocket URL for the handshake: ``scheme://host_header[:port]/path``."""
        authority = url_host(self.host_header)
        if self.port != DEFAULT_PORTS[self.transport]:
            authority += ':%d' % self.port
        return '%s://%s%s' % (self.transport, authority, self.path)

    def connect_kwargs(self, ssl: ssl_module.SSLContext | None = None) -> dict[str, Any]:
        """Keyword arguments for ``websockets.asyncio.client.connect(self.url, **kwargs)``.

        ``host``/``port`` make websockets connect the socket to the resolved address
        while the URL (hence the Host header) keeps ``host_header``;
        ``server_hostname`` is the TLS name; ``ssl`` is passed through when given
        for ``wss`` targets (else websockets uses ``ssl.create_default_context()``) and
        ignored for ``ws`` ones, so one context can serve a mixed target list;
        ``proxy=None`` stops websockets from routing through a proxy from the
        environment, which would bypass ``host``/``port``.
        """
        kwargs: dict[str, Any] = {'host': self.host, 'port': self.port, 'proxy': None}
        if self.secure:
            kwargs['server_hostname'] = self.tls_name
            if ssl is not None:
                kwargs['ssl'] = ssl
        return kwargs

    def describe(self) -> str:
        """A one-line description for logs: URL, address and how it was found."""
        addr = '%s:%d' % (url_host(self.host), self.port)
        how = self.via
        if self.naptr_service:
            how += ' ' + self.naptr_service
        if self.srv_name:
            how += ' ' + self.srv_name
        if self.target_name:
            how += ' -> ' + self.target_name
        tls = ', TLS name %s' % self.tls_name if self.secure else ''
        return '%s at %s (%s%s)' % (self.url, addr, how, tls)

    def __str__(self) -> str:
        return self.describe()


# --------------------------------------------------------------------------- helpers
def parse_nameserver(text: str) -> tuple[str, int]:
    """``'HOST'``, ``'HOST:PORT'``, ``'[V6]:PORT'`` or a bare IPv6 address -> (ip, port).

    HOST must be an IP address (a resolver cannot resolve its own name server).
    """
    text = text.strip()
    host, port_text = text, ''
    if text.startswith('['):
        end = text.find(']')
        if end < 0:
            raise ConfigurationError('bad name server %r: missing "]"' % text)
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(':'):
                raise ConfigurationError('bad name server %r' % text)
            port_text = rest[1:]
    elif text.count(':') == 1:
        host, port_text = text.split(':')
    port = 53
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigurationError('bad port in name server %r' % text)
        port = int(port_text)
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ConfigurationError('name server must be an IP address[:port], not %r' % text) from None
    return address, port


def order_srv(records: Sequence[Any], rng: random.Random | None = None) -> list[Any]:
    """Order SRV records as RFC 2782 says: priority ascending, then weighted random.

    ``records`` are objects with ``priority`` and ``weight`` attributes (dnspython
    SRV rdata).  Within one priority, repeatedly: put weight-0 records first, draw
    ``r`` uniformly in ``[0, sum of weights]`` and take the first record whose
    running weight sum is >= ``r``.  One refinement: when no weight-0 record is
    left, ``r`` is drawn from ``[1, sum]``; RFC 2782's literal ``[0, sum]`` would
    then hand the first record in DNS answer order an extra ``1/(sum+1)`` share
    (weights 1:3 would split 40/60 or 20/80 depending on answer order instead
    of 25/75).  So positive weights get exactly their proportional share, and weight-0
    records keep the "very small chance" (``1/(sum+1)``) RFC 2782 gives them.
    """
    rng = rng or _default_rng
    by_priority: dict[int, list[Any]] = {}
    for rec in records:
        by_priority.setdefault(int(rec.priority), []).append(rec)
    ordered: list[Any] = []
    for priority in sorted(by_priority):
        remaining = by_priority[priority]
        remaining = [r for r in remaining if int(r.weight) == 0] + \
                    [r for r in remaining if int(r.weight) != 0]
        while remaining:
            total = sum(int(r.weight) for r in remaining)
            has_zero = int(remaining[0].weight) == 0
            pick = rng.randint(0 if has_zero else 1, total)
            running = 0
            for index, rec in enumerate(remaining):  # noqa: B007 - index is used after the loop
                running += int(rec.weight)
                if running >= pick:
                    break
            ordered.append(remaining.pop(index))
    return ordered


_default_rng = random.SystemRandom()


@dataclass
class _Run:
    """Bookkeeping for one resolve() call: the URI and a trace of what was queried."""

    uri: str
    domain: str
    allowed: tuple[str, ...]
    trace: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.trace.append(text)
        _log.debug('%s: %s', self.uri, text)

    def summary(self) -> str:
        return '; '.join(self.trace) if self.trace else 'no DNS query was made'


class _Answer:
    """Result of one DNS query: records (possibly empty) and whether the name exists."""

    __slots__ = ('records', 'nxdomain', 'error')

    def __init__(self, records: list[Any], nxdomain: bool = False, error: str | None = None) -> None:
        self.records = records
        self.nxdomain = nxdomain
        self.error = error


# --------------------------------------------------------------------------- resolver
class Resolver:
    """RFC 3263 / RFC 7118 resolution of SIP URIs to WebSocket :class:`Target` lists.

    :param nameservers: ``'HOST'``/``'HOST:PORT'`` strings; ``None`` uses the system
        configuration (``/etc/resolv.conf``).
    :param timeout: seconds to wait for one name server before trying the next.
    :param lifetime: upper bound in seconds for one DNS query, retries included.
    :param paths: name -> URL path (SRV/NAPTR target name first, then SIP domain).
    :param default_path: path when ``paths`` has no entry (``/``).
    :param transports: enabled transports, ``('wss', 'ws')`` by default; ``('ws',)``
        for a client without TLS, ``('wss',)`` for TLS only.
    :param srv_labels: transport -> SRV labels tried without NAPTR, replacing
        :data:`DEFAULT_SRV_LABELS`; ``{}`` means no SRV guess.
    :param name_policy: ``'domain'`` (default) or ``'target'``: which name goes in
        the URL/Host header and is verified by TLS for NAPTR/SRV targets.
    :param address_types: record types for addresses, in order (``('A', 'AAAA')``).
    :param naptr_fallback: when NAPTR records exist but none is usable, continue as
        if there were none (default False: raise :class:`DiscoveryError`).
    :param rng: random source for SRV weights (tests inject a seeded one).
    :param dns_resolver: a ready ``dns.asyncresolver.Resolver`` (overrides
        ``nameservers``, ``timeout`` and ``lifetime``).
    """

    def __init__(self, nameservers: Sequence[str] | None = None, *,
                 timeout: float = 2.0, lifetime: float = 5.0,
                 paths: Mapping[str, str] | None = None, default_path: str = '/',
                 transports: Iterable[str] = ('wss', 'ws'),
                 srv_labels: Mapping[str, Sequence[str]] | None = None,
                 name_policy: str = 'domain',
                 address_types: Sequence[str] = ('A', 'AAAA'),
                 naptr_fallback: bool = False,
                 rng: random.Random | None = None,
                 dns_resolver: dns.asyncresolver.Resolver | None = None) -> None:
        if isinstance(nameservers, str):
            nameservers = [nameservers]
        self.nameservers: list[tuple[str, int]] | None = (
            [parse_nameserver(ns) for ns in nameservers] if nameservers else None)
        if timeout <= 0 or lifetime <= 0:
            raise ConfigurationError('DNS timeout and lifetime must be positive')
        self.timeout = float(timeout)
        self.lifetime = float(lifetime)
        self.paths = {_norm_name(k): v for k, v in (paths or {}).items()}
        self.default_path = default_path or '/'
        self.transports = tuple(dict.fromkeys(t.lower() for t in transports))
        bad = [t for t in self.transports if t not in _TRANSPORTS]
        if bad or not self.transports:
            raise ConfigurationError('transports must be a non-empty subset of ws, wss; got %r'
                                     % (tuple(transports),))
        labels = DEFAULT_SRV_LABELS if srv_labels is None else srv_labels
        unknown = [t for t in labels if t not in _TRANSPORTS]
        if unknown:
            raise ConfigurationError('srv_labels keys must be ws or wss; got %r' % (unknown,))
        self.srv_labels = {t: tuple(labels.get(t, ())) for t in _TRANSPORTS}
        if name_policy not in _NAME_POLICIES:
            raise ConfigurationError('name_policy must be one of %s, not %r' % (_NAME_POLICIES, name_policy))
        self.name_policy = name_policy
        self.address_types = tuple(t.upper() for t in address_types)
        if not self.address_types or any(t not in _ADDRESS_TYPES for t in self.address_types):
            raise ConfigurationError('address_types must be A and/or AAAA; got %r' % (tuple(address_types),))
        self.naptr_fallback = naptr_fallback
        self.rng = rng or _default_rng
        self._dns = dns_resolver

    # -- DNS plumbing --------------------------------------------------------------
    def _resolver(self) -> dns.asyncresolver.Resolver:
        if self._dns is None:
            if self.nameservers is None:
                try:
                    res = dns.asyncresolver.Resolver()
                except dns.exception.DNSException as exc:
                    raise ConfigurationError('no system DNS configuration (%s); pass nameservers='
                                             % exc) from exc
            else:
                res = dns.asyncresolver.Resolver(configure=False)
                if _Do53Nameserver is not None:
                    res.nameservers = [_Do53Nameserver(host, port) for host, port in self.nameservers]
                else:  # pragma: no cover - dnspython < 2.4
                    res.nameservers = [host for host, _ in self.nameservers]
                    res.nameserver_ports = {host: port for host, port in self.nameservers}
            res.timeout = self.timeout
            res.lifetime = self.lifetime
            self._dns = res
        return self._dns

    def _servers_text(self) -> str:
        if self.nameservers is None:
            return 'system resolver'
        return ', '.join('%s:%d' % (url_host(h), p) for h, p in self.nameservers)

    async def _query(self, run: _Run, name: str, rdtype: str) -> _Answer:
        """One bounded query; NXDOMAIN/NODATA are answers, other failures are errors."""
        try:
            qname = dns.name.from_text(name)
            answer = await self._resolver().resolve(qname, rdtype, search=False,
                                                    raise_on_no_answer=False,
                                                    lifetime=self.lifetime)
        except dns.resolver.NXDOMAIN:
            run.note('%s %s: NXDOMAIN' % (rdtype, name))
            return _Answer([], nxdomain=True)
        except dns.exception.Timeout:
            text = '%s %s: timed out after %gs (%s)' % (rdtype, name, self.lifetime, self._servers_text())
        except dns.resolver.NoNameservers as exc:
            text = '%s %s: no name server answered (%s): %s' % (rdtype, name, self._servers_text(), exc)
        except dns.exception.DNSException as exc:
            text = '%s %s: %s: %s' % (rdtype, name, type(exc).__name__, exc)
        else:
            records = list(answer.rrset) if answer.rrset is not None else []
            if records:
                run.note('%s %s: %s' % (rdtype, name, ', '.join(r.to_text() for r in records)))
            else:
                run.note('%s %s: no records' % (rdtype, name))
            return _Answer(records)
        run.note(text)
        run.errors.append(text)
        return _Answer([], error=text)

    async def _addresses(self, run: _Run, name: str) -> tuple[list[str], bool]:
        """A/AAAA of ``name`` in ``address_types`` order -> (addresses, nxdomain)."""
        answers = await asyncio.gather(*(self._query(run, name, t) for t in self.address_types))
        addresses: list[str] = []
        for answer in answers:
            addresses.extend(str(ipaddress.ip_address(r.address)) for r in answer.records)
        nxdomain = all(a.nxdomain for a in answers)
        return addresses, nxdomain

    # -- target building -----------------------------------------------------------
    def _path(self, domain: str, target_name: str | None) -> str:
        for key in (target_name, domain):
            if key and _norm_name(key) in self.paths:
                return self.paths[_norm_name(key)]
        return self.default_path

    def _make(self, run: _Run, transport: str, address: str, port: int, *, via: str,
              target_name: str | None, srv_name: str | None = None,
              naptr_service: str | None = None, priority: int | None = None,
              weight: int | None = None) -> Target:
        if via in ('naptr', 'srv') and self.name_policy == 'domain':
            name = run.domain
        else:
            name = target_name or run.domain
        return Target(transport=transport, host=address, port=port,
                      path=self._path(run.domain, target_name), host_header=name,
                      tls_name=name if transport == 'wss' else None, via=via,
                      domain=run.domain, target_name=target_name, srv_name=srv_name,
                      naptr_service=naptr_service, priority=priority, weight=weight)

    async def _from_host(self, run: _Run, transport: str, name: str, port: int, *, via: str,
                         naptr_service: str | None = None) -> tuple[list[Target], bool]:
        addresses, nxdomain = await self._addresses(run, name)
        return [self._make(run, transport, a, port, via=via, target_name=name,
                           naptr_service=naptr_service) for a in addresses], nxdomain

    async def _from_srv(self, run: _Run, transport: str, srv_name: str, *, via: str,
                        naptr_service: str | None = None) -> list[Target]:
        answer = await self._query(run, srv_name, 'SRV')
        records = [r for r in answer.records if r.target != dns.name.root]
        if answer.records and not records:
            run.note('SRV %s: target "." (service not available)' % srv_name)
        ordered = order_srv(records, self.rng)
        per_record = await asyncio.gather(*(
            self._addresses(run, _norm_name(r.target.to_text())) for r in ordered))
        targets: list[Target] = []
        for rec, (addresses, _) in zip(ordered, per_record, strict=True):
            target_name = _norm_name(rec.target.to_text())
            for address in addresses:
                targets.append(self._make(run, transport, address, int(rec.port), via=via,
                                          target_name=target_name, srv_name=srv_name,
                                          naptr_service=naptr_service,
                                          priority=int(rec.priority), weight=int(rec.weight)))
        return targets

    async def _srv_guess(self, run: _Run, transports: Sequence[str], domain: str) -> list[Target]:
        names = [(t, '%s.%s' % (label.strip('.'), domain))
                 for t in transports for label in self.srv_labels[t]]
        if not names:
            run.note('SRV: no SRV labels configured for %s' % '/'.join(transports))
            return []
        results = await asyncio.gather(*(self._from_srv(run, t, n, via='srv') for t, n in names))
        return [target for result in results for target in result]

    # -- URI handling --------------------------------------------------------------
    def _parse(self, uri: str | SipURI) -> SipURI:
        if isinstance(uri, SipURI):
            parsed = uri
        else:
            try:
                parsed = SipURI.parse(uri)
            except SIPParseError as exc:
                raise ConfigurationError('cannot resolve %r: %s' % (uri, exc)) from exc
        if parsed.scheme not in SIP_SCHEMES:
            raise ConfigurationError('only sip: and sips: URIs can be resolved, not %r' % str(uri))
        return parsed

    def _explicit_transport(self, parsed: SipURI) -> str | None:
        value = parsed.transport
        if value is None:
            return None
        transport = ws_scheme_for(parsed.scheme, value)
        if transport is None:
            raise ConfigurationError('%s: transport=%s is not a WebSocket transport; aiosip-ws '
                                     'resolves only transport=ws (RFC 7118) or the alias wss'
                                     % (parsed, value))
        if transport not in self.transports:
            raise ConfigurationError('%s asks for %s, which this resolver is not configured for '
                                     '(transports=%s)' % (parsed, transport, ','.join(self.transports)))
        return transport

    def _allowed(self, parsed: SipURI) -> tuple[str, ...]:
        if parsed.scheme == 'sips':
            if 'wss' not in self.transports:
                raise ConfigurationError('%s requires a secure (wss) connection (RFC 7118 9.2), but '
                                         'this resolver is configured without wss' % parsed)
            return ('wss',)
        return self.transports

    def _default_transport(self, parsed: SipURI) -> str:
        if parsed.scheme == 'sips':
            return 'wss'
        return 'ws' if 'ws' in self.transports else 'wss'

    # -- public --------------------------------------------------------------------
    async def resolve(self, uri: str | SipURI) -> list[Target]:
        """Resolve a SIP URI to the ordered, de-duplicated list of WebSocket targets.

        :raises ConfigurationError: not a sip:/sips: URI, a non-WebSocket transport,
            or a URI this configuration cannot serve (sips: without wss).
        :raises DiscoveryError: the domain does not exist, has no usable records, or
            DNS failed; the message lists what was queried and what came back.
        """
        parsed = self._parse(uri)
        allowed = self._allowed(parsed)
        explicit = self._explicit_transport(parsed)
        maddr = parsed.param('maddr')
        host = _norm_name(strip_brackets(maddr or parsed.host))
        run = _Run(uri=str(parsed), domain=host, allowed=(explicit,) if explicit else tuple(allowed))

        numeric = ip_literal(host)
        if numeric is not None:
            transport = explicit or self._default_transport(parsed)
            port = parsed.port or DEFAULT_PORTS[transport]
            run.note('numeric host %s: no DNS' % numeric)
            targets = [Target(transport=transport, host=numeric, port=port,
                              path=self._path(numeric, None), host_header=numeric,
                              via='numeric', domain=numeric)]
            return self._finish(run, targets)

        try:
            # IDNA-encode (the URL and Host header need ASCII) and validate the name
            host = _norm_name(dns.name.from_text(host).to_text(omit_final_dot=True))
        except (dns.exception.DNSException, UnicodeError) as exc:
            raise ConfigurationError('cannot resolve %s: bad host name %r: %s'
                                     % (run.uri, host, exc)) from exc
        run.domain = host
        self._resolver()      # configuration errors surface before any query

        if parsed.port is not None:
            transport = explicit or self._default_transport(parsed)
            run.allowed = (transport,)
            targets, nxdomain = await self._from_host(run, transport, host, parsed.port, via='explicit')
            if nxdomain:
                raise self._nxdomain(run)
            return self._finish(run, targets)

        if explicit is not None:
            targets = await self._srv_guess(run, (explicit,), host)
            if not targets:
                targets, nxdomain = await self._from_host(run, explicit, host, DEFAULT_PORTS[explicit],
                                                          via='a')
                if nxdomain:
                    raise self._nxdomain(run)
            return self._finish(run, targets)

        answer = await self._query(run, host, 'NAPTR')
        if answer.nxdomain:
            raise self._nxdomain(run)
        if answer.error is not None:
            raise DiscoveryError('cannot resolve %s: NAPTR query failed: %s' % (run.uri, answer.error))
        if answer.records:
            from_naptr = await self._from_naptr(run, parsed, allowed, answer.records)
            if from_naptr is not None:
                return self._finish(run, from_naptr)

        # no (usable) NAPTR: SRV guesses for each enabled transport, then A/AAAA
        targets = await self._srv_guess(run, allowed, host)
        if not targets:
            transport = self._default_transport(parsed)
            targets, nxdomain = await self._from_host(run, transport, host, DEFAULT_PORTS[transport], via='a')
            if nxdomain:
                raise self._nxdomain(run)
        return self._finish(run, targets)

    async def _from_naptr(self, run: _Run, parsed: SipURI, allowed: Sequence[str],
                          records: list[Any]) -> list[Target] | None:
        """Targets from NAPTR records, or None to continue as if there were none."""
        usable = []
        seen = []
        for rec in sorted(records, key=lambda r: (int(r.order), int(r.preference))):
            service = rec.service.decode('ascii', 'replace').upper()
            flags = rec.flags.decode('ascii', 'replace').lower()
            seen.append(service)
            transport = NAPTR_SERVICES.get(service)
            if transport is None or transport not in allowed:
                continue
            if rec.replacement == dns.name.root or flags not in ('s', 'a'):
                run.note('NAPTR %s %s: flags %r / replacement %s not usable, skipped'
                         % (run.domain, service, flags, rec.replacement))
                continue
            usable.append((rec, service, transport, flags))
        if not usable:
            wanted = ', '.join(_SERVICE_OF[t] for t in allowed)
            message = ('NAPTR records for %s offer only %s; none is usable by this client (%s %s)'
                       % (run.domain, ', '.join(dict.fromkeys(seen)), 'sips: URI accepts'
                          if parsed.scheme == 'sips' else 'supported:', wanted))
            if self.naptr_fallback:
                run.note(message + ', continuing as if there were no NAPTR')
                return None
            raise DiscoveryError('cannot resolve %s: %s (RFC 3263 4.1); queried: %s'
                                 % (run.uri, message, run.summary()))

        async def one(rec: Any, service: str, transport: str, flags: str) -> list[Target]:
            name = _norm_name(rec.replacement.to_text())
            if flags == 's':
                return await self._from_srv(run, transport, name, via='naptr', naptr_service=service)
            found, _ = await self._from_host(run, transport, name, DEFAULT_PORTS[transport],
                                             via='naptr', naptr_service=service)
            return found

        results = await asyncio.gather(*(one(*item) for item in usable))
        targets = [t for result in results for t in result]
        if not targets:
            # RFC 3263 4.2: no SRV records -> A/AAAA of the domain at the default port,
            # with the transports NAPTR announced, in NAPTR order
            for transport in dict.fromkeys(item[2] for item in usable):
                found, _ = await self._from_host(run, transport, run.domain,
                                                        DEFAULT_PORTS[transport], via='a')
                targets.extend(found)
        return targets

    def _nxdomain(self, run: _Run) -> DiscoveryError:
        return DiscoveryError('cannot resolve %s: the domain %s does not exist (NXDOMAIN from %s); '
                              'queried: %s' % (run.uri, run.domain, self._servers_text(), run.summary()))

    def _finish(self, run: _Run, targets: list[Target]) -> list[Target]:
        unique: list[Target] = []
        keys = set()
        for target in targets:
            key = (target.transport, target.host, target.port)
            if key not in keys:
                keys.add(key)
                unique.append(target)
        if not unique:
            failed = ', %d DNS failure(s)' % len(run.errors) if run.errors else ''
            raise DiscoveryError('no WebSocket server found for %s (transports %s%s); queried: %s'
                                 % (run.uri, ','.join(run.allowed), failed, run.summary()))
        _log.debug('%s resolved to %d target(s): %s', run.uri, len(unique),
                   '; '.join(t.describe() for t in unique))
        return unique


async def resolve_sip_uri(uri: str | SipURI, **options: Any) -> list[Target]:
    """Resolve ``uri`` with a one-off :class:`Resolver` built from ``options``."""
    return await Resolver(**options).resolve(uri)


# --------------------------------------------------------------------------- failover



async def connect_first(targets: Iterable[Target],
                        connect: Callable[[Target], Awaitable[T]], *,
                        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
                        attempt_timeout: float | None = None) -> tuple[Target, T]:
    """Try ``await connect(target)`` for each target in order; return the first success.

    Any ``Exception`` from ``connect`` (refused, TLS failure, handshake error,
    timeout ...) moves on to the next target (RFC 3263 4.3, RFC 7118 4.1).  Cancellation
    is never swallowed: a ``CancelledError`` (or any ``BaseException``) propagates at
    once and no further target is tried.  ``attempt_timeout`` bounds each attempt.

    :raises AllTargetsFailed: (a :class:`DiscoveryError`) listing every target and its
        error, chained to the last error.
    :raises DiscoveryError: when ``targets`` is empty.
    """
    log = logger if logger is not None else _log
    attempts: list[tuple[Target, BaseException]] = []
    for target in targets:
        log.debug('connecting to %s', target.describe())
        try:
            if attempt_timeout is None:
                result = await connect(target)
            else:
                result = await asyncio.wait_for(connect(target), attempt_timeout)
        except Exception as exc:  # CancelledError is a BaseException: not caught
            log.warning('connection to %s failed: %s: %s', target.describe(), type(exc).__name__, exc)
            attempts.append((target, exc))
            continue
        if attempts:
            log.info('connected to %s after %d failed target(s)', target.describe(), len(attempts))
        return target, result
    if not attempts:
        raise DiscoveryError('no target to connect to')
    raise AllTargetsFailed(attempts) from attempts[-1][1]
