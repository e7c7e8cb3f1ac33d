"""serve as an RFC 5626 edge proxy (``--registrar``), in-process, with a raw UDP socket of
the test as the upstream registrar: the REGISTER goes up with a Path naming the client's
connection by a flow token (``;ob`` for Outbound), the answer comes back unchanged, serve
keeps no binding; a request from upstream routed to the token reaches the client; a
forged token gets 403, a flow that is gone (or of an earlier start) 430."""
from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect

from aiosip_ws.core.codec import make_response, serialize
from aiosip_ws.core.sipuri import NameAddr
from aiosip_ws.serve.relay import RelayServer
from tests.serve.test_bridge import UdpUA
from tests.support.sip import recv

REGISTER = ('REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS c1.invalid;branch=z9hG4bKer1\r\n'
            'From: <sip:bob@example.com>;tag=r1\r\nTo: <sip:bob@example.com>\r\n'
            'Call-ID: edge-reg\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\nSupported: path, '
            'outbound\r\nContact: <sip:bob@c1.invalid;transport=ws;ob>;reg-id=1;'
            '+sip.instance="<urn:uuid:00000000-0000-0000-0000-000000000001>"\r\nExpires: 60\r\n'
            '\r\n')


def upstream_message(route, *, call_id='up-1'):
    return ('MESSAGE sip:bob@c1.invalid;transport=ws SIP/2.0\r\n'
            'Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK%s\r\nMax-Forwards: 69\r\n'
            'Route: %s\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n'
            'Call-ID: %s\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n\r\nvia the edge'
            % (call_id, route, call_id))


async def start_edge(registrar, secret=b'shared'):
    edge = RelayServer(edge_registrar='sip:127.0.0.1:%d' % registrar.addr[1], flow_secret=secret)
    ws, udp = await edge.start('ws://127.0.0.1:0/', 'udp://127.0.0.1:0')
    registrar.server = ('127.0.0.1', int(udp.bound_url.rsplit(':', 1)[1]))
    return edge, ws.bound_url


async def test_the_edge_registers_upstream_with_a_flow_token_and_routes_back_by_it():
    loop = asyncio.get_running_loop()
    transport, registrar = await loop.create_datagram_endpoint(UdpUA, local_addr=('127.0.0.1', 0))
    edge, url = await start_edge(registrar)
    try:
        async with connect(url, subprotocols=['sip'], proxy=None) as bob:
            await bob.send(REGISTER)
            up = await registrar.next()
            assert up.method == 'REGISTER' and up.uri == 'sip:example.com'
            [path] = up.get_all('Path')
            uri = NameAddr.parse(path).uri
            assert uri.host == '127.0.0.1' and uri.port == registrar.server[1]
            assert uri.has_param('lr') and uri.has_param('ob')        # reg-id: Outbound
            token = uri.user
            registrar.send(make_response(up, 401, to_tag='k1', headers=[
                ('WWW-Authenticate', 'Digest realm="example.com", nonce="n1"')]))
            challenge = await recv(bob)
            assert challenge.status == 401 and 'nonce="n1"' in challenge.get('WWW-Authenticate')
            await bob.send(REGISTER.replace('z9hG4bKer1', 'z9hG4bKer2').replace(
                'CSeq: 1 ', 'CSeq: 2 ').replace('Expires: 60', 'Authorization: Digest '
                'username="bob", realm="example.com", nonce="n1", uri="sip:example.com", '
                'response="0123456789abcdef0123456789abcdef"\r\nExpires: 60'))
            up = await registrar.next()
            assert up.cseq == (2, 'REGISTER') and up.get('Authorization')   # passed through
            assert up.get_all('Path') == [path]              # the same flow, the same token
            registrar.send(make_response(up, 200, to_tag='k1', headers=[
                ('Contact', up.get('Contact') + ';expires=60'),
                ('Service-Route', '<sip:orig@registrar.example.com;lr>')]))
            ok = await recv(bob)
            assert ok.status == 200 and ok.get('Service-Route')          # unchanged
            assert not edge.registrar.lookup('sip:bob@example.com')      # no binding here

            registrar.send(upstream_message(path))
            got = await recv(bob)
            assert got.method == 'MESSAGE' and got.body == b'via the edge'
            assert got.get('Route') is None
            await bob.send(serialize(make_response(got, 200, to_tag='b2')).decode())
            assert (await registrar.next()).status == 200

            forged = path.replace(token, token[:10] + ('a' if token[10] != 'a' else 'b') + token[11:])
            registrar.send(upstream_message(forged, call_id='up-2'))
            assert (await registrar.next()).status == 403

            restarted, _ = await start_edge_with_same_secret(registrar)
            try:
                # the same token at another start of an edge sharing the secret: 430
                registrar.send(upstream_message(path, call_id='up-3'))
                assert (await registrar.next()).status == 430
            finally:
                await restarted.close()
                registrar.server = edge_udp_address(edge)
        for _ in range(50):                                   # bob's connection is gone
            if not edge.connections:
                break
            await asyncio.sleep(0.02)
        registrar.send(upstream_message(path, call_id='up-4'))
        assert (await registrar.next()).status == 430         # RFC 5626 §5.3 Flow Failed
    finally:
        transport.close()
        await edge.close()


async def start_edge_with_same_secret(registrar):
    return await start_edge(registrar)


def edge_udp_address(edge):
    return ('127.0.0.1', edge.bridge.endpoints[0].local_addr[1])


async def test_requests_from_clients_go_upstream_and_no_registrar_means_503():
    loop = asyncio.get_running_loop()
    transport, registrar = await loop.create_datagram_endpoint(UdpUA, local_addr=('127.0.0.1', 0))
    edge, url = await start_edge(registrar)
    try:
        async with connect(url, subprotocols=['sip'], proxy=None) as bob:
            await bob.send('MESSAGE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/WS c1.invalid;'
                           'branch=z9hG4bKem1\r\nFrom: <sip:bob@example.com>;tag=b1\r\n'
                           'To: <sip:alice@example.com>\r\nCall-ID: em-1\r\nCSeq: 1 MESSAGE\r\n'
                           'Max-Forwards: 70\r\n\r\nup')
            up = await registrar.next()
            assert up.uri == 'sip:alice@example.com' and up.body == b'up'
            registrar.send(make_response(up, 200, to_tag='a9'))
            assert (await recv(bob)).status == 200
    finally:
        transport.close()
        await edge.close()
    with pytest.raises(Exception, match='needs a --listen udp'):
        alone = RelayServer(edge_registrar='sip:127.0.0.1:9')
        await alone.start('ws://127.0.0.1:0/')
        try:
            assert alone.edge is not None
            await alone.hops.hop_flow(alone.edge.registrar)
        finally:
            await alone.close()


async def test_calls_through_the_edge_both_ways_route_by_the_token_and_the_route_set():
    """A client of the edge calls upstream: serve record-routes the INVITE twice, the
    upstream side with the client's flow token; the client's BYE leaves along the route
    set beyond the edge (loose routing), upstream's in-dialog requests come back by the
    token.  Upstream calls the client through the Path token: record-routed the same way."""
    loop = asyncio.get_running_loop()
    transport, upstream = await loop.create_datagram_endpoint(UdpUA, local_addr=('127.0.0.1', 0))
    edge, url = await start_edge(upstream)
    proxy_rr = '<sip:127.0.0.1:%d;lr>' % upstream.addr[1]
    try:
        async with connect(url, subprotocols=['sip'], proxy=None) as bob:
            await bob.send(REGISTER)
            up = await upstream.next()
            path = up.get('Path')
            upstream.send(make_response(up, 200, to_tag='k1', headers=[
                ('Contact', up.get('Contact'))]))
            assert (await recv(bob)).status == 200

            await bob.send('INVITE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/WS c1.invalid;'
                           'branch=z9hG4bKec1\r\nFrom: <sip:bob@example.com>;tag=b1\r\n'
                           'To: <sip:alice@example.com>\r\nCall-ID: ec-1\r\nCSeq: 1 INVITE\r\n'
                           'Max-Forwards: 70\r\nContact: <sip:bob@c1.invalid;transport=ws>\r\n\r\n')
            assert (await recv(bob)).status == 100
            invite = await upstream.next()
            rr_out, rr_in = invite.get_all('Record-Route')
            token = NameAddr.parse(path).uri.user
            assert NameAddr.parse(rr_out).uri.user == token and 'transport=udp' in rr_out
            assert 'transport=ws' in rr_in
            answer = make_response(invite, 200, to_tag='a1', headers=[
                ('Contact', '<sip:alice@192.0.2.99:5060>')])
            first = next(i for i, (k, _) in enumerate(answer.headers) if k == 'Record-Route')
            answer.headers.insert(first, ('Record-Route', proxy_rr))  # a proxy beyond the edge
            upstream.send(answer)
            ok = await recv(bob)
            assert ok.get_all('Record-Route')[0] == proxy_rr
            # bob's route set is the 200's Record-Route reversed: ours first, then the proxy
            routes = ''.join('Route: %s\r\n' % r for r in (rr_in, rr_out, proxy_rr))
            await bob.send('BYE sip:alice@192.0.2.99:5060 SIP/2.0\r\nVia: SIP/2.0/WS c1.invalid;'
                           'branch=z9hG4bKec2\r\n%sFrom: <sip:bob@example.com>;tag=b1\r\n'
                           'To: <sip:alice@example.com>;tag=a1\r\nCall-ID: ec-1\r\nCSeq: 2 BYE\r\n'
                           'Max-Forwards: 70\r\n\r\n' % routes)
            bye = await upstream.next()                   # to the proxy, not to 192.0.2.99
            assert bye.method == 'BYE' and bye.get_all('Route') == [proxy_rr]
            upstream.send(make_response(bye, 200))
            assert (await recv(bob)).status == 200

            # upstream calls bob by the Path token; its re-INVITE comes back by the token
            upstream.send('INVITE sip:bob@c1.invalid;transport=ws SIP/2.0\r\nVia: SIP/2.0/UDP '
                          '127.0.0.1:%d;branch=z9hG4bKui1\r\nMax-Forwards: 69\r\nRoute: %s\r\n'
                          'From: <sip:alice@example.com>;tag=a5\r\nTo: <sip:bob@example.com>\r\n'
                          'Call-ID: ec-2\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.1:%d>'
                          '\r\n\r\n' % (upstream.addr[1], path, upstream.addr[1]))
            incoming = await recv(bob)
            ws_side, udp_side = incoming.get_all('Record-Route')
            assert 'transport=ws' in ws_side and NameAddr.parse(udp_side).uri.user == token
            await bob.send(serialize(make_response(incoming, 200, to_tag='b5', headers=[
                ('Contact', '<sip:bob@c1.invalid;transport=ws>')])).decode())
            answered = await upstream.next()
            assert answered.status == 200
            upstream.send('BYE sip:bob@c1.invalid;transport=ws SIP/2.0\r\nVia: SIP/2.0/UDP '
                          '127.0.0.1:%d;branch=z9hG4bKui2\r\nMax-Forwards: 70\r\nRoute: %s\r\n'
                          'Route: %s\r\nFrom: <sip:alice@example.com>;tag=a5\r\n'
                          'To: <sip:bob@example.com>;tag=b5\r\nCall-ID: ec-2\r\nCSeq: 2 BYE\r\n'
                          '\r\n' % (upstream.addr[1], udp_side, ws_side))
            bye = await recv(bob)
            assert bye.method == 'BYE' and bye.get('Route') is None
            await bob.send(serialize(make_response(bye, 200)).decode())
            assert (await upstream.next()).status == 200
    finally:
        transport.close()
        await edge.close()
