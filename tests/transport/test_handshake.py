"""The opening handshake under abuse, and the limits that hold on every websockets version
setup.cfg allows (15, 16 and 17: tests/run-all.sh runs this file on 15 too).

Each refused or broken handshake gets its refusal on the wire and at most one log line at
the levels ``aiosip-ws serve`` logs at (aiosip_ws INFO, websockets WARNING); none logs an
ERROR or a traceback at any level above DEBUG.  websockets 15 and 16 log an ERROR "opening
handshake failed" with a traceback for each of them unless listen() tames it."""
from __future__ import annotations

import asyncio
import ipaddress
import logging

import pytest
import websockets

from aiosip_ws.options import ServerOptions
from aiosip_ws.transport.listener import WSListener, listen
from tests.support.websocket import (
    Opcode,
    RawWebSocket,
    Recorder,
    handshake_request,
    new_key,
    response_headers,
)

HOST = '127.0.0.1'


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger='websockets')
    caplog.set_level(logging.DEBUG, logger='aiosip_ws')
    return caplog


def serve_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The records ``aiosip-ws serve`` shows at its default level."""
    return ['%s %s: %s' % (r.levelname, r.name, r.getMessage()) for r in caplog.records
            if r.levelno >= (logging.WARNING if r.name.startswith('websockets') else logging.INFO)]


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """An ERROR, or a traceback above DEBUG."""
    return ['%s %s: %s' % (r.levelname, r.name, r.getMessage()) for r in caplog.records
            if r.levelno >= logging.ERROR or (r.exc_info and r.levelno > logging.DEBUG)]


async def settle(baseline: int) -> None:
    """Wait (2 s at most) until the server has finished with the connection: its tasks gone."""
    for _ in range(100):
        if len(asyncio.all_tasks()) <= baseline:
            return
        await asyncio.sleep(0.02)


async def exchange(port: int, data: bytes, *, how: str = 'read', timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new TCP connection, then: ``read`` all until the server closes,
    ``eof`` half-close first and read, ``abort`` reset the connection at once (returns b'')."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        if data:
            writer.write(data)
            await writer.drain()
        if how == 'abort':
            await asyncio.sleep(0.05)
            writer.transport.abort()
            return b''
        if how == 'eof':
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def request(*, version: str | None = '13', upgrade: bool = True, subprotocol: str | None = 'sip',
            key: str | None = None) -> bytes:
    lines = ['GET / HTTP/1.1', 'Host: %s' % HOST]
    if upgrade:
        lines += ['Upgrade: websocket', 'Connection: Upgrade']
    lines.append('Sec-WebSocket-Key: %s' % (key or new_key()))
    if version is not None:
        lines.append('Sec-WebSocket-Version: %s' % version)
    if subprotocol:
        lines.append('Sec-WebSocket-Protocol: %s' % subprotocol)
    return ('\r\n'.join(lines) + '\r\n\r\n').encode()


def status_and_headers(response: bytes) -> tuple[int, dict[str, str]]:
    head = response.partition(b'\r\n\r\n')[0].decode('latin-1')
    assert head.startswith('HTTP/1.1 '), response
    return int(head.split()[1]), {k.lower(): v for k, v in response_headers(head)}


@pytest.fixture
async def server(logs: pytest.LogCaptureFixture):
    listener = await listen('ws://%s:0/' % HOST, Recorder(), ServerOptions(open_timeout=0.5))
    try:
        logs.clear()                                     # the "listening on" lines
        yield listener
    finally:
        await listener.close()


@pytest.mark.parametrize('version', ['8', '12', '14', 'x'])
async def test_another_websocket_version_gets_426_naming_13(server: WSListener, logs, version):
    """RFC 6455 §4.4: a version the server does not speak: 426 with Sec-WebSocket-Version: 13
    (and Upgrade, RFC 9110 §15.5.22); version 13 on the same server then works."""
    baseline = len(asyncio.all_tasks())
    status, headers = status_and_headers(await exchange(server.port, request(version=version)))
    assert status == 426
    assert headers['sec-websocket-version'] == '13' and headers['upgrade'] == 'websocket'
    await settle(baseline)
    [line] = serve_lines(logs)
    assert line.startswith("INFO aiosip_ws.transport.listener: refused handshake from ('127.0.0.1', ")
    assert line.endswith(': Sec-WebSocket-Version %s, not 13' % version)
    assert problems(logs) == []
    ws = await RawWebSocket.connect(HOST, server.port)
    await ws.close()


#: (case, bytes sent, how the client ends, the refusal on the wire, the serve-level line or None)
GARBAGE = [
    ('plain-get', b'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n', 'read', 426, 'HTTP 426: '),
    ('no-sip', request(subprotocol=None), 'read', 400, 'HTTP 400: missing subprotocol'),
    ('bad-key', request(key='not-base64!'), 'read', 400, 'HTTP 400: invalid Sec-WebSocket-Key'),
    ('no-version', request(version=None), 'read', 400, 'HTTP 400: missing Sec-WebSocket-Version'),
    ('tls-hello', b'\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03' + bytes(32) + b'\r\n\r\n',
     'read', None, None),
    ('not-http', b'SIP/2.0 200 OK\r\n\r\n', 'read', None, None),
    ('binary-junk', bytes(range(256)) * 4, 'read', None, None),
    ('truncated', request()[:50], 'eof', None, None),
    ('aborted-mid-request', request()[:50], 'abort', None, None),
    ('aborted-before-request', b'', 'abort', None, None),
    ('stalled', request()[:50], 'read', None, None),           # open_timeout (0.5 s) ends it
]
#: websockets 17 answers a request line it does not take (405, 505); 15 and 16 close the
#: TCP connection without an answer.  Either way: nothing above INFO, no traceback.
_ANSWERS_REQUEST_LINE = int(websockets.__version__.split('.')[0]) >= 17
GARBAGE += [
    ('post', request().replace(b'GET ', b'POST ', 1), 'read',
     405 if _ANSWERS_REQUEST_LINE else None,
     'HTTP 405: unsupported HTTP method' if _ANSWERS_REQUEST_LINE else None),
    ('http-1.0', request().replace(b'HTTP/1.1', b'HTTP/1.0', 1), 'read',
     505 if _ANSWERS_REQUEST_LINE else None,
     'HTTP 505: unsupported HTTP version' if _ANSWERS_REQUEST_LINE else None),
]


@pytest.mark.parametrize('case, data, how, status, line', GARBAGE, ids=[g[0] for g in GARBAGE])
async def test_a_broken_handshake_is_refused_in_at_most_one_line(server: WSListener, logs,
                                                                 case, data, how, status, line):
    """An HTTP request that is no WebSocket handshake for us gets its HTTP refusal; bytes
    that are no HTTP request, or a connection that ends or stalls mid-request, are closed
    without an answer.  One INFO line for the former, nothing above DEBUG for the latter,
    never an ERROR or a traceback; the server goes on serving."""
    baseline = len(asyncio.all_tasks())
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await exchange(server.port, data, how=how)
    if status is None:
        assert answer == b''
    else:
        got, headers = status_and_headers(answer)
        assert got == status
        if status == 426:
            assert headers['upgrade'] == 'websocket'
    if case == 'stalled':
        assert 0.4 < loop.time() - started < 3
    await settle(baseline)
    lines = serve_lines(logs)
    if line is None:
        assert lines == []
    else:
        assert len(lines) == 1 and line in lines[0], lines
        assert lines[0].startswith('INFO aiosip_ws.transport.listener: refused handshake from')
    assert problems(logs) == []
    ws = await RawWebSocket.connect(HOST, server.port)
    await ws.close()


async def test_max_size_closes_with_1009_across_fragments():
    """RFC 6455 §7.4.1: ServerOptions(max_size) bounds a message, fragmented or not (the
    same on websockets 15-17): fragments adding up to at most max_size make one message;
    one byte more, in one frame or over fragments, closes with 1009."""
    recorder = Recorder()
    listener = await listen('ws://%s:0/' % HOST, recorder, ServerOptions(max_size=1024))
    try:
        options = (b'OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS a.invalid;branch=z9hG4bK1\r\n'
                   b'From: <sip:a@example.com>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: frag\r\n'
                   b'CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n')
        padded = options.replace(b'Content-Length: 0',
                                 b'X-Pad: ' + b'p' * (1024 - len(options) - 9) + b'\r\nContent-Length: 0')
        assert len(padded) == 1024
        ws = await RawWebSocket.connect(HOST, listener.port)
        await ws.send_frame(Opcode.TEXT, padded[:600], fin=False)
        await ws.send_frame(Opcode.CONT, padded[600:], fin=True)
        message = await asyncio.wait_for(recorder.messages.get(), 5)
        assert message.get('Call-ID') == 'frag'
        await ws.send_frame(Opcode.TEXT, padded[:600], fin=False)
        await ws.send_frame(Opcode.CONT, padded[600:] + b' ', fin=True)
        assert await ws.recv_close() == 1009
        await ws.close()
        ws = await RawWebSocket.connect(HOST, listener.port)
        await ws.send_frame(Opcode.TEXT, padded + b' ')
        assert await ws.recv_close() == 1009
        await ws.close()
    finally:
        await listener.close()


async def test_per_ip_cap_counts_each_source_address_in_an_index():
    """max_connections_per_ip counts the open connections of each source address (an index
    kept on connect and close, not a scan): a third from 127.0.0.1 gets 503, one from
    127.0.0.2 is accepted; when they close the index is empty again."""
    listener = await listen('ws://%s:0/' % HOST, Recorder(), ServerOptions(max_connections_per_ip=2))
    try:
        first = await RawWebSocket.connect(HOST, listener.port)
        second = await RawWebSocket.connect(HOST, listener.port)
        for _ in range(50):
            if listener.connections_per_ip == {HOST: 2}:
                break
            await asyncio.sleep(0.02)
        assert listener.connections_per_ip == {HOST: 2}
        status, headers = status_and_headers(await exchange(listener.port, request()))
        assert status == 503 and 5 <= int(headers['retry-after']) <= 10  # jittered
        reader, writer = await asyncio.open_connection(HOST, listener.port,
                                                       local_addr=('127.0.0.2', 0))
        key = new_key()
        writer.write(handshake_request(HOST, listener.port, key))
        head = await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'), 5)
        assert head.startswith(b'HTTP/1.1 101 ')
        other = RawWebSocket(reader, writer, head.decode('latin-1'))
        for _ in range(50):
            if listener.connections_per_ip == {HOST: 2, '127.0.0.2': 1}:
                break
            await asyncio.sleep(0.02)
        assert listener.connections_per_ip == {HOST: 2, '127.0.0.2': 1}
        for ws in (first, second, other):
            await ws.close()
        for _ in range(100):
            if not listener.connections_per_ip and not listener.connections:
                break
            await asyncio.sleep(0.02)
        assert not listener.connections_per_ip and not listener.connections
    finally:
        await listener.close()



def test_the_client_behind_a_trusted_proxy_is_the_nearest_untrusted_hop():
    """X-Forwarded-For and Forwarded (RFC 7239) count only from a trusted proxy; the client
    is the nearest hop that is no trusted proxy; garbage stops the trust there."""
    from websockets.datastructures import Headers

    from aiosip_ws.transport.listener import forwarded_client
    proxies = [ipaddress.ip_network('10.0.0.0/8'), ipaddress.ip_network('::1/128')]

    def client(peer: str, **fields: str) -> str:
        headers = Headers([(k.replace('_', '-'), v) for k, v in fields.items()])
        return forwarded_client((peer, 4000), headers, proxies)[0]
    assert client('192.0.2.9', X_Forwarded_For='198.51.100.1') == '192.0.2.9'   # not a proxy
    assert client('10.0.0.1', X_Forwarded_For='198.51.100.1') == '198.51.100.1'
    assert client('10.0.0.1', X_Forwarded_For='6.6.6.6, 198.51.100.1, 10.0.0.2') == '198.51.100.1'
    assert client('10.0.0.1', Forwarded='for=198.51.100.7;proto=https',
                  X_Forwarded_For='6.6.6.6') == '198.51.100.7'
    assert client('::1', Forwarded='for="[2001:db8::5]:443"') == '2001:db8::5'
    assert client('10.0.0.1', Forwarded='for=198.51.100.7:5060') == '198.51.100.7'
    assert client('10.0.0.1', X_Forwarded_For='unknown') == '10.0.0.1'
    assert client('10.0.0.1') == '10.0.0.1'


async def test_per_ip_cap_and_remote_addr_use_the_forwarded_client():
    """Behind a trusted proxy (127.0.0.1 here) the per-IP cap counts the forwarded client,
    and the connection's remote_addr is that client."""
    recorder = Recorder()
    listener = await listen('ws://%s:0/' % HOST, recorder,
                            ServerOptions(trusted_proxies=('127.0.0.1/32',),
                                          max_connections_per_ip=1))
    try:
        def forwarded(ip: str) -> bytes:
            return request().replace(b'\r\n\r\n', b'\r\nX-Forwarded-For: %s\r\n\r\n' % ip.encode())
        reader, writer = await asyncio.open_connection(HOST, listener.port)
        writer.write(forwarded('198.51.100.1'))
        assert (await reader.readuntil(b'\r\n\r\n')).startswith(b'HTTP/1.1 101 ')
        await asyncio.sleep(0.05)
        [conn] = listener.connections
        assert conn.remote_addr == ('198.51.100.1', 0)
        second = await exchange(listener.port, forwarded('198.51.100.1'))
        assert second.startswith(b'HTTP/1.1 503 ')                 # the same client again
        third_reader, third_writer = await asyncio.open_connection(HOST, listener.port)
        third_writer.write(forwarded('198.51.100.2'))
        assert (await third_reader.readuntil(b'\r\n\r\n')).startswith(b'HTTP/1.1 101 ')
        assert listener.connections_per_ip == {'198.51.100.1': 1, '198.51.100.2': 1}
        third_writer.close()
        writer.close()
    finally:
        await listener.close()
