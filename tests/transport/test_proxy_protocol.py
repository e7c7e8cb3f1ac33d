"""The HAProxy PROXY protocol (v1 and v2) in front of listen() (``ServerOptions.proxy_protocol``).

The parser on its own, then on the wire: a header in the same segment as the HTTP upgrade
or the TLS ClientHello, a header trickling in byte by byte, health checks (v2 LOCAL), and
every way a connection can get it wrong (no header, a late one, garbage, an untrusted peer):
each is closed without a byte sent and without a traceback.  tests/interop/test_haproxy.py
runs Debian's HAProxy in front of serve.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import struct

import pytest

from aiosip_ws.errors import ConfigurationError, ProxyHeaderError
from aiosip_ws.options import ServerOptions
from aiosip_ws.transport.listener import listen
from aiosip_ws.transport.proxyproto import (
    MAX_HEADER,
    V2_SIGNATURE,
    ProxyHeader,
    parse_proxy_header,
)
from tests.support.websocket import Recorder, handshake_request, new_key

HOST = '127.0.0.1'


def v2(source: tuple[str, int] | None = ('198.51.100.7', 51234),
       destination: tuple[str, int] = ('203.0.113.1', 443), *, command: int = 1,
       tlvs: bytes = b'') -> bytes:
    """A version 2 header (TCP over IPv4 or IPv6 from ``source``; None: UNSPEC)."""
    if source is None:
        return V2_SIGNATURE + struct.pack('!BBH', 0x20 | command, 0, len(tlvs)) + tlvs
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = 0x11 if src.version == 4 else 0x21
    block = src.packed + dst.packed + struct.pack('!HH', source[1], destination[1]) + tlvs
    return V2_SIGNATURE + struct.pack('!BBH', 0x20 | command, family, len(block)) + block


def v1(source: tuple[str, int] = ('198.51.100.7', 51234)) -> bytes:
    family = 'TCP4' if ':' not in source[0] else 'TCP6'
    dst = '203.0.113.1' if family == 'TCP4' else '2001:db8::1'
    return ('PROXY %s %s %s %d 443\r\n' % (family, source[0], dst, source[1])).encode()


# --- the parser --------------------------------------------------------------------------
def test_version_1_lines():
    line = v1()
    assert parse_proxy_header(line + b'GET / HTTP/1.1\r\n') == ProxyHeader(
        len(line), ('198.51.100.7', 51234), ('203.0.113.1', 443), 1)
    header = parse_proxy_header(v1(('2001:db8::7', 1)))
    assert header is not None and header.source == ('2001:db8::7', 1)
    assert parse_proxy_header(b'PROXY UNKNOWN\r\n\x16\x03') == ProxyHeader(15, None, None, 1)
    assert parse_proxy_header(b'PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n') == ProxyHeader(
        35, None, None, 1)
    for cut in range(1, len(line)):                 # incomplete: every byte is the header's
        assert parse_proxy_header(line[:cut]) is None


@pytest.mark.parametrize('data, complaint', [
    (b'GET / HTTP/1.1\r\n', 'no PROXY protocol header'),
    (b'\x16\x03\x01\x02\x00', 'no PROXY protocol header'),
    (b'PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n', 'is not "PROXY TCP4'),
    (b'PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n', 'is not "PROXY TCP4'),
    (b'PROXY TCP4 1.2.3.4 ::1 1 2\r\n', 'is not IPv4'),
    (b'PROXY TCP4 example.com 5.6.7.8 1 2\r\n', 'is not an IP address'),
    (b'PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n', 'is not a number'),
    (b'PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n', 'is not a number'),
    (b'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n', 'without CRLF'),
    (b'PROXY ' + b'x' * 200, 'without CRLF'),
    (V2_SIGNATURE + b'\x10\x11\x00\x0c' + bytes(12), 'of version 1'),
    (V2_SIGNATURE + b'\x22\x11\x00\x0c' + bytes(12), 'command 2'),
    (V2_SIGNATURE + b'\x21\x11\x00\x04' + bytes(4), 'need 12 bytes'),
    (V2_SIGNATURE + b'\x21\x11\xff\xff', 'at most %d' % MAX_HEADER),
    (b'\r\n\r\n\x00\r\nQUIX\n' + bytes(4), 'no PROXY protocol header'),
])
def test_what_is_no_proxy_header(data, complaint):
    with pytest.raises(ProxyHeaderError, match=complaint):
        parse_proxy_header(data)


def test_version_2_blocks():
    header = v2(tlvs=b'\x05\x00\x04abcd')                        # PP2_TYPE_UNIQUE_ID: skipped
    assert parse_proxy_header(header + b'\x16\x03') == ProxyHeader(
        len(header), ('198.51.100.7', 51234), ('203.0.113.1', 443), 2)
    six = v2(('2001:db8::7', 4000), ('2001:db8::1', 443))
    assert parse_proxy_header(six) == ProxyHeader(52, ('2001:db8::7', 4000), ('2001:db8::1', 443), 2)
    assert parse_proxy_header(v2(command=0)) == ProxyHeader(28, None, None, 2)     # LOCAL
    assert parse_proxy_header(v2(None)) == ProxyHeader(16, None, None, 2)          # UNSPEC
    udp = V2_SIGNATURE + b'\x21\x12\x00\x0c' + bytes(12)
    assert parse_proxy_header(udp) == ProxyHeader(28, None, None, 2)
    for cut in range(1, len(header)):
        assert parse_proxy_header(header[:cut]) is None


# --- on the wire -------------------------------------------------------------------------
@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger='aiosip_ws')
    caplog.set_level(logging.DEBUG, logger='websockets')
    return caplog


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return ['%s %s: %s' % (r.levelname, r.name, r.getMessage()) for r in caplog.records
            if r.levelno >= logging.ERROR or (r.exc_info and r.levelno > logging.DEBUG)]


async def proxied(url: str = 'ws://%s:0/' % HOST, **options) -> tuple[object, Recorder]:
    recorder = Recorder()
    options.setdefault('trusted_proxies', ('127.0.0.1/32',))
    listener = await listen(url, recorder, ServerOptions(proxy_protocol=True, **options))
    return listener, recorder


def upgrade(port: int) -> bytes:
    return handshake_request(HOST, port, new_key())


async def test_a_header_in_one_segment_with_the_upgrade_names_the_client(logs):
    listener, recorder = await proxied(max_connections_per_ip=1)
    try:
        reader, writer = await asyncio.open_connection(HOST, listener.port)
        writer.write(v1() + upgrade(listener.port))             # one write, one segment
        assert (await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'), 5)).startswith(b'HTTP/1.1 101 ')
        [conn] = recorder.connections
        assert conn.remote_addr == ('198.51.100.7', 51234)
        assert listener.connections_per_ip == {'198.51.100.7': 1}
        # the per-IP cap counts the client of the header, not the balancer
        second_reader, second_writer = await asyncio.open_connection(HOST, listener.port)
        second_writer.write(v2(('198.51.100.7', 2)) + upgrade(listener.port))
        assert (await asyncio.wait_for(second_reader.readuntil(b'\r\n\r\n'), 5)).startswith(
            b'HTTP/1.1 503 ')
        third_reader, third_writer = await asyncio.open_connection(HOST, listener.port)
        third_writer.write(v2(('2001:db8::9', 3), ('2001:db8::1', 443)) + upgrade(listener.port))
        assert (await asyncio.wait_for(third_reader.readuntil(b'\r\n\r\n'), 5)).startswith(
            b'HTTP/1.1 101 ')
        assert recorder.connections[-1].remote_addr == ('2001:db8::9', 3)
        for w in (writer, second_writer, third_writer):
            w.close()
    finally:
        await listener.close()
    assert not problems(logs)


async def test_a_header_that_trickles_in_byte_by_byte():
    listener, recorder = await proxied()
    try:
        reader, writer = await asyncio.open_connection(HOST, listener.port)
        for version in (v1(('192.0.2.44', 7)),):
            for byte in version:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.002)
        writer.write(upgrade(listener.port))
        assert (await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'), 5)).startswith(b'HTTP/1.1 101 ')
        assert recorder.connections[0].remote_addr == ('192.0.2.44', 7)
        writer.close()
    finally:
        await listener.close()


async def test_a_health_check_keeps_the_balancers_address():
    listener, recorder = await proxied()
    try:
        for header in (v2(command=0), b'PROXY UNKNOWN\r\n'):
            reader, writer = await asyncio.open_connection(HOST, listener.port)
            writer.write(header + upgrade(listener.port))
            assert (await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'), 5)).startswith(
                b'HTTP/1.1 101 ')
            assert recorder.connections[-1].remote_addr == writer.get_extra_info('sockname')
            writer.close()
    finally:
        await listener.close()


async def tls_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes,
                     context: ssl.SSLContext, request: bytes) -> bytes:
    """A TLS client on memory BIOs: ``first`` and the ClientHello go in one write (as a
    balancer may send them), then ``request``; returns the response head."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname='localhost')
    pending = first
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            writer.write(pending + outgoing.read())
            pending = b''
            data = await asyncio.wait_for(reader.read(65536), 5)
            assert data, 'the server closed during the TLS handshake'
            incoming.write(data)
    tls.write(request)
    writer.write(outgoing.read())
    received = b''
    while b'\r\n\r\n' not in received:
        try:
            received += tls.read(65536)
        except ssl.SSLWantReadError:
            writer.write(outgoing.read())
            data = await asyncio.wait_for(reader.read(65536), 5)
            assert data, 'the server closed before answering'
            incoming.write(data)
    return received


async def test_wss_reads_the_header_before_tls_even_in_one_segment_with_the_client_hello(certs, logs):
    listener, recorder = await proxied('wss://%s:0/' % HOST, ssl=certs.server_context())
    try:
        for header in (v2(('198.51.100.8', 4431), tlvs=b'\x05\x00\x02id'), v1(('198.51.100.9', 4432))):
            reader, writer = await asyncio.open_connection(HOST, listener.port)
            answer = await tls_client(reader, writer, header, certs.client_context(),
                                      upgrade(listener.port))
            assert answer.startswith(b'HTTP/1.1 101 ')
            assert recorder.connections[-1].remote_addr == parse_proxy_header(header).source
            assert recorder.connections[-1].secure
            writer.close()
    finally:
        await listener.close()
    assert not problems(logs)


async def closed_silently(port: int, data: bytes, *, timeout: float = 5.0) -> bool:
    """Send ``data``; True when the server closes without sending a byte."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        try:
            return await asyncio.wait_for(reader.read(), timeout) == b''
        except ConnectionResetError:
            return True
    finally:
        writer.close()


async def test_bad_late_and_missing_headers_close_the_connection_without_an_answer(logs):
    listener, recorder = await proxied(open_timeout=0.3)
    try:
        port = listener.port
        assert await closed_silently(port, upgrade(port))                  # no header
        assert await closed_silently(port, b'PROXY TCP4 1.2.3.4 nowhere 1 2\r\n' + upgrade(port))
        assert await closed_silently(port, b'PROXY TCP4 1.2.3.4')          # late: open_timeout
        assert await closed_silently(port, b'')                            # nothing at all
        assert await closed_silently(port, V2_SIGNATURE + b'\x21\x11\x08\x00' + bytes(8))
        assert not recorder.connections
    finally:
        await listener.close()
    text = logs.text
    assert 'no PROXY protocol header: the stream starts with' in text
    assert "PROXY v1 address 'nowhere' is not an IP address" in text
    assert 'no PROXY header within 0.3 s' in text
    assert not problems(logs)


async def test_only_trusted_proxies_may_connect(logs):
    listener, recorder = await proxied(trusted_proxies=('192.0.2.0/24',))
    try:
        assert await closed_silently(listener.port, v1() + upgrade(listener.port))
        assert not recorder.connections
    finally:
        await listener.close()
    assert 'not a trusted proxy' in logs.text


async def test_closing_the_listener_ends_connections_still_in_their_header():
    listener, recorder = await proxied(open_timeout=30)
    reader, writer = await asyncio.open_connection(HOST, listener.port)
    writer.write(b'PROXY TCP4 ')
    await writer.drain()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(listener.close(), 2)
    assert await asyncio.wait_for(reader.read(), 2) == b''
    writer.close()


async def test_proxy_protocol_needs_trusted_proxies_and_asyncios_loop():
    with pytest.raises(ConfigurationError, match='needs trusted_proxies'):
        ServerOptions(proxy_protocol=True).validate()
    uvloop = pytest.importorskip('uvloop')

    async def on_uvloop() -> None:
        with pytest.raises(ConfigurationError, match="needs asyncio's own event loop"):
            await listen('ws://%s:0/' % HOST, Recorder(),
                         ServerOptions(proxy_protocol=True, trusted_proxies=('127.0.0.1',)))
    await asyncio.get_running_loop().run_in_executor(None, uvloop.run, on_uvloop())
