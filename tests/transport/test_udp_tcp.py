"""SIP over UDP, TCP and TLS on real sockets of 127.0.0.1 (aiosip_ws.transport.udp, .tcp,
.transactions): retransmission and absorption (RFC 3261 §17), the Accepted state of RFC
6026 (a dropped 200 retransmitted by a UDP UAS reaches the caller), received/rport (RFC
3581), Content-Length framing and its failures (§18.3), keep-alives (RFC 5626 §4.4.1).

T1 is shortened (``TransactionLayer(t1=...)``) so that the RFC's timer sequences run in
a fraction of a second; the ratios between the timers stay the RFC's."""
from __future__ import annotations

import asyncio
import socket

import pytest

from aiosip_ws.core.codec import SIPMessage, make_response, parse, serialize
from aiosip_ws.core.transaction import new_branch
from aiosip_ws.errors import ConfigurationError, TransactionTimeout, TransportError
from aiosip_ws.transport.tcp import connect_tcp, listen_tcp
from aiosip_ws.transport.transactions import TransactionLayer
from aiosip_ws.transport.udp import listen_udp

T1 = 0.02
#: the RFC's T2/T1 and T4/T1 ratios (4 s / 0.5 s, 5 s / 0.5 s)
TIMERS = {'t1': T1, 't2': 8 * T1, 't4': 10 * T1}


def request(method='MESSAGE', via='SIP/2.0/UDP 192.0.2.7:5999;branch=z9hG4bKudp1;rport',
            body=b'hello', branch=None):
    if branch is not None:
        via = via.split(';branch=')[0] + ';branch=' + branch + ';rport'
    return SIPMessage(method=method, uri='sip:bob@127.0.0.1', headers=[
        ('Via', via), ('Max-Forwards', '70'), ('From', '<sip:alice@example.com>;tag=a1'),
        ('To', '<sip:bob@example.com>'), ('Call-ID', 'c-%s' % method), ('CSeq', '1 %s' % method),
        ('Contact', '<sip:alice@127.0.0.1>')], body=body)


class Peer(asyncio.DatagramProtocol):
    """A raw UDP socket of the test: what arrives is queued, parsed."""

    def __init__(self):
        self.got: asyncio.Queue = asyncio.Queue()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.got.put_nowait((parse(data, strict_mandatory=False) if data.strip(b'\r\n') else data,
                            addr))

    def send(self, message, addr):
        self.transport.sendto(serialize(message) if isinstance(message, SIPMessage) else message,
                              addr)

    async def next(self, timeout=2.0):
        return (await asyncio.wait_for(self.got.get(), timeout))[0]

    def count(self):
        return self.got.qsize()


@pytest.fixture
async def peer():
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Peer, local_addr=('127.0.0.1', 0))
    protocol.addr = transport.get_extra_info('sockname')
    yield protocol
    transport.close()


class Server:
    """A transaction user over UDP: each new request is handed to ``answer``."""

    def __init__(self, answer):
        self.layer = TransactionLayer(**TIMERS)
        self.answer = answer
        self.seen = []
        self.endpoint = None

    def message_received(self, flow, message):
        if message.is_request:
            passed = self.layer.request_received(flow, message)
            if passed is not None:
                self.seen.append(message)
                response = self.answer(message)
                if response is not None:
                    self.layer.respond(response, flow)
        else:
            self.layer.response_received(message)


@pytest.fixture
async def udp_server():
    servers = []

    async def start(answer, **kwargs):
        server = Server(answer)
        server.endpoint = await listen_udp('127.0.0.1', 0, server, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.layer.close()
        server.endpoint.close()
        await server.endpoint.wait_closed()


async def test_a_retransmitted_request_is_answered_again_without_reaching_the_tu(udp_server, peer):
    server = await udp_server(lambda m: make_response(m, 200, to_tag='b1'))
    target = server.endpoint.local_addr
    peer.send(request(), target)
    first = await peer.next()
    assert first.status == 200
    peer.send(request(), target)                        # as if the 200 had been lost
    assert (await peer.next()).status == 200
    assert len(server.seen) == 1                        # the TU saw it once
    via = server.seen[0].get('Via')                     # RFC 3581: where it really came from
    assert 'received=127.0.0.1' in via and 'rport=%d' % peer.addr[1] in via
    assert first.get('Via') == via                      # the response carries it back


async def test_a_udp_client_transaction_retransmits_until_answered(udp_server, peer):
    server = await udp_server(lambda m: None)
    flow = server.endpoint.flow(peer.addr)
    outgoing = request(via=flow.via(new_branch()))
    future = server.layer.send_request(flow, outgoing)
    copies = [await peer.next() for _ in range(3)]      # 0, T1, 3 T1: two "lost"
    assert [c.get('Via') for c in copies] == [outgoing.get('Via')] * 3
    peer.send(make_response(copies[0], 200, to_tag='b'), server.endpoint.local_addr)
    assert (await asyncio.wait_for(future, 2)).status == 200
    await asyncio.sleep(8 * T1)
    assert peer.count() == 0                            # no retransmission after the 200


async def test_timer_f_ends_an_unanswered_request(udp_server, peer):
    server = await udp_server(lambda m: None)
    flow = server.endpoint.flow(peer.addr)
    future = server.layer.send_request(flow, request(via=flow.via(new_branch())))
    with pytest.raises(TransactionTimeout, match='Timer F'):
        await asyncio.wait_for(future, 64 * T1 + 1)
    assert peer.count() == 11                           # T1, 2, 4, then every T2 = 8 T1
    assert len(server.layer) == 0


async def test_rfc6026_a_dropped_200_retransmitted_by_the_uas_reaches_the_caller(udp_server, peer):
    """The UAS's first 200 is lost; its retransmission is delivered, and so is a later
    one: the INVITE client transaction stays in Accepted (Timer M), it does not end, and
    it is no longer pending on its flow."""
    server = await udp_server(lambda m: None)
    flow = server.endpoint.flow(peer.addr)
    seen = []
    invite = request('INVITE', via=flow.via(new_branch()), body=b'v=0\r\n')
    future = server.layer.send_request(flow, invite, on_response=seen.append)
    assert server.layer.pending_on(flow) == 1
    received = await peer.next()
    peer.send(make_response(received, 180, to_tag='b'), server.endpoint.local_addr)
    ok = make_response(received, 200, to_tag='b', headers=[('Contact', '<sip:bob@127.0.0.1>')])
    # (the first 200 is "dropped": the test does not send it) the retransmission:
    peer.send(ok, server.endpoint.local_addr)
    assert (await asyncio.wait_for(future, 2)).status == 200
    peer.send(ok, server.endpoint.local_addr)           # the next retransmission
    await asyncio.sleep(5 * T1)
    assert [r.status for r in seen] == [180, 200, 200]
    assert len(server.layer) == 1                       # Accepted, until Timer M
    # answered: it no longer counts against the flow's pending cap (a trunk carrying 25
    # calls a second would hold 800 INVITEs in Accepted)
    assert server.layer.pending_on(flow) == 0
    await asyncio.sleep(64 * T1 + 0.2)
    assert len(server.layer) == 0
    assert peer.count() == 0                            # a 2xx is never ACKed by the layer


async def test_a_failure_to_invite_is_acked_hop_by_hop_each_time_it_comes(udp_server, peer):
    server = await udp_server(lambda m: None)
    flow = server.endpoint.flow(peer.addr)
    invite = request('INVITE', via=flow.via(new_branch()))
    future = server.layer.send_request(flow, invite)
    received = await peer.next()
    busy = make_response(received, 486, to_tag='b')
    peer.send(busy, server.endpoint.local_addr)
    assert (await asyncio.wait_for(future, 2)).status == 486
    ack = await peer.next()
    assert ack.method == 'ACK' and ack.get('Via') == invite.get('Via')
    assert ack.cseq == (1, 'ACK') and ';tag=b' in ack.get('To')
    peer.send(busy, server.endpoint.local_addr)         # retransmitted: ACKed again
    assert (await peer.next()).method == 'ACK'


async def test_a_proxys_timer_c_runs_beside_the_udp_state_machine(udp_server, peer):
    """Timer C (re-armed by the TU on each provisional) fails the INVITE's future; the
    transaction itself goes on, so the 487 that the CANCEL brings is still ACKed."""
    server = await udp_server(lambda m: None)
    flow = server.endpoint.flow(peer.addr)
    branch = new_branch()
    invite = request('INVITE', via=flow.via(branch))
    future = server.layer.send_request(
        flow, invite, on_response=lambda r: server.layer.rearm((branch, 'INVITE'), 6 * T1,
                                                               'Timer C'))
    received = await peer.next()
    peer.send(make_response(received, 180, to_tag='b'), server.endpoint.local_addr)
    with pytest.raises(TransactionTimeout, match='Timer C'):
        await asyncio.wait_for(future, 64 * T1)            # long before Timer B could
    assert (branch, 'INVITE') in server.layer
    while peer.count():
        await peer.next()                                  # the retransmissions before the 180
    peer.send(make_response(received, 487, to_tag='b'), server.endpoint.local_addr)
    assert (await peer.next()).method == 'ACK'


async def test_an_invite_server_resends_its_failure_until_the_ack(udp_server, peer):
    server = await udp_server(lambda m: make_response(m, 486, to_tag='b1'))
    invite = request('INVITE', branch='z9hG4bKinv1')
    peer.send(invite, server.endpoint.local_addr)
    assert (await peer.next()).status == 486
    assert (await peer.next(timeout=3 * T1)).status == 486      # Timer G: T1 later
    peer.send(SIPMessage(method='ACK', uri=invite.uri, headers=[
        ('Via', invite.get('Via')), ('Max-Forwards', '70'), ('From', invite.get('From')),
        ('To', '<sip:bob@example.com>;tag=b1'), ('Call-ID', invite.get('Call-ID')),
        ('CSeq', '1 ACK')]), server.endpoint.local_addr)
    await asyncio.sleep(0.05)
    while peer.count():                                  # what crossed the ACK
        await peer.next()
    await asyncio.sleep(12 * T1)
    assert peer.count() == 0 and len(server.seen) == 1


async def test_keep_alives_and_bad_datagrams_over_udp(udp_server, peer):
    server = await udp_server(lambda m: make_response(m, 200, to_tag='b'))
    peer.send(b'\r\n\r\n', server.endpoint.local_addr)
    assert await peer.next() == b'\r\n'                  # RFC 5626 §4.4.1 pong
    peer.send(b'MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKbad\r\n'
              b'CSeq: 1 MESSAGE\r\n\r\n', server.endpoint.local_addr)
    answer = await peer.next()
    assert answer.status == 400 and server.seen == []
    with pytest.raises(ConfigurationError, match='cannot listen on udp'):
        await listen_udp('127.0.0.1', server.endpoint.local_addr[1], server)


# -------------------------------------------------------------------------------- TCP, TLS
class StreamServer:
    def __init__(self):
        self.seen: list = []
        self.lost: asyncio.Queue = asyncio.Queue()

    def connection_made(self, conn):
        pass

    def message_received(self, conn, message):
        self.seen.append(message)
        if message.is_request and message.method != 'ACK':
            conn.send(make_response(message, 200, to_tag='t'))

    def connection_lost(self, conn, exc):
        self.lost.put_nowait(conn)


@pytest.fixture
async def tcp_server(certs):
    listeners = []

    async def start(secure=False, **kwargs):
        handler = StreamServer()
        listener = await listen_tcp('127.0.0.1', 0, handler,
                                    ssl_context=certs.server_context() if secure else None,
                                    **kwargs)
        listeners.append(listener)
        return handler, listener

    yield start
    for listener in listeners:
        await listener.close()


async def read_messages(reader, count, timeout=2.0):
    from aiosip_ws.core.stream import Framed, StreamFramer
    framer, out = StreamFramer(), []
    while len(out) < count:
        data = await asyncio.wait_for(reader.read(65536), timeout)
        if not data:
            break
        out += [parse(e.data, strict_mandatory=False) for e in framer.feed(data)
                if isinstance(e, Framed)]
    return out


async def test_tcp_frames_by_content_length_whatever_the_segments(tcp_server):
    handler, listener = await tcp_server()
    reader, writer = await asyncio.open_connection(*listener.local_addr)
    via = 'SIP/2.0/TCP 192.0.2.7:5999;branch=z9hG4bKt%d;rport'
    one = serialize(request(via=via % 1, body=b'one\r\n\r\ntwo'))
    two = serialize(request(via=via % 2, body=b''))
    writer.write(b'\r\n\r\n' + one + two[:30])          # a ping, a message, half of another
    assert await asyncio.wait_for(reader.readexactly(2), 2) == b'\r\n'
    await asyncio.sleep(0.05)
    writer.write(two[30:])
    answers = await read_messages(reader, 2)
    assert [a.status for a in answers] == [200, 200]
    assert [m.body for m in handler.seen] == [b'one\r\n\r\ntwo', b'']
    assert 'received=127.0.0.1;rport=' in handler.seen[0].get('Via')
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(handler.lost.get(), 2)


@pytest.mark.parametrize('stream, status', [
    (b'MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKcl\r\n'
     b'Content-Length: lots\r\n\r\nhello', 400),
    (b'MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKcl\r\n'
     b'Content-Length: 999999\r\n\r\nhello', 513),
])
async def test_a_stream_that_cannot_be_framed_gets_its_answer_and_is_closed(tcp_server, stream,
                                                                            status):
    handler, listener = await tcp_server(max_size=4096)
    reader, writer = await asyncio.open_connection(*listener.local_addr)
    writer.write(stream)
    [answer] = await read_messages(reader, 1)
    assert answer.status == status and answer.get('Via').startswith('SIP/2.0/TCP 127.0.0.1')
    assert await asyncio.wait_for(reader.read(), 2) == b''      # closed
    writer.close()
    assert handler.seen == []


async def test_too_many_bad_messages_close_the_connection(tcp_server):
    handler, listener = await tcp_server()
    reader, writer = await asyncio.open_connection(*listener.local_addr)
    bad = (b'MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKb\r\n'
           b'CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n')      # no From, To, Call-ID
    writer.write(bad * 10)
    answers = await read_messages(reader, 10)
    assert [a.status for a in answers] == [400] * 10
    assert await asyncio.wait_for(reader.read(), 2) == b''
    writer.close()


async def test_tls_both_roles_and_connection_errors(tcp_server, certs):
    handler, listener = await tcp_server(secure=True)
    assert listener.bound_url.startswith('tls://127.0.0.1:')
    client = StreamServer()
    conn = await connect_tcp('127.0.0.1', listener.local_addr[1], client,
                             ssl_context=certs.client_context(), server_hostname='localhost')
    assert conn.via(new_branch()).startswith('SIP/2.0/TLS 127.0.0.1:')
    layer = TransactionLayer(**TIMERS)
    future = layer.send_request(conn, request(via=conn.via(new_branch())))
    client.message_received = lambda c, m: layer.response_received(m)
    assert (await asyncio.wait_for(future, 2)).status == 200
    conn.close()
    await conn.wait_closed()
    layer.close()
    with socket.socket() as unused:
        unused.bind(('127.0.0.1', 0))
        port = unused.getsockname()[1]
    with pytest.raises(TransportError, match='cannot connect'):
        await connect_tcp('127.0.0.1', port, client)
