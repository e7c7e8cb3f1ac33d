"""HEP export in process, read back with the project's own decoder (sngrep, hep-js and
tshark read it in tests/interop/test_hep.py): every message of each transport, in and
out, with the addresses serve's sockets saw; IPv6 and binary bodies; what is redacted;
a collector that is down, over UDP and TCP; a consumer that cannot keep up."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest
from websockets.asyncio.client import connect

from aiosip_ws.core.codec import make_response, parse
from aiosip_ws.core.hep import IPPROTO_TCP, IPPROTO_UDP, HepPacket, decode, split_stream
from aiosip_ws.core.stream import StreamFramer
from aiosip_ws.options import ServerOptions
from aiosip_ws.serve.hep import HepExport
from aiosip_ws.serve.relay import RelayServer
from aiosip_ws.transport.hep import HepSender
from tests.serve.test_bridge import bridge  # noqa: F401 - the fixture
from tests.support import eventually
from tests.support.net import free_port
from tests.support.sip import next_framed, recv, register_raw

pytestmark = pytest.mark.filterwarnings('error')


class Collector(asyncio.DatagramProtocol):
    """A HEP collector on UDP: each packet decoded and queued."""

    def __init__(self) -> None:
        self.packets: asyncio.Queue[HepPacket] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.packets.put_nowait(decode(data))

    async def next(self, timeout: float = 3.0) -> HepPacket:
        return await asyncio.wait_for(self.packets.get(), timeout)

    async def until(self, predicate, timeout: float = 3.0) -> HepPacket:
        async def first() -> HepPacket:
            while True:
                packet = await self.packets.get()
                if predicate(packet):
                    return packet
        return await asyncio.wait_for(first(), timeout)


@pytest.fixture
async def collector():
    loop = asyncio.get_running_loop()
    transport, collector = await loop.create_datagram_endpoint(Collector,
                                                               local_addr=('127.0.0.1', 0))
    collector.url = 'udp://127.0.0.1:%d' % transport.get_extra_info('sockname')[1]
    yield collector
    transport.close()


async def exporting(server: RelayServer, *urls: str, **options) -> HepExport:
    export = HepExport(urls, **options)
    await export.start(server.events)
    server.metrics.follow_hep(export)
    return export


async def test_each_message_of_a_websocket_to_udp_exchange_is_exported_both_ways(
        bridge, collector):  # noqa: F811
    server, bob, alice, alice_host = bridge
    export = await exporting(server, collector.url, capture_id=77, password='pw', node='n1')
    sent = ('MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKh1\r\n'
            'From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n'
            'Call-ID: hep-1\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: '
            'text/plain\r\n\r\nhi' % alice_host)
    started = time.time()
    await alice.send(sent)
    got = await bob.next()
    bob.send(make_response(got, 200, to_tag='b2'))
    assert (await recv(alice)).status == 200
    ws_local = alice.remote_address[:2]            # serve's end of alice's connection
    alice_addr = alice.local_address[:2]
    udp_local = bob.server
    packets = [await collector.next() for _ in range(4)]
    assert [(p.source, p.destination, p.protocol) for p in packets] == [
        (alice_addr, ws_local, IPPROTO_TCP),       # MESSAGE from alice, over WebSocket
        (udp_local, ('127.0.0.1', bob.addr[1]), IPPROTO_UDP),   # to bob over UDP
        (('127.0.0.1', bob.addr[1]), udp_local, IPPROTO_UDP),   # bob's 200
        (ws_local, alice_addr, IPPROTO_TCP)]       # the 200 back to alice
    first = packets[0]
    # byte for byte what alice sent (its MESSAGE body redacted: see the next test)
    assert first.payload == sent.replace('\r\n\r\nhi', '\r\n\r\n').encode()
    assert parse(packets[1].payload).method == 'MESSAGE'
    assert parse(packets[2].payload).status == 200 and parse(packets[3].payload).status == 200
    for packet in packets:
        assert packet.correlation_id == 'hep-1' and packet.capture_id == 77
        assert packet.password == 'pw' and packet.node == 'n1' and packet.payload_type == 1
        assert started - 0.5 < packet.time < time.time() + 0.5
    assert packets[1].time >= packets[0].time
    assert export.exported == 4 and export.senders[0].sent == 4
    text = server.metrics.exposition().decode()
    assert 'aiosip_ws_hep_packets_total{collector="%s",outcome="sent"} 4.0' % collector.url \
        in text
    await export.close()


async def test_secrets_and_message_bodies_stay_out_unless_asked(bridge, collector):  # noqa: F811
    server, bob, alice, alice_host = bridge
    register = ('REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKh2\r\n'
                'From: <sip:alice@example.com>;tag=r2\r\nTo: <sip:alice@example.com>\r\n'
                'Call-ID: hep-2\r\nCSeq: 2 REGISTER\r\nMax-Forwards: 70\r\nAuthorization: '
                'Digest username="alice", realm="example.com", nonce="n", uri="sip:example.com"'
                ', response="feedfacefeedfacefeedfacefeedface"\r\nCookie: sid=s3cret\r\n'
                'Contact: <sip:alice@%s;transport=ws>\r\n\r\n' % (alice_host, alice_host))
    export = await exporting(server, collector.url)
    await alice.send(register)
    await recv(alice)
    packet = await collector.until(lambda p: p.correlation_id == 'hep-2')
    assert b'feedface' not in packet.payload and b's3cret' not in packet.payload
    assert b'response="[redacted]"' in packet.payload and b'Cookie: [redacted]' in packet.payload
    await export.close()
    export = await exporting(server, collector.url, secrets=True, bodies=True)
    await alice.send(register.replace('hep-2', 'hep-3').replace('CSeq: 2', 'CSeq: 3'))
    await recv(alice)
    packet = await collector.until(lambda p: p.correlation_id == 'hep-3')
    assert packet.payload == register.replace('hep-2', 'hep-3').replace(
        'CSeq: 2', 'CSeq: 3').encode()
    await alice.send('MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4b'
                     'Kh4\r\nFrom: <sip:alice@example.com>;tag=a4\r\nTo: <sip:bob@example.com>'
                     '\r\nCall-ID: hep-4\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-'
                     'Type: text/plain\r\n\r\nsecret words' % alice_host)
    packet = await collector.until(lambda p: p.correlation_id == 'hep-4')
    assert packet.payload.endswith(b'\r\n\r\nsecret words')
    await export.close()


async def test_ipv6_and_a_binary_frame_come_out_as_sent(collector):
    server = RelayServer()
    [listener] = await server.start('ws://[::1]:0/')
    export = await exporting(server, collector.url, bodies=True)
    body = bytes(range(256))
    try:
        async with connect(listener.bound_url, subprotocols=['sip'], proxy=None) as alice:
            host = await register_raw(alice, 'alice')
            frame = ('MESSAGE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9h'
                     'G4bKh6\r\nFrom: <sip:alice@example.com>;tag=a6\r\nTo: <sip:alice@exampl'
                     'e.com>\r\nCall-ID: hep-6\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n'
                     'Content-Type: application/octet-stream\r\nContent-Length: 256\r\n\r\n'
                     % host).encode() + body
            await alice.send(frame)                      # a binary frame to itself
            packet = await collector.until(lambda p: p.correlation_id == 'hep-6')
            assert packet.source == (alice.local_address[0], alice.local_address[1])
            assert packet.source[0] == '::1' and packet.destination[0] == '::1'
            assert packet.payload == frame and packet.protocol == IPPROTO_TCP
    finally:
        await export.close()
        await server.close()


async def test_a_tcp_collector_that_is_down_costs_counted_drops_then_gets_packets(
        bridge, caplog):  # noqa: F811
    server, bob, alice, alice_host = bridge
    port = free_port()
    export = await exporting(server, 'tcp://127.0.0.1:%d' % port)
    sender = export.senders[0]
    await register_raw(alice, 'alice2')
    await asyncio.sleep(0.2)
    assert sender.dropped >= 2 and sender.sent == 0
    assert 'HEP collector tcp://127.0.0.1:%d: cannot connect' % port in caplog.text
    received = bytearray()
    got = asyncio.Event()

    async def collect(reader, writer):
        while data := await reader.read(65536):
            received.extend(data)
            got.set()
        writer.close()
    collector = await asyncio.start_server(collect, '127.0.0.1', port)
    try:
        await eventually(lambda: sender._transport is not None, 10)   # a try each 1 s
        await register_raw(alice, 'alice3')
        await asyncio.wait_for(got.wait(), 5)
        await asyncio.sleep(0.1)
        packets = split_stream(received)
        assert [parse(p.payload).method for p in map(decode, packets)][:1] == ['REGISTER']
        assert sender.sent == len(packets) == 2 and not received
    finally:
        await export.close()
        collector.close()
        await collector.wait_closed()


async def test_a_consumer_that_cannot_keep_up_loses_events_counted_never_the_relay(
        bridge, collector):  # noqa: F811
    server, bob, alice, alice_host = bridge
    export = await exporting(server, collector.url, queue=3)
    for n in range(5):                                   # 10 messages before the loop turns
        await alice.send('OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4'
                         'bKo%d\r\nFrom: <sip:alice@example.com>;tag=o\r\nTo: <sip:example'
                         '.com>\r\nCall-ID: o-%d\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n'
                         '\r\n' % (alice_host, n, n))
    answers = [await recv(alice) for _ in range(5)]
    assert all(a.status == 200 for a in answers)           # the relay answered every one
    text = server.metrics.exposition().decode()
    dropped = [line for line in text.splitlines()
               if line.startswith('aiosip_ws_event_drops_total{consumer="hep"}')]
    assert dropped and float(dropped[0].split()[-1]) > 0
    await export.close()


async def test_a_message_larger_than_a_packet_is_counted_not_sent(bridge, collector):  # noqa: F811
    server, bob, alice, alice_host = bridge
    export = await exporting(server, collector.url, bodies=True)
    big = ('MESSAGE sip:nobody@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKh7\r\n'
           'From: <sip:alice@example.com>;tag=a7\r\nTo: <sip:nobody@example.com>\r\n'
           'Call-ID: hep-7\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: '
           'text/plain\r\n\r\n' % alice_host) + 'x' * 65250
    assert 65440 < len(big) <= 65536                       # a WebSocket message, not a packet
    await alice.send(big)
    assert (await recv(alice)).status == 404
    reply = await collector.next()
    assert parse(reply.payload).status == 404                # the answer went; the request not
    assert export.too_large == 1 and export.exported == 1
    text = server.metrics.exposition().decode()
    assert 'aiosip_ws_hep_packets_total{collector="*",outcome="too_large"} 1.0' in text
    await export.close()


async def test_a_udp_sender_drops_what_its_socket_will_not_take():
    sender = HepSender('udp://127.0.0.1:%d' % free_port(), max_buffer=0)
    assert sender.send(b'x') is False and sender.dropped == 1      # not started
    await sender.start()
    assert sender.send(b'HEP3') is True and sender.sent == 1
    await sender.close()
    assert sender.send(b'x') is False and sender.dropped == 2


@pytest.mark.parametrize('scheme', ['tcp', 'tls'])
async def test_tcp_and_tls_messages_are_exported_decrypted(scheme, certs, collector):
    server = RelayServer(server_options=ServerOptions(ssl=certs.server_context()))
    [listener] = await server.start('%s://127.0.0.1:0' % scheme)
    export = await exporting(server, collector.url)
    port = int(listener.bound_url.rsplit(':', 1)[1])
    reader, writer = await asyncio.open_connection(
        '127.0.0.1', port, ssl=certs.client_context() if scheme == 'tls' else None,
        server_hostname='localhost' if scheme == 'tls' else None)
    local = writer.get_extra_info('sockname')[:2]
    register = ('REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/%s 127.0.0.1:%d;branch=z9hG4bK'
                '%s\r\nMax-Forwards: 70\r\nFrom: <sip:carol@example.com>;tag=c1\r\nTo: <sip:'
                'carol@example.com>\r\nCall-ID: hep-%s\r\nCSeq: 1 REGISTER\r\nContact: <sip:'
                'carol@127.0.0.1:%d;transport=%s>\r\nContent-Length: 0\r\n\r\n'
                % (scheme.upper(), local[1], scheme, scheme, local[1], scheme)).encode()
    try:
        writer.write(register)
        ok = await next_framed(reader, StreamFramer())
        assert ok.status == 200
        request, reply = await collector.next(), await collector.next()
        assert request.payload == register and request.protocol == IPPROTO_TCP
        assert request.source == local and request.destination == ('127.0.0.1', port)
        assert reply.source == ('127.0.0.1', port) and reply.destination == local
        assert parse(reply.payload).status == 200 and reply.correlation_id == 'hep-' + scheme
    finally:
        writer.close()
        await export.close()
        await server.close()


async def test_behind_a_proxy_the_addresses_are_the_sockets(collector):
    """With the PROXY protocol, the client the header names; behind a proxy that only
    adds X-Forwarded-For, the proxy (as serve's socket sees it)."""
    server = RelayServer(server_options=ServerOptions(proxy_protocol=True,
                                                      trusted_proxies=['127.0.0.1']))
    [listener] = await server.start('ws://127.0.0.1:0/')
    export = await exporting(server, collector.url)
    port = int(listener.bound_url.rsplit(':', 1)[1].strip('/'))
    try:
        sock = socket.create_connection(('127.0.0.1', port))
        sock.sendall(b'PROXY TCP4 198.51.100.7 203.0.113.1 51234 443\r\n')
        sock.setblocking(False)
        async with connect(listener.bound_url, sock=sock, subprotocols=['sip'],
                           proxy=None) as alice:
            await register_raw(alice, 'alice')
        request = await collector.until(lambda p: p.correlation_id == 'reg-alice')
        assert request.source == ('198.51.100.7', 51234)
        assert request.destination == ('127.0.0.1', port)
    finally:
        await export.close()
        await server.close()
    server = RelayServer(server_options=ServerOptions(trusted_proxies=['127.0.0.1']))
    [listener] = await server.start('ws://127.0.0.1:0/')
    export = await exporting(server, collector.url)
    try:
        async with connect(listener.bound_url, subprotocols=['sip'], proxy=None,
                           additional_headers={'X-Forwarded-For': '198.51.100.9'}) as bob:
            await register_raw(bob, 'bob')
            assert [c.remote_addr[0] for c in server.connections] == ['198.51.100.9']
            nginx = bob.local_address[:2]
        request = await collector.until(lambda p: p.correlation_id == 'reg-bob')
        assert request.source == nginx
    finally:
        await export.close()
        await server.close()
