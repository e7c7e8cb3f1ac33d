"""RFC 3263 / RFC 7118 discovery (aiosip_ws.transport.discovery) against a real dnsmasq on 127.0.0.1.

Requirements (rows of docs/conformance.rst): RFC 7118 §5.5 (NAPTR SIP+D2W / SIPS+D2W
selection and order, default ports 80/443, SRV names: NAPTR replacement queried verbatim,
documented guesses without NAPTR, URL path / Host), RFC 7118 §4.1 and RFC 3263 §4.3 (next
target after a failed connection), RFC 7118 §9.1 (TLS name checking), §9.2 (sips: only
over wss).

Only loopback addresses appear in the records; the ones the tests connect to are
127.0.0.1.  Other 127.0.0.x addresses are only resolved, never connected to.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import websockets.version
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve

from aiosip_ws.errors import ConfigurationError, DiscoveryError, TransportError
from aiosip_ws.transport.discovery import (
    DEFAULT_PORTS,
    DEFAULT_SRV_LABELS,
    AllTargetsFailed,
    Resolver,
    Target,
    connect_first,
    is_sip_uri,
    order_srv,
    parse_nameserver,
    resolve_sip_uri,
)
from tests.support.certs import CertFiles, make_certificates
from tests.support.dnsmasq import Dnsmasq
from tests.support.net import closed_port

# --------------------------------------------------------------------------- the zone
NAPTR = [
    # both.test: WSS first (order 10), then two WS records ordered by preference
    ('both.test', 10, 10, 's', 'SIPS+D2W', '', '_sips._ws.both.test'),
    ('both.test', 10, 20, 's', 'SIPS+D2T', '', '_sips._tcp.both.test'),
    ('both.test', 20, 10, 's', 'SIP+D2W', '', '_c._d.both.test'),
    ('both.test', 20, 5, 'S', 'SIP+D2W', '', '_a._b.both.test'),
    ('both.test', 30, 10, 's', 'SIP+D2U', '', '_sip._udp.both.test'),
    # udponly.test: NAPTR exists, no WebSocket service in it
    ('udponly.test', 10, 10, 's', 'SIP+D2U', '', '_sip._udp.udponly.test'),
    ('udponly.test', 20, 10, 's', 'SIP+D2T', '', '_sip._tcp.udponly.test'),
    # wsonly.test: only plain WS
    ('wsonly.test', 10, 10, 's', 'SIP+D2W', '', '_sip._ws.wsonly.test'),
    # explicit.test: NAPTR that explicit ports/transports must ignore
    ('explicit.test', 10, 10, 's', 'SIPS+D2W', '', '_naptr._only.explicit.test'),
    # nosrv.test: NAPTR whose SRV record is missing -> A/AAAA at the default port
    ('nosrv.test', 10, 10, 's', 'SIPS+D2W', '', '_missing._srv.nosrv.test'),
    # aflag.test: NAPTR with flag "A": replacement is a host name, default port
    ('aflag.test', 10, 10, 'a', 'SIPS+D2W', '', 'edge.aflag.test'),
]
SRV = [
    ('_sips._ws.both.test', 'wss.both.test', 5081, 10, 1),
    ('_a._b.both.test', 'wsa.both.test', 5080, 10, 1),
    ('_c._d.both.test', 'wsc.both.test', 5082, 10, 1),
    ('_sips._tcp.both.test', 'tls.both.test', 5061, 10, 1),
    ('_sip._udp.both.test', 'udp.both.test', 5060, 10, 1),
    ('_sip._ws.udponly.test', 'ws.udponly.test', 8080, 10, 1),
    ('_sip._ws.wsonly.test', 'ws.wsonly.test', 5080, 10, 1),
    ('_sips._wss.srvonly.test', 's.srvonly.test', 8443, 10, 1),
    ('_sip._ws.srvonly.test', 'w.srvonly.test', 8080, 10, 1),
    ('_sip._ws.weights.test', 'heavy.weights.test', 5001, 10, 3),
    ('_sip._ws.weights.test', 'light.weights.test', 5002, 10, 1),
    ('_sip._ws.weights.test', 'backup.weights.test', 5003, 20, 100),
    ('_naptr._only.explicit.test', 'n.explicit.test', 5999, 10, 1),
    ('_sips._ws.explicit.test', 'x.explicit.test', 5081, 10, 1),
    ('_sip._ws.dot.test', '.'),
]
HOSTS = [
    ('both.test', '127.0.0.10'),
    ('wss.both.test', '127.0.0.11'),
    ('wsa.both.test', '127.0.0.12'),
    ('wsc.both.test', '127.0.0.13'),
    ('tls.both.test', '127.0.0.14'),
    ('udp.both.test', '127.0.0.15'),
    ('ws.udponly.test', '127.0.0.16'),
    ('udponly.test', '127.0.0.17'),
    ('ws.wsonly.test', '127.0.0.18'),
    ('s.srvonly.test', '127.0.0.19'),
    ('w.srvonly.test', '127.0.0.20'),
    ('srvonly.test', '127.0.0.21'),
    ('aonly.test', '127.0.0.22', '::1'),
    ('heavy.weights.test', '127.0.0.31'),
    ('light.weights.test', '127.0.0.32'),
    ('backup.weights.test', '127.0.0.33'),
    ('explicit.test', '127.0.0.40'),
    ('x.explicit.test', '127.0.0.41'),
    ('n.explicit.test', '127.0.0.42'),
    ('nosrv.test', '127.0.0.43'),
    ('edge.aflag.test', '127.0.0.44'),
    ('dot.test', '127.0.0.45'),
]


@pytest.fixture(scope='module')
def zone() -> Iterator[Dnsmasq]:
    with Dnsmasq(naptr=NAPTR, srv=SRV, hosts=HOSTS,
                 extra_args=['--txt-record=empty.test,nothing here']) as server:
        yield server


def make_resolver(zone: Dnsmasq, **options: Any) -> Resolver:
    options.setdefault('timeout', 1.0)
    options.setdefault('lifetime', 3.0)
    return Resolver(nameservers=[zone.nameserver], **options)


def summary(targets: list[Target]) -> list[tuple[str, str, int]]:
    return [(t.transport, t.host, t.port) for t in targets]


def srv_queries(zone: Dnsmasq) -> list[str]:
    return [name for rdtype, name in zone.queries() if rdtype == 'SRV']


# --------------------------------------------------------------------------- NAPTR
@pytest.mark.asyncio
async def test_naptr_srv_a_order_and_preference(zone: Dnsmasq) -> None:
    """RFC 7118 §5.5: keep SIPS+D2W and SIP+D2W, sort by order then preference; the
    NAPTR replacement is queried verbatim, unsupported services are never queried."""
    zone.clear_queries()
    targets = await make_resolver(zone).resolve('sip:both.test')
    assert summary(targets) == [('wss', '127.0.0.11', 5081),   # order 10 SIPS+D2W
                                ('ws', '127.0.0.12', 5080),    # order 20 pref 5
                                ('ws', '127.0.0.13', 5082)]    # order 20 pref 10
    first = targets[0]
    assert (first.via, first.naptr_service, first.srv_name, first.target_name) == \
        ('naptr', 'SIPS+D2W', '_sips._ws.both.test', 'wss.both.test')
    assert targets[1].naptr_service == 'SIP+D2W' and targets[1].srv_name == '_a._b.both.test'
    queries = zone.queries()
    assert queries[0] == ('NAPTR', 'both.test')
    queried = [name for rdtype, name in queries if rdtype == 'SRV']
    assert sorted(queried) == ['_a._b.both.test', '_c._d.both.test', '_sips._ws.both.test']
    assert '_sip._udp.both.test' not in queried and '_sips._tcp.both.test' not in queried


@pytest.mark.asyncio
async def test_sips_uri_keeps_only_sips_d2w(zone: Dnsmasq) -> None:
    """RFC 7118 §5.5, §9.2: a sips: URI keeps only SIPS+D2W and yields only wss targets."""
    zone.clear_queries()
    targets = await make_resolver(zone).resolve('sips:alice@both.test')
    assert summary(targets) == [('wss', '127.0.0.11', 5081)]
    assert targets[0].url == 'wss://both.test:5081/'
    assert targets[0].tls_name == 'both.test'
    assert srv_queries(zone) == ['_sips._ws.both.test']


@pytest.mark.asyncio
async def test_client_without_tls_picks_sip_d2w(zone: Dnsmasq) -> None:
    """RFC 7118 §5.5 (RFC7118-5.5-a): services for transports the client does not implement are dropped."""
    targets = await make_resolver(zone, transports=('ws',)).resolve('sip:both.test')
    assert summary(targets) == [('ws', '127.0.0.12', 5080), ('ws', '127.0.0.13', 5082)]
    tls_only = await make_resolver(zone, transports=('wss',)).resolve('sip:both.test')
    assert summary(tls_only) == [('wss', '127.0.0.11', 5081)]


@pytest.mark.asyncio
async def test_sips_uri_without_sips_naptr_is_an_error(zone: Dnsmasq) -> None:
    """RFC 7118 §9.2: sips: never falls back to plain WS, even when the domain only offers SIP+D2W."""
    with pytest.raises(DiscoveryError) as info:
        await make_resolver(zone).resolve('sips:wsonly.test')
    text = str(info.value)
    assert 'wsonly.test' in text and 'SIP+D2W' in text and 'SIPS+D2W' in text
    # and sips: with a client configured without TLS is refused before any DNS
    zone.clear_queries()
    with pytest.raises(ConfigurationError, match='wss'):
        await make_resolver(zone, transports=('ws',)).resolve('sips:both.test')
    assert zone.queries() == []


@pytest.mark.asyncio
async def test_only_unsupported_naptr_services(zone: Dnsmasq) -> None:
    """RFC 7118 §5.5 + RFC 3263 4.1: NAPTR exists but offers only SIP+D2U/SIP+D2T -> a clear
    error by default (the SRV fallback is only for "no NAPTR records"); naptr_fallback=True
    continues as if there were no NAPTR."""
    with pytest.raises(DiscoveryError) as info:
        await make_resolver(zone).resolve('sip:udponly.test')
    text = str(info.value)
    for word in ('udponly.test', 'SIP+D2U', 'SIP+D2T', 'SIP+D2W', 'NAPTR'):
        assert word in text
    targets = await make_resolver(zone, naptr_fallback=True).resolve('sip:udponly.test')
    assert summary(targets) == [('ws', '127.0.0.16', 8080)]
    assert targets[0].via == 'srv' and targets[0].srv_name == '_sip._ws.udponly.test'


@pytest.mark.asyncio
async def test_naptr_without_srv_falls_back_to_a(zone: Dnsmasq) -> None:
    """RFC 3263 4.2 / RFC 7118 §5.5: NAPTR points to a missing SRV -> A/AAAA at the default port."""
    targets = await make_resolver(zone).resolve('sip:nosrv.test')
    assert summary(targets) == [('wss', '127.0.0.43', DEFAULT_PORTS['wss'])]
    assert targets[0].url == 'wss://nosrv.test/'


@pytest.mark.asyncio
async def test_naptr_a_flag(zone: Dnsmasq) -> None:
    """RFC 7118 §5.5: a NAPTR record with flag "A" names a host, used at the default port."""
    targets = await make_resolver(zone).resolve('sips:aflag.test')
    assert summary(targets) == [('wss', '127.0.0.44', 443)]
    assert targets[0].host_header == 'aflag.test' and targets[0].target_name == 'edge.aflag.test'


# --------------------------------------------------------------------------- SRV without NAPTR
@pytest.mark.asyncio
async def test_no_naptr_falls_back_to_srv_labels(zone: Dnsmasq) -> None:
    """RFC 7118 §5.5 (RFC7118-5.5-c): without NAPTR, the documented SRV labels are queried (wss first)."""
    assert DEFAULT_SRV_LABELS == {'wss': ('_sips._ws', '_sips._wss'), 'ws': ('_sip._ws',)}
    zone.clear_queries()
    targets = await make_resolver(zone).resolve('sip:srvonly.test')
    assert summary(targets) == [('wss', '127.0.0.19', 8443), ('ws', '127.0.0.20', 8080)]
    assert [t.via for t in targets] == ['srv', 'srv']
    assert targets[0].srv_name == '_sips._wss.srvonly.test'
    queries = zone.queries()
    assert queries[0] == ('NAPTR', 'srvonly.test')
    assert sorted(n for t, n in queries if t == 'SRV') == \
        ['_sip._ws.srvonly.test', '_sips._ws.srvonly.test', '_sips._wss.srvonly.test']
    sips = await make_resolver(zone).resolve('sips:srvonly.test')
    assert summary(sips) == [('wss', '127.0.0.19', 8443)]


@pytest.mark.asyncio
async def test_no_srv_guess_mode(zone: Dnsmasq) -> None:
    """RFC 7118 §5.5: srv_labels={} queries no SRV at all and goes to A/AAAA at the default port."""
    zone.clear_queries()
    targets = await make_resolver(zone, srv_labels={}).resolve('sip:srvonly.test')
    assert summary(targets) == [('ws', '127.0.0.21', 80)]
    assert targets[0].via == 'a'
    assert {t for t, _ in zone.queries()} == {'NAPTR', 'A', 'AAAA'}
    custom = await make_resolver(zone, srv_labels={'ws': ['_sip._ws']}).resolve('sip:srvonly.test')
    assert summary(custom) == [('ws', '127.0.0.20', 8080)]


@pytest.mark.asyncio
async def test_srv_target_dot_means_unavailable(zone: Dnsmasq) -> None:
    """RFC 2782: an SRV target of "." yields no target (A/AAAA fallback takes over)."""
    targets = await make_resolver(zone).resolve('sip:dot.test')
    assert summary(targets) == [('ws', '127.0.0.45', 80)]


@pytest.mark.asyncio
async def test_srv_priority_and_weight_statistics(zone: Dnsmasq) -> None:
    """RFC 7118 §5.5 / RFC 2782: priority 10 records always precede priority 20; within
    priority 10 weights 3:1 make the heavy record first 75% of the time.  2000 draws:
    mean 1500, sd 19.4; the +-120 band is 6.2 sd, so a false failure has probability
    about 6e-10."""
    resolver = make_resolver(zone, address_types=('A',))
    heavy_first = 0
    runs = 2000

    async def one() -> list[tuple[str, str, int]]:
        return summary(await resolver.resolve('sip:weights.test;transport=ws'))

    results: list[list[tuple[str, str, int]]] = []
    for _ in range(runs // 50):
        results += await asyncio.gather(*(one() for _ in range(50)))
    for result in results:
        assert len(result) == 3
        assert result[2] == ('ws', '127.0.0.33', 5003)          # priority 20 always last
        assert {result[0][1], result[1][1]} == {'127.0.0.31', '127.0.0.32'}
        heavy_first += result[0][1] == '127.0.0.31'
    assert abs(heavy_first - 0.75 * runs) <= 120, heavy_first


def test_order_srv_unit() -> None:
    """RFC 2782 selection with a seeded random source: deterministic, priority-first,
    weight-0 records rare but possible, every record kept."""
    @dataclass
    class R:
        priority: int
        weight: int
        name: str

    records = [R(20, 0, 'z'), R(10, 0, 'zero'), R(10, 50, 'a'), R(10, 50, 'b')]
    rng = random.Random(1)
    counts = {'zero': 0, 'a': 0, 'b': 0}
    for _ in range(1010):
        ordered = order_srv(records, rng)
        assert sorted(r.name for r in ordered) == ['a', 'b', 'z', 'zero']
        assert ordered[-1].name == 'z'
        counts[ordered[0].name] += 1
    assert 0 < counts['zero'] < 40        # expected 1010/101 = 10
    assert 400 < counts['a'] < 600 and 400 < counts['b'] < 600
    assert order_srv([R(1, 0, 'x'), R(1, 0, 'y')], random.Random(2))  # all-zero weights work
    # weights 1:3 give exactly 25/75 whatever order the DNS answer lists them in (the
    # literal RFC 2782 draw in [0, sum] would give 40/60 or 20/80 here)
    for pair in ([R(1, 1, 'light'), R(1, 3, 'heavy')], [R(1, 3, 'heavy'), R(1, 1, 'light')]):
        rng = random.Random(3)
        heavy = sum(order_srv(pair, rng)[0].name == 'heavy' for _ in range(20000))
        assert abs(heavy / 20000 - 0.75) < 0.015, heavy
    assert [r.name for r in order_srv(records, random.Random(7))] == \
        [r.name for r in order_srv(records, random.Random(7))]


# --------------------------------------------------------------------------- A only, explicit
@pytest.mark.asyncio
async def test_a_and_aaaa_only_default_ports(zone: Dnsmasq) -> None:
    """RFC 7118 §5.5 (RFC7118-5.5-b): no NAPTR, no SRV: sip: -> ws port 80, sips: -> wss port 443; AAAA (::1)
    results are included after A; Host and TLS name are the domain."""
    targets = await make_resolver(zone).resolve('sip:aonly.test')
    assert summary(targets) == [('ws', '127.0.0.22', 80), ('ws', '::1', 80)]
    assert [t.url for t in targets] == ['ws://aonly.test/', 'ws://aonly.test/']
    assert targets[0].via == 'a' and targets[0].tls_name is None
    secure = await make_resolver(zone).resolve('sips:bob@aonly.test')
    assert summary(secure) == [('wss', '127.0.0.22', 443), ('wss', '::1', 443)]
    assert {t.tls_name for t in secure} == {'aonly.test'}
    assert secure[1].connect_kwargs()['host'] == '::1'
    v6first = await make_resolver(zone, address_types=('AAAA', 'A')).resolve('sip:aonly.test')
    assert [t.host for t in v6first] == ['::1', '127.0.0.22']


@pytest.mark.asyncio
async def test_per_domain_path(zone: Dnsmasq) -> None:
    """RFC 7118 §5.5 (RFC7118-5.5-d): the URL path comes from configuration per domain (default /)."""
    resolver = make_resolver(zone, paths={'aonly.test': '/sip', 'ws.wsonly.test': 'edge'})
    assert (await resolver.resolve('sip:aonly.test'))[0].url == 'ws://aonly.test/sip'
    # the SRV/NAPTR target name is looked up too; a missing leading / is added
    assert (await resolver.resolve('sip:wsonly.test'))[0].url == 'ws://wsonly.test:5080/edge'
    assert (await resolver.resolve('sip:srvonly.test'))[0].path == '/'
    other = make_resolver(zone, default_path='/ws')
    assert (await other.resolve('sip:aonly.test'))[0].url == 'ws://aonly.test/ws'


@pytest.mark.asyncio
async def test_name_policy_target(zone: Dnsmasq) -> None:
    """RFC 7118 §9.1: name_policy='target' puts the SRV target in the URL, Host and TLS name."""
    targets = await make_resolver(zone, name_policy='target').resolve('sips:both.test')
    assert targets[0].url == 'wss://wss.both.test:5081/'
    assert targets[0].tls_name == 'wss.both.test'
    assert targets[0].connect_kwargs()['server_hostname'] == 'wss.both.test'


@pytest.mark.asyncio
async def test_explicit_port_skips_naptr_and_srv(zone: Dnsmasq) -> None:
    """RFC 3263 4.2: an explicit port skips NAPTR and SRV (NAPTR exists and is ignored)."""
    zone.clear_queries()
    targets = await make_resolver(zone).resolve('sip:explicit.test:8080')
    assert summary(targets) == [('ws', '127.0.0.40', 8080)]
    assert targets[0].via == 'explicit' and targets[0].url == 'ws://explicit.test:8080/'
    assert sorted(zone.queries()) == [('A', 'explicit.test'), ('AAAA', 'explicit.test')]
    secure = await make_resolver(zone).resolve('sips:explicit.test:8443;transport=ws')
    assert summary(secure) == [('wss', '127.0.0.40', 8443)]
    assert secure[0].url == 'wss://explicit.test:8443/'


@pytest.mark.asyncio
async def test_explicit_transport_skips_naptr(zone: Dnsmasq) -> None:
    """RFC 3263 4.1 / RFC 7118 §5.5: ;transport=ws skips NAPTR; sip: -> ws, sips: -> wss;
    SRV for that transport only, then A at 80/443; ;transport=wss is an alias for WSS."""
    zone.clear_queries()
    plain = await make_resolver(zone).resolve('sip:explicit.test;transport=ws')
    assert summary(plain) == [('ws', '127.0.0.40', 80)]
    queries = zone.queries()
    assert 'NAPTR' not in {t for t, _ in queries}
    assert [n for t, n in queries if t == 'SRV'] == ['_sip._ws.explicit.test']
    zone.clear_queries()
    secure = await make_resolver(zone).resolve('sips:alice@explicit.test;transport=ws')
    assert summary(secure) == [('wss', '127.0.0.41', 5081)]
    assert secure[0].via == 'srv' and secure[0].url == 'wss://explicit.test:5081/'
    assert 'NAPTR' not in {t for t, _ in zone.queries()}
    alias = await make_resolver(zone).resolve('sip:explicit.test;transport=WSS')
    assert summary(alias) == summary(secure)


@pytest.mark.asyncio
async def test_numeric_host_needs_no_dns(zone: Dnsmasq) -> None:
    """RFC 3263 4.1/4.2: a numeric host is used as is, no DNS query is made."""
    zone.clear_queries()
    resolver = make_resolver(zone)
    assert summary(await resolver.resolve('sip:127.0.0.1:5080')) == [('ws', '127.0.0.1', 5080)]
    secure = await resolver.resolve('sips:alice@[::1]')
    assert summary(secure) == [('wss', '::1', 443)]
    assert secure[0].url == 'wss://[::1]/' and secure[0].tls_name == '::1'
    alias = await resolver.resolve('sip:127.0.0.1;transport=wss')
    assert alias[0].url == 'wss://127.0.0.1/' and alias[0].via == 'numeric'
    maddr = await resolver.resolve('sip:nx.test;maddr=127.0.0.1')
    assert summary(maddr) == [('ws', '127.0.0.1', 80)]
    assert zone.queries() == []


# --------------------------------------------------------------------------- errors
@pytest.mark.asyncio
async def test_nxdomain_is_a_clear_error(zone: Dnsmasq) -> None:
    """NXDOMAIN -> DiscoveryError naming the domain, the NXDOMAIN and what was queried."""
    for uri in ('sip:nx.test', 'sips:bob@nx.test', 'sip:nx.test:5060', 'sip:nx.test;transport=ws'):
        with pytest.raises(DiscoveryError) as info:
            await make_resolver(zone).resolve(uri)
        text = str(info.value)
        assert 'nx.test does not exist' in text and 'NXDOMAIN' in text, text
        assert zone.nameserver in text
        assert isinstance(info.value, TransportError)


@pytest.mark.asyncio
async def test_no_records_and_refused_are_clear_errors(zone: Dnsmasq) -> None:
    """A name with no NAPTR/SRV/A/AAAA, and a server that refuses, give readable errors."""
    with pytest.raises(DiscoveryError) as info:
        await make_resolver(zone).resolve('sip:empty.test')
    text = str(info.value)
    assert 'no WebSocket server found for sip:empty.test' in text
    for queried in ('NAPTR empty.test: no records', 'SRV _sip._ws.empty.test',
                    'A empty.test: no records', 'AAAA empty.test: no records'):
        assert queried in text
    with pytest.raises(DiscoveryError, match='REFUSED'):
        await make_resolver(zone).resolve('sip:example.invalid')


@pytest.mark.asyncio
async def test_dns_timeout(zone: Dnsmasq) -> None:
    """Every query is bounded: a silent name server gives a timeout error, quickly."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(('127.0.0.1', 0))
        port = silent.getsockname()[1]
        resolver = Resolver(nameservers=['127.0.0.1:%d' % port], timeout=0.2, lifetime=0.5)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(DiscoveryError, match='timed out'):
            await resolver.resolve('sip:both.test')
        assert loop.time() - start < 3


@pytest.mark.asyncio
async def test_bad_uris_and_options() -> None:
    """Non-WebSocket transports, non-SIP URIs and bad options raise ConfigurationError."""
    resolver = Resolver(nameservers=['127.0.0.1:1'], lifetime=0.5)
    for uri in ('sip:a.test;transport=udp', 'sip:a.test;transport=tls', 'ws://a.test/',
                'tel:+123', 'sip:'):
        with pytest.raises(ConfigurationError):
            await resolver.resolve(uri)
    with pytest.raises(ConfigurationError, match='ws'):
        await Resolver(nameservers=['127.0.0.1:1'], transports=('ws',)).resolve('sip:127.0.0.1;transport=wss')
    for bad in (dict(nameservers=['ns.example']), dict(transports=('udp',)), dict(transports=()),
                dict(name_policy='x'), dict(srv_labels={'tcp': ['_sip._tcp']}),
                dict(address_types=('MX',)), dict(timeout=0)):
        with pytest.raises(ConfigurationError):
            Resolver(**bad)


def test_helpers() -> None:
    assert parse_nameserver('127.0.0.1') == ('127.0.0.1', 53)
    assert parse_nameserver('127.0.0.1:5353') == ('127.0.0.1', 5353)
    assert parse_nameserver('[::1]:5353') == ('::1', 5353)
    assert parse_nameserver('::1') == ('::1', 53)
    for bad in ('127.0.0.1:0', '127.0.0.1:x', '[::1', 'localhost:53'):
        with pytest.raises(ConfigurationError):
            parse_nameserver(bad)
    assert is_sip_uri('sip:a.test') and is_sip_uri('SIPS:b@a.test') and is_sip_uri('<sip:x>')
    assert not is_sip_uri('ws://a.test/') and not is_sip_uri('wss://a.test/')


def test_target_url_and_kwargs() -> None:
    """RFC 7118 §5.5 (RFC7118-5.5-d): the URL carries the name, the non-default port and the path."""
    t = Target('wss', '127.0.0.1', 443, '/sip', 'example.test')
    assert t.url == 'wss://example.test/sip' and t.tls_name == 'example.test'
    kwargs = t.connect_kwargs()
    assert kwargs['host'] == '127.0.0.1' and kwargs['port'] == 443
    assert kwargs['server_hostname'] == 'example.test' and 'ssl' not in kwargs
    ctx = ssl.create_default_context()
    assert t.connect_kwargs(ssl=ctx)['ssl'] is ctx
    plain = Target('ws', '::1', 5080, 'ws', 'example.test', tls_name='ignored')
    assert plain.url == 'ws://example.test:5080/ws' and plain.tls_name is None
    assert 'server_hostname' not in plain.connect_kwargs(ssl=ctx)
    assert 'ssl' not in plain.connect_kwargs(ssl=ctx)
    assert Target('ws', '[::1]', 80).url == 'ws://[::1]/'
    with pytest.raises(ConfigurationError):
        Target('tcp', '127.0.0.1', 80)


# --------------------------------------------------------------------------- real connections
@dataclass
class Seen:
    host: str | None
    path: str
    subprotocol: str | None


@contextlib.asynccontextmanager
async def sip_ws_server(ssl_context: ssl.SSLContext | None = None
                        ) -> AsyncIterator[tuple[int, list[Seen]]]:
    """A plain websockets server on 127.0.0.1 speaking subprotocol "sip" (echo)."""
    seen: list[Seen] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.append(Seen(ws.request.headers.get('Host'), ws.request.path, ws.subprotocol))
        async for message in ws:
            await ws.send(message)

    async with serve(handler, '127.0.0.1', 0, subprotocols=['sip'],  # type: ignore[list-item]
                     ssl=ssl_context) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield port, seen


def ws_connector(ssl_context: ssl.SSLContext | None = None) -> Any:
    async def connect(target: Target) -> Any:
        return await ws_connect(target.url, subprotocols=['sip'], open_timeout=5,  # type: ignore[list-item]
                                **target.connect_kwargs(ssl=ssl_context))
    return connect


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point every proxy variable at a dead port: Target.connect_kwargs() must bypass it."""
    dead = 'http://127.0.0.1:%d' % closed_port()
    for name in ('no_proxy', 'NO_PROXY'):
        monkeypatch.delenv(name, raising=False)
    for name in ('http_proxy', 'https_proxy', 'ws_proxy', 'wss_proxy', 'all_proxy'):
        monkeypatch.setenv(name, dead)
        monkeypatch.setenv(name.upper(), dead)


@pytest.mark.asyncio
async def test_naptr_srv_a_real_connection(no_proxy_env: None) -> None:
    """RFC 7118 §5.5: NAPTR SIP+D2W -> SRV -> A 127.0.0.1 -> a real WebSocket
    handshake with subprotocol sip; the URL, hence the Host header, names the SIP
    domain while the socket goes to the resolved address (the URL host conn.test
    does not resolve through the system, so host=/port= were honoured)."""
    async with sip_ws_server() as (port, seen):
        with Dnsmasq(naptr=[('conn.test', 10, 10, 's', 'SIP+D2W', '', '_sip._ws.conn.test')],
                     srv=[('_sip._ws.conn.test', 'edge.conn.test', port, 10, 1)],
                     hosts=[('edge.conn.test', '127.0.0.1')]) as dns:
            targets = await resolve_sip_uri('sip:alice@conn.test', nameservers=[dns.nameserver],
                                            paths={'conn.test': '/sip-ws'})
        assert summary(targets) == [('ws', '127.0.0.1', port)]
        assert targets[0].url == 'ws://conn.test:%d/sip-ws' % port
        target, ws = await connect_first(targets, ws_connector())
        async with ws:
            assert ws.subprotocol == 'sip'
            await ws.send('OPTIONS sip:conn.test SIP/2.0\r\n\r\n')
            assert await asyncio.wait_for(ws.recv(), 5) == 'OPTIONS sip:conn.test SIP/2.0\r\n\r\n'
        assert target is targets[0]
        assert seen == [Seen('conn.test:%d' % port, '/sip-ws', 'sip')]


@pytest.mark.asyncio
async def test_dead_first_target_then_second(caplog: pytest.LogCaptureFixture,
                                            no_proxy_env: None) -> None:
    """RFC 7118 §4.1 / RFC 3263 4.3: the priority-10 target refuses the connection, the
    client moves on to the priority-20 one; the server sees Host = the SIP domain."""
    dead = closed_port()
    async with sip_ws_server() as (port, seen):
        with Dnsmasq(srv=[('_sip._ws.fail.test', 'dead.fail.test', dead, 10, 1),
                          ('_sip._ws.fail.test', 'live.fail.test', port, 20, 1)],
                     hosts=[('dead.fail.test', '127.0.0.1'), ('live.fail.test', '127.0.0.1')]) as dns:
            targets = await Resolver([dns.nameserver]).resolve('sip:fail.test')
        assert summary(targets) == [('ws', '127.0.0.1', dead), ('ws', '127.0.0.1', port)]
        caplog.set_level(logging.WARNING, logger='aiosip_ws.transport.discovery')
        target, ws = await connect_first(targets, ws_connector())
        await ws.close()
        assert target is targets[1] and target.target_name == 'live.fail.test'
        assert seen == [Seen('fail.test:%d' % port, '/', 'sip')]
        assert any(':%d' % dead in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.asyncio
async def test_all_targets_fail() -> None:
    """RFC 3263 §4.3 (RFC3263-4.3-a): when no target connects, the error lists every target and cause."""
    a, b = closed_port(), closed_port()
    targets = [Target('ws', '127.0.0.1', a, host_header='x.test'),
               Target('ws', '127.0.0.1', b, host_header='x.test')]
    with pytest.raises(AllTargetsFailed) as info:
        await connect_first(targets, ws_connector())
    assert isinstance(info.value, DiscoveryError) and isinstance(info.value, TransportError)
    assert [t for t, _ in info.value.attempts] == targets
    assert str(a) in str(info.value) and str(b) in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(DiscoveryError, match='no target'):
        await connect_first([], ws_connector())


@pytest.mark.asyncio
async def test_connect_first_timeout_and_cancellation() -> None:
    """connect_first bounds attempts with attempt_timeout and never swallows cancellation."""
    targets = [Target('ws', '127.0.0.1', 1001), Target('ws', '127.0.0.1', 1002)]
    calls: list[int] = []
    started = asyncio.Event()

    async def hang_first(target: Target) -> str:
        calls.append(target.port)
        if target.port == 1001:
            started.set()
            await asyncio.sleep(3600)
        return 'ok'

    target, result = await connect_first(targets, hang_first, attempt_timeout=0.2)
    assert (target.port, result, calls) == (1002, 'ok', [1001, 1002])

    calls.clear()
    started.clear()
    task = asyncio.ensure_future(connect_first(targets, hang_first))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == [1001]


# --------------------------------------------------------------------------- wss
@pytest.fixture(scope='module')
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    """A test CA and a server certificate for tls.test (and no other name or address)."""
    return make_certificates(tmp_path_factory.mktemp('tls'), names=('tls.test',), ips=())


@pytest.mark.asyncio
async def test_wss_verifies_the_domain_name(tls_files: CertFiles, no_proxy_env: None) -> None:
    """RFC 7118 §9.1 / §5.5: sips: -> NAPTR SIPS+D2W -> SRV edge.tls.test -> 127.0.0.1; the
    client connects to 127.0.0.1 while sending SNI and Host tls.test and verifying the
    certificate for tls.test.  With name_policy='target' the name checked is the SRV
    target edge.tls.test, which the certificate does not cover, so TLS fails; a numeric
    URI (wss://127.0.0.1) fails the same way."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls_files.cert, tls_files.key)
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: sni.append(name)
    client_ctx = ssl.create_default_context(cafile=str(tls_files.ca_cert))

    async with sip_ws_server(server_ctx) as (port, seen):
        with Dnsmasq(naptr=[('tls.test', 10, 10, 's', 'SIPS+D2W', '', '_sips._ws.tls.test'),
                            ('tls.test', 20, 10, 's', 'SIP+D2W', '', '_sip._ws.tls.test')],
                     srv=[('_sips._ws.tls.test', 'edge.tls.test', port, 10, 1),
                          ('_sip._ws.tls.test', 'edge.tls.test', closed_port(), 10, 1)],
                     hosts=[('edge.tls.test', '127.0.0.1')]) as dns:
            targets = await resolve_sip_uri('sips:alice@tls.test', nameservers=[dns.nameserver])
            by_target = await resolve_sip_uri('sips:alice@tls.test', nameservers=[dns.nameserver],
                                              name_policy='target')
        assert summary(targets) == [('wss', '127.0.0.1', port)]
        assert targets[0].url == 'wss://tls.test:%d/' % port and targets[0].tls_name == 'tls.test'
        target, ws = await connect_first(targets, ws_connector(client_ctx))
        async with ws:
            await ws.send('ping')
            assert await asyncio.wait_for(ws.recv(), 5) == 'ping'
        assert seen == [Seen('tls.test:%d' % port, '/', 'sip')]
        assert sni == ['tls.test']

        assert by_target[0].tls_name == 'edge.tls.test'
        with pytest.raises(AllTargetsFailed) as info:
            await connect_first(by_target, ws_connector(client_ctx))
        assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)

        numeric = await Resolver(nameservers=['127.0.0.1:1']).resolve('sips:127.0.0.1:%d' % port)
        with pytest.raises(AllTargetsFailed) as info:
            await connect_first(numeric, ws_connector(client_ctx))
        assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
        assert len(seen) == 1


def test_websockets_version_supports_host_override() -> None:
    """connect_kwargs() relies on websockets' asyncio connect passing host=/port=/
    server_hostname= to loop.create_connection (websockets >= 13 new asyncio API)."""
    major = int(websockets.version.version.split('.')[0])
    assert major >= 13
