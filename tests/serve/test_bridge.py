"""serve bridging WebSocket and UDP/TCP (RFC 7118 §8.2), in-process on 127.0.0.1: a UA
registered over UDP (a raw socket of the test) and one registered over WebSocket message
and call each other through serve, both directions; dialog-creating requests crossing
transports get two Record-Route entries (RFC 5658); ACK and BYE find their way back;
requests retransmitted over UDP are absorbed and answered again; a 200 from the UDP UA
whose first copy was lost still reaches the caller (RFC 6026)."""
from __future__ import annotations

import asyncio
import contextlib

import pytest
from websockets.asyncio.client import connect

from aiosip_ws.core.codec import make_response, parse, serialize
from aiosip_ws.serve.relay import RelayServer
from tests.support.sip import SDP, UdpUA, next_framed, recv, register_raw, tcp_register

pytestmark = pytest.mark.filterwarnings('error')


@pytest.fixture
async def bridge():
    async with bridged(RelayServer()) as parts:
        yield parts


@contextlib.asynccontextmanager
async def bridged(server: RelayServer):
    """``server`` listening on ws:// and udp://, bob registered over UDP and alice over a
    WebSocket: (server, bob, alice, alice's Contact host); the server closed at the end."""
    ws_listener, udp = await server.start('ws://127.0.0.1:0/', 'udp://127.0.0.1:0')
    assert udp.bound_url.startswith('udp://127.0.0.1:')
    loop = asyncio.get_running_loop()
    transport, bob = await loop.create_datagram_endpoint(UdpUA, local_addr=('127.0.0.1', 0))
    bob.server = ('127.0.0.1', int(udp.bound_url.rsplit(':', 1)[1]))
    try:
        bob.send(bob.request('REGISTER', 'sip:example.com', to='<sip:bob@example.com>',
                             call_id='reg-bob', extra=('Expires: 60',)))
        ok = await bob.next()
        assert ok.status == 200 and bob.contact in ok.get('Contact')
        async with connect(ws_listener.bound_url, subprotocols=['sip'], proxy=None) as alice:
            alice_host = await register_raw(alice, 'alice')
            yield server, bob, alice, alice_host
    finally:
        transport.close()
        await server.close()


async def test_message_from_websocket_to_udp_and_back(bridge):
    server, bob, alice, alice_host = bridge
    await alice.send('MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKm1'
                     '\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n'
                     'Call-ID: m-1\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n'
                     'Content-Type: text/plain\r\n\r\nhello UDP' % alice_host)
    got = await bob.next()
    assert got.method == 'MESSAGE' and got.body == b'hello UDP'
    assert got.uri == 'sip:bob@127.0.0.1:%d' % bob.addr[1]
    # one client transaction, in the one table the relay and the bridge share, which
    # retransmits it over UDP (Timer E: T1 later)
    layer = server.transactions.layer
    assert server.bridge.layer is layer and layer.clients == 1
    assert (got.top_branch, 'MESSAGE') in layer
    again = await bob.next(timeout=1.5)
    assert again.top_branch == got.top_branch and again.body == b'hello UDP'
    top, second = got.get_all('Via')[:2]
    assert top.startswith('SIP/2.0/UDP 127.0.0.1:') and ';rport' in top
    assert second.startswith('SIP/2.0/WS %s' % alice_host)
    bob.send(make_response(got, 200, to_tag='b2'))
    assert (await recv(alice)).status == 200

    bob.send(bob.request('MESSAGE', 'sip:alice@example.com', to='<sip:alice@example.com>',
                         call_id='m-2', branch='z9hG4bKub2',
                         extra=('Content-Type: text/plain',), body='hello WS'))
    to_alice = await recv(alice)
    assert to_alice.method == 'MESSAGE' and to_alice.body == b'hello WS'
    bob_via = to_alice.get_all('Via')[1]
    assert 'received=127.0.0.1' in bob_via and 'rport=%d' % bob.addr[1] in bob_via   # RFC 3581
    await alice.send(serialize(make_response(to_alice, 200, to_tag='a2')).decode())
    answer = await bob.next()
    assert answer.status == 200 and answer.cseq == (1, 'MESSAGE')

    # a retransmission of bob's MESSAGE (as if the 200 was lost): answered again by serve's
    # server transaction, never relayed a second time
    bob.send(bob.request('MESSAGE', 'sip:alice@example.com', to='<sip:alice@example.com>',
                         call_id='m-2', branch='z9hG4bKub2',
                         extra=('Content-Type: text/plain',), body='hello WS'))
    assert (await bob.next()).status == 200
    await alice.send('\r\n\r\n')
    assert await asyncio.wait_for(alice.recv(), 2) == '\r\n'         # nothing else came


async def test_a_call_from_websocket_to_udp_is_double_record_routed(bridge):
    server, bob, alice, alice_host = bridge
    await alice.send('INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKi1'
                     '\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n'
                     'Call-ID: call-1\r\nCSeq: 10 INVITE\r\nMax-Forwards: 70\r\n'
                     'Contact: <sip:alice@%s;transport=ws>\r\nContent-Type: application/sdp'
                     '\r\n\r\n%s' % (alice_host, alice_host, SDP))
    assert (await recv(alice)).status == 100
    invite = await bob.next()
    routes = invite.get_all('Record-Route')
    assert len(routes) == 2
    assert routes[0].startswith('<sip:127.0.0.1:') and 'transport=udp;lr' in routes[0]
    assert 'transport=ws;lr' in routes[1]                  # RFC 5658: one entry per side
    bob.send(make_response(invite, 180, to_tag='b9', headers=[('Contact', bob.contact)]))
    assert (await recv(alice)).status == 180
    ok = make_response(invite, 200, to_tag='b9', headers=[('Contact', bob.contact),
                                                          ('Content-Type', 'application/sdp')],
                       body=SDP.encode())
    # RFC 6026: the first 200 is "lost" (not sent); bob's retransmission reaches alice
    await asyncio.sleep(0.1)
    bob.send(ok)
    answered = await recv(alice)
    assert answered.status == 200 and answered.get_all('Record-Route') == routes
    bob.send(ok)                 # and the next retransmission, before the ACK: forwarded too
    again = await recv(alice)
    assert again.status == 200 and again.get('Via') == answered.get('Via')
    # alice's route set is the Record-Route reversed: her side first
    await alice.send('ACK sip:bob@127.0.0.1:%d SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKa1\r\n'
                     'Route: %s\r\nRoute: %s\r\nFrom: <sip:alice@example.com>;tag=a1\r\n'
                     'To: <sip:bob@example.com>;tag=b9\r\nCall-ID: call-1\r\nCSeq: 10 ACK\r\n'
                     'Max-Forwards: 70\r\n\r\n' % (bob.addr[1], alice_host, routes[1], routes[0]))
    ack = await bob.next()
    assert ack.method == 'ACK' and ack.get('Route') is None    # both of serve's entries gone
    # bob hangs up: his route set is the Record-Route as it came
    bob.send(bob.request('BYE', 'sip:alice@%s;transport=ws' % alice_host,
                         to='<sip:alice@example.com>;tag=a1', call_id='call-1', cseq=1,
                         branch='z9hG4bKbye1',
                         extra=('Route: %s' % routes[0], 'Route: %s' % routes[1])).replace(
        'From: <sip:bob@example.com>;tag=b1', 'From: <sip:bob@example.com>;tag=b9'))
    bye = await recv(alice)
    assert bye.method == 'BYE' and bye.get('Route') is None
    await alice.send(serialize(make_response(bye, 200)).decode())
    assert (await bob.next()).status == 200


async def test_a_call_from_udp_to_websocket_is_answered_and_ended_by_the_caller(bridge):
    server, bob, alice, alice_host = bridge
    bob.send(bob.request('INVITE', 'sip:alice@example.com', to='<sip:alice@example.com>',
                         call_id='call-2', branch='z9hG4bKinv2',
                         extra=('Content-Type: application/sdp',), body=SDP))
    trying = await bob.next()
    assert trying.status == 100
    invite = await recv(alice)
    routes = invite.get_all('Record-Route')
    assert 'transport=ws;lr' in routes[0] and 'transport=udp;lr' in routes[1]
    bob.send(bob.request('INVITE', 'sip:alice@example.com', to='<sip:alice@example.com>',
                         call_id='call-2', branch='z9hG4bKinv2',
                         extra=('Content-Type: application/sdp',), body=SDP))
    assert (await bob.next()).status == 100       # the retransmission: 100 again, not relayed
    await alice.send(serialize(make_response(invite, 200, to_tag='a7', headers=[
        ('Contact', '<sip:alice@%s;transport=ws>' % alice_host)])).decode())
    ok = await bob.next()
    assert ok.status == 200 and ok.get_all('Record-Route') == routes
    bob.send(bob.request('ACK', 'sip:alice@%s;transport=ws' % alice_host,
                         to='<sip:alice@example.com>;tag=a7', call_id='call-2',
                         branch='z9hG4bKack2',
                         extra=('Route: %s' % routes[1], 'Route: %s' % routes[0])))
    assert (await recv(alice)).method == 'ACK'
    bob.send(bob.request('BYE', 'sip:alice@%s;transport=ws' % alice_host,
                         to='<sip:alice@example.com>;tag=a7', call_id='call-2', cseq=2,
                         branch='z9hG4bKbye2',
                         extra=('Route: %s' % routes[1], 'Route: %s' % routes[0])))
    bye = await recv(alice)
    assert bye.method == 'BYE'
    await alice.send(serialize(make_response(bye, 200)).decode())
    assert (await bob.next()).status == 200
    await alice.send('\r\n\r\n')
    assert await asyncio.wait_for(alice.recv(), 2) == '\r\n'   # the retransmitted INVITE: absorbed


async def test_a_call_to_udp_cancelled_while_ringing(bridge):
    """CANCEL crosses the bridge: serve answers it, CANCELs the UDP branch, relays the 487
    and ACKs it hop by hop (once, by the UDP transaction, however often it comes)."""
    server, bob, alice, alice_host = bridge
    await alice.send('INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKc1'
                     '\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n'
                     'Call-ID: call-3\r\nCSeq: 5 INVITE\r\nMax-Forwards: 70\r\n'
                     'Contact: <sip:alice@%s;transport=ws>\r\n\r\n' % (alice_host, alice_host))
    assert (await recv(alice)).status == 100
    invite = await bob.next()
    bob.send(make_response(invite, 180, to_tag='b3'))
    assert (await recv(alice)).status == 180
    await alice.send('CANCEL sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKc1'
                     '\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n'
                     'Call-ID: call-3\r\nCSeq: 5 CANCEL\r\nMax-Forwards: 70\r\n\r\n' % alice_host)
    assert (await recv(alice)).status == 200
    cancel = await bob.next()
    assert cancel.method == 'CANCEL' and cancel.get('Via') == invite.get_all('Via')[0]
    bob.send(make_response(cancel, 200, to_tag='b3'))
    terminated = make_response(invite, 487, to_tag='b3')
    bob.send(terminated)
    assert (await recv(alice)).status == 487
    ack = await bob.next()
    assert ack.method == 'ACK' and ack.get('Via') == invite.get_all('Via')[0]
    bob.send(terminated)                                  # retransmitted: ACKed again
    assert (await bob.next()).method == 'ACK'
    await alice.send('ACK sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKc1\r\n'
                     'From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b3'
                     '\r\nCall-ID: call-3\r\nCSeq: 5 ACK\r\nMax-Forwards: 70\r\n\r\n' % alice_host)
    with pytest.raises(asyncio.TimeoutError):
        await bob.next(timeout=0.5)                       # that ACK ends at serve


async def test_a_tcp_ua_registers_and_messages_both_ways():
    server = RelayServer()
    ws_listener, tcp = await server.start('ws://127.0.0.1:0/', 'tcp://127.0.0.1:0')
    port = int(tcp.bound_url.rsplit(':', 1)[1])
    reader, writer = await asyncio.open_connection('127.0.0.1', port)
    local = writer.get_extra_info('sockname')[1]
    from aiosip_ws.core.stream import StreamFramer
    framer = StreamFramer()

    async def next_message():
        return await next_framed(reader, framer)

    def send(text):
        writer.write(text.encode())

    head = ('Via: SIP/2.0/TCP 127.0.0.1:%d;branch=z9hG4bK%%s\r\nMax-Forwards: 70\r\n'
            'From: <sip:carol@example.com>;tag=c1\r\n' % local)
    try:
        send('REGISTER sip:example.com SIP/2.0\r\n' + head % 'r1' +
             'To: <sip:carol@example.com>\r\nCall-ID: reg-carol\r\nCSeq: 1 REGISTER\r\n'
             'Contact: <sip:carol@127.0.0.1:%d;transport=tcp>\r\nExpires: 60\r\n'
             'Content-Length: 0\r\n\r\n' % local)
        assert (await next_message()).status == 200
        async with connect(ws_listener.bound_url, subprotocols=['sip'], proxy=None) as alice:
            alice_host = await register_raw(alice, 'alice')
            await alice.send('MESSAGE sip:carol@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;'
                             'branch=z9hG4bKt1\r\nFrom: <sip:alice@example.com>;tag=a1\r\n'
                             'To: <sip:carol@example.com>\r\nCall-ID: t-1\r\nCSeq: 1 MESSAGE\r\n'
                             'Max-Forwards: 70\r\n\r\nover TCP' % alice_host)
            got = await next_message()
            assert got.body == b'over TCP' and got.get('Via').startswith('SIP/2.0/TCP ')
            writer.write(serialize(make_response(got, 200, to_tag='c2')))
            assert (await recv(alice)).status == 200
            send('MESSAGE sip:alice@example.com SIP/2.0\r\n' + head % 'm2' +
                 'To: <sip:alice@example.com>\r\nCall-ID: t-2\r\nCSeq: 1 MESSAGE\r\n'
                 'Content-Length: 8\r\n\r\nfrom TCP')
            to_alice = await recv(alice)
            assert to_alice.body == b'from TCP'
            await alice.send(serialize(make_response(to_alice, 200, to_tag='a3')).decode())
            assert (await next_message()).status == 200
        writer.close()
        await writer.wait_closed()
    finally:
        await server.close()


@pytest.fixture
async def routed():
    """serve with a PBX (a raw UDP socket of the test) as the next hop of pbx.example.com,
    example.com local, unregistered local users sent to the PBX too."""
    loop = asyncio.get_running_loop()
    transport, pbx = await loop.create_datagram_endpoint(UdpUA, local_addr=('127.0.0.1', 0))
    hop = 'sip:127.0.0.1:%d' % pbx.addr[1]
    server = RelayServer(next_hops={'pbx.example.com': hop}, route_unregistered=hop,
                         domains=['example.com'])
    ws_listener, udp = await server.start('ws://127.0.0.1:0/', 'udp://127.0.0.1:0')
    pbx.server = ('127.0.0.1', int(udp.bound_url.rsplit(':', 1)[1]))
    try:
        async with connect(ws_listener.bound_url, subprotocols=['sip'], proxy=None) as alice:
            yield server, pbx, alice, await register_raw(alice, 'alice')
    finally:
        transport.close()
        await server.close()


def ws_message(host, uri, *, call_id='r-1', max_forwards=70):
    return ('MESSAGE %s SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bK%s\r\n'
            'From: <sip:alice@example.com>;tag=a1\r\nTo: <%s>\r\nCall-ID: %s\r\n'
            'CSeq: 1 MESSAGE\r\nMax-Forwards: %d\r\n\r\nhi' % (uri, host, call_id, uri, call_id,
                                                               max_forwards))


async def test_requests_for_another_domain_go_to_its_next_hop(routed):
    server, pbx, alice, alice_host = routed
    await alice.send(ws_message(alice_host, 'sip:2001@pbx.example.com'))
    got = await pbx.next()
    assert got.uri == 'sip:2001@pbx.example.com'          # the Request-URI is kept
    assert got.get('Max-Forwards') == '69'
    pbx.send(make_response(got, 202, to_tag='p1'))
    assert (await recv(alice)).status == 202
    # an unregistered user of a local domain goes there too (--route-unregistered)
    await alice.send(ws_message(alice_host, 'sip:nobody@example.com', call_id='r-2'))
    got = await pbx.next()
    assert got.uri == 'sip:nobody@example.com'
    pbx.send(make_response(got, 404, to_tag='p2'))
    assert (await recv(alice)).status == 404


async def test_a_request_that_comes_back_has_looped_and_max_forwards_is_enforced(routed):
    server, pbx, alice, alice_host = routed
    await alice.send(ws_message(alice_host, 'sip:2001@pbx.example.com', call_id='loop-1'))
    sent = await pbx.next()
    pbx.send(sent)                               # the PBX sends it straight back to serve
    looped = await pbx.next()
    assert looped.status == 482                  # RFC 3261 §16.3 step 4
    pbx.send(make_response(sent, 500, to_tag='p3'))
    assert (await recv(alice)).status == 500
    # a spiral (the Request-URI changed on the way) is not a loop
    spiral = parse(serialize(sent))
    spiral.uri = 'sip:2002@pbx.example.com'
    spiral.headers.insert(0, ('Via', 'SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKpbx2' % pbx.addr[1]))
    pbx.send(spiral)
    assert (await pbx.next()).uri == 'sip:2002@pbx.example.com'
    await alice.send(ws_message(alice_host, 'sip:2001@pbx.example.com', call_id='mf-0',
                                max_forwards=0))
    assert (await recv(alice)).status == 483


async def test_route_options_are_checked():
    from aiosip_ws.errors import ConfigurationError
    with pytest.raises(ConfigurationError, match='needs --domain'):
        RelayServer(next_hops={'*': 'sip:127.0.0.1'})
    with pytest.raises(ConfigurationError, match='not a SIP URI'):
        RelayServer(next_hops={'pbx.example.com': 'http://pbx'})
    with pytest.raises(ConfigurationError, match='udp, tcp, tls, ws or wss, not sctp'):
        RelayServer(route_unregistered='sip:127.0.0.1;transport=sctp')


async def test_advertise_is_the_address_in_via_and_record_route():
    server = RelayServer(advertise='192.0.2.10:5060')
    ws_listener, udp = await server.start('ws://127.0.0.1:0/', 'udp://127.0.0.1:0')
    loop = asyncio.get_running_loop()
    transport, bob = await loop.create_datagram_endpoint(UdpUA, local_addr=('127.0.0.1', 0))
    bob.server = ('127.0.0.1', int(udp.bound_url.rsplit(':', 1)[1]))
    try:
        bob.send(bob.request('REGISTER', 'sip:example.com', to='<sip:bob@example.com>',
                             call_id='reg-adv', extra=('Expires: 60',)))
        assert (await bob.next()).status == 200
        async with connect(ws_listener.bound_url, subprotocols=['sip'], proxy=None) as alice:
            host = await register_raw(alice, 'alice')
            await alice.send('INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch='
                             'z9hG4bKad1\r\nFrom: <sip:alice@example.com>;tag=a1\r\n'
                             'To: <sip:bob@example.com>\r\nCall-ID: adv-1\r\nCSeq: 1 INVITE\r\n'
                             'Max-Forwards: 70\r\nContact: <sip:alice@%s;transport=ws>\r\n\r\n'
                             % (host, host))
            invite = await bob.next()
            assert invite.get_all('Via')[0].startswith('SIP/2.0/UDP 192.0.2.10:5060;')
            assert invite.get_all('Record-Route')[0] == '<sip:192.0.2.10:5060;transport=udp;lr>'
            bob.send(make_response(invite, 486, to_tag='b4'))
            statuses = [(await recv(alice)).status for _ in range(2)]
            assert statuses == [100, 486]
    finally:
        transport.close()
        await server.close()


async def test_a_tcp_binding_without_outbound_outlives_its_connection_and_is_reached_at_its_contact():
    """RFC 3261 §18.1.1 (and RFC 5626 for the others): carol registers over TCP without
    ``;ob``; her connection closes, her binding stays, and a MESSAGE to her goes over a new
    connection serve opens to her Contact, where she listens."""
    from aiosip_ws.core.stream import Framed, StreamFramer
    got: asyncio.Queue = asyncio.Queue()

    async def carol_listens(reader, writer):
        framer = StreamFramer()
        while data := await reader.read(65536):
            for event in framer.feed(data):
                if isinstance(event, Framed):
                    message = parse(event.data)
                    await got.put(message)
                    writer.write(serialize(make_response(message, 200, to_tag='c9')))
        writer.close()

    listening = await asyncio.start_server(carol_listens, '127.0.0.1', 0)
    contact_port = listening.sockets[0].getsockname()[1]
    server = RelayServer()
    ws_listener, tcp = await server.start('ws://127.0.0.1:0/', 'tcp://127.0.0.1:0')
    try:
        reader, writer = await asyncio.open_connection('127.0.0.1',
                                                       int(tcp.bound_url.rsplit(':', 1)[1]))
        writer.write(tcp_register('carol', contact_port, call_id='reg-carol-2',
                                  branch='z9hG4bKtr1'))
        assert b'SIP/2.0 200 OK' in await asyncio.wait_for(reader.read(65536), 3)
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.1)
        assert server.registrar.lookup('sip:carol@example.com')          # kept
        async with connect(ws_listener.bound_url, subprotocols=['sip'], proxy=None) as alice:
            host = await register_raw(alice, 'alice')
            await alice.send('MESSAGE sip:carol@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;'
                             'branch=z9hG4bKtr2\r\nFrom: <sip:alice@example.com>;tag=a1\r\n'
                             'To: <sip:carol@example.com>\r\nCall-ID: tr-2\r\nCSeq: 1 MESSAGE\r\n'
                             'Max-Forwards: 70\r\n\r\nat your Contact' % host)
            message = await asyncio.wait_for(got.get(), 3)
            assert message.body == b'at your Contact'
            assert message.uri == 'sip:carol@127.0.0.1:%d;transport=tcp' % contact_port
            assert (await recv(alice)).status == 200
    finally:
        await server.close()
        listening.close()
        await listening.wait_closed()


async def test_a_next_hop_over_websocket_and_a_call_over_tcp():
    """serve A routes b.example.com to serve B over WebSocket (A opens the connection);
    carol, registered on B over TCP, gets the MESSAGE and a call (INVITE, re-INVITE, INFO,
    BYE) from alice on A, record-routed by both servers."""
    from aiosip_ws.core.stream import StreamFramer
    b = RelayServer(domains=['b.example.com'])
    b_ws, b_tcp = await b.start('ws://127.0.0.1:0/', 'tcp://127.0.0.1:0')
    port = int(b_ws.bound_url.rsplit(':', 1)[1].rstrip('/'))
    a = RelayServer(next_hops={'b.example.com': 'sip:127.0.0.1:%d;transport=ws' % port},
                    domains=['example.com'])
    [a_ws] = await a.start('ws://127.0.0.1:0/')
    reader, writer = await asyncio.open_connection('127.0.0.1',
                                                   int(b_tcp.bound_url.rsplit(':', 1)[1]))
    local = writer.get_extra_info('sockname')[1]
    framer = StreamFramer()

    async def carol_gets():
        return await next_framed(reader, framer)

    try:
        writer.write(tcp_register('carol', local, domain='b.example.com', call_id='reg-nh',
                                  branch='z9hG4bKnh1', contact_params=';ob'))
        assert (await carol_gets()).status == 200
        async with connect(a_ws.bound_url, subprotocols=['sip'], proxy=None) as alice:
            host = await register_raw(alice, 'alice')
            await alice.send('MESSAGE sip:carol@b.example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;'
                             'branch=z9hG4bKnh2\r\nFrom: <sip:alice@example.com>;tag=a1\r\n'
                             'To: <sip:carol@b.example.com>\r\nCall-ID: nh-1\r\n'
                             'CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n\r\nvia two servers' % host)
            got = await carol_gets()
            assert got.body == b'via two servers' and len(got.get_all('Via')) == 3
            writer.write(serialize(make_response(got, 200, to_tag='c2')))
            assert (await recv(alice)).status == 200

            await alice.send('INVITE sip:carol@b.example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;'
                             'branch=z9hG4bKnh3\r\nFrom: <sip:alice@example.com>;tag=a1\r\n'
                             'To: <sip:carol@b.example.com>\r\nCall-ID: nh-2\r\nCSeq: 1 INVITE'
                             '\r\nMax-Forwards: 70\r\nContact: <sip:alice@%s;transport=ws>\r\n'
                             '\r\n' % (host, host))
            invite = await carol_gets()
            routes = invite.get_all('Record-Route')
            assert len(routes) == 3        # B: TCP and WS sides (RFC 5658); A: one WS entry
            assert 'transport=tcp' in routes[0] and 'transport=ws' in routes[1]
            contact = '<sip:carol@127.0.0.1:%d;transport=tcp>' % local
            writer.write(serialize(make_response(invite, 200, to_tag='c3', headers=[
                ('Contact', contact)])))
            statuses = [(await recv(alice)).status for _ in range(2)]
            assert statuses == [100, 200]
            route_lines = ''.join('Route: %s\r\n' % r for r in reversed(routes))
            for method, cseq, extra in (('ACK', 1, ''), ('INVITE', 2, ''),
                                        ('INFO', 3, 'Content-Type: application/dtmf-relay\r\n'),
                                        ('BYE', 4, '')):
                await alice.send('%s sip:carol@127.0.0.1:%d;transport=tcp SIP/2.0\r\n'
                                 'Via: SIP/2.0/WS %s;branch=z9hG4bKnh%s%d\r\n%s'
                                 'From: <sip:alice@example.com>;tag=a1\r\n'
                                 'To: <sip:carol@b.example.com>;tag=c3\r\nCall-ID: nh-2\r\n'
                                 'CSeq: %d %s\r\nMax-Forwards: 70\r\n%s\r\n'
                                 % (method, local, host, method, cseq, route_lines,
                                    1 if method == 'ACK' else cseq, method, extra))
                request = await carol_gets()
                assert request.method == method and request.get('Route') is None
                if method != 'ACK':
                    writer.write(serialize(make_response(request, 200)))
                    answer = await recv(alice)
                    assert answer.status == 200 and answer.cseq == (cseq, method)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        await a.close()
        await b.close()
