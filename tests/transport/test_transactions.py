"""The transaction layer's reliable path (aiosip_ws.transport.transactions) on real TCP
connections of 127.0.0.1: a request is sent once, never retransmitted (RFC 3261
§17.1.2.2), its provisional and final responses reach it over its own connection only;
Timer F, and a proxy's Timer C re-armed by provisionals (§16.6 step 11), end it; a lost
connection ends at once what it carried and nothing else.  The UDP path (state
machines, retransmissions) is in test_udp_tcp.py."""
from __future__ import annotations

import asyncio

import pytest

from aiosip_ws.core.codec import make_response
from aiosip_ws.core.transaction import new_branch
from aiosip_ws.errors import ConnectionLost, TransactionTimeout
from aiosip_ws.transport.tcp import connect_tcp, listen_tcp
from aiosip_ws.transport.transactions import TransactionLayer
from tests.transport.test_udp_tcp import T1, TIMERS, request


class UAS:
    """The far end: every request it gets is queued with its connection, unanswered."""

    def __init__(self):
        self.got: asyncio.Queue = asyncio.Queue()

    def connection_made(self, conn):
        pass

    def connection_lost(self, conn, exc):
        pass

    def message_received(self, conn, message):
        self.got.put_nowait((conn, message))

    async def next(self, timeout=2.0):
        return await asyncio.wait_for(self.got.get(), timeout)


class UAC:
    """Our side: responses go to the layer, with the connection they came over."""

    def __init__(self, layer):
        self.layer = layer
        self.unmatched: list = []

    def connection_made(self, conn):
        pass

    def connection_lost(self, conn, exc):
        self.layer.flow_lost(conn)

    def message_received(self, conn, message):
        if not self.layer.response_received(message, conn):
            self.unmatched.append(message)


@pytest.fixture
async def pair():
    """A TransactionLayer, a UAS listening on TCP, and ``connect()`` for connections to it."""
    layer = TransactionLayer(**TIMERS)
    uas = UAS()
    uac = UAC(layer)
    listener = await listen_tcp('127.0.0.1', 0, uas)
    conns = []

    async def connect():
        conn = await connect_tcp('127.0.0.1', listener.local_addr[1], uac)
        conns.append(conn)
        return conn

    yield layer, uas, uac, connect
    layer.close()
    for conn in conns:
        conn.close()
        await conn.wait_closed()
    await listener.close()


def sent(conn, method='MESSAGE'):
    branch = new_branch()
    return request(method, via=conn.via(branch)), branch


async def test_a_request_over_tcp_is_sent_once_and_answered_over_its_connection(pair):
    layer, uas, uac, connect = pair
    conn = await connect()
    invite, branch = sent(conn, 'INVITE')
    seen = []
    future = layer.send_request(conn, invite, branch=branch, on_response=seen.append)
    assert layer.clients == 1 and layer.pending_on(conn) == 1 and (branch, 'INVITE') in layer
    server_side, got = await uas.next()
    assert got.top_branch == branch and got.method == 'INVITE'
    server_side.send(make_response(got, 180, to_tag='b'))
    await asyncio.sleep(12 * T1)                      # Timers A and E would have fired by now
    assert uas.got.qsize() == 0                       # never retransmitted over TCP
    assert [r.status for r in seen] == [180] and not future.done()
    server_side.send(make_response(got, 200, to_tag='b'))
    assert (await asyncio.wait_for(future, 2)).status == 200
    assert [r.status for r in seen] == [180, 200]
    assert len(layer) == 0 and layer.pending_on(conn) == 0
    server_side.send(make_response(got, 200, to_tag='b'))      # after it ended: the TU's
    await asyncio.sleep(5 * T1)
    assert [m.status for m in uac.unmatched] == [200]


async def test_a_response_over_another_connection_does_not_match(pair):
    layer, uas, uac, connect = pair
    first, second = await connect(), await connect()
    message, branch = sent(first)
    future = layer.send_request(first, message, branch=branch)
    _, got = await uas.next()
    assert not layer.response_received(make_response(got, 200, to_tag='x'), second)
    assert not future.done()
    assert layer.response_received(make_response(got, 200, to_tag='x'), first)
    assert (await future).status == 200


async def test_timer_f_and_a_rearmed_timer_c_end_an_unanswered_request(pair):
    layer, uas, uac, connect = pair
    conn = await connect()
    message, branch = sent(conn)
    future = layer.send_request(conn, message, branch=branch, timeout=5 * T1)
    with pytest.raises(TransactionTimeout, match=r'MESSAGE sip:bob@127\.0\.0\.1 .*Timer F'):
        await asyncio.wait_for(future, 2)
    assert len(layer) == 0

    invite, branch = sent(conn, 'INVITE')
    started = asyncio.get_running_loop().time()
    future = layer.send_request(conn, invite, branch=branch, timeout=5 * T1,
                                on_response=lambda r: layer.rearm((branch, 'INVITE'),
                                                                  15 * T1, 'Timer C'))
    await uas.next()                                  # the MESSAGE
    server_side, got = await uas.next()
    await asyncio.sleep(3 * T1)
    server_side.send(make_response(got, 183, to_tag='b'))          # re-arms Timer C
    with pytest.raises(TransactionTimeout, match='Timer C'):
        await asyncio.wait_for(future, 2)
    assert asyncio.get_running_loop().time() - started >= 15 * T1    # not Timer F's 5 T1
    assert layer.pending_on(conn) == 0


async def test_a_lost_connection_ends_what_it_carried_and_nothing_else(pair):
    layer, uas, uac, connect = pair
    doomed, kept = await connect(), await connect()
    lost = [layer.send_request(doomed, m, branch=b) for m, b in (sent(doomed) for _ in range(3))]
    alive = [layer.send_request(kept, m, branch=b) for m, b in (sent(kept) for _ in range(2))]
    assert (layer.pending_on(doomed), layer.pending_on(kept), layer.clients) == (3, 2, 5)
    doomed.close()
    await doomed.wait_closed()
    for future in lost:
        with pytest.raises(ConnectionLost, match='closed before the final response'):
            await asyncio.wait_for(future, 2)
    assert not any(f.done() for f in alive)
    assert (layer.pending_on(doomed), layer.pending_on(kept), layer.clients) == (0, 2, 2)
    layer.close('the test is over')
    for future in alive:
        with pytest.raises(ConnectionLost, match='the test is over'):
            await future


async def test_a_request_that_cannot_be_sent_fails_at_once(pair):
    layer, uas, uac, connect = pair
    conn = await connect()
    message, branch = sent(conn)
    conn.close()
    await conn.wait_closed()
    future = layer.send_request(conn, message, branch=branch)
    with pytest.raises(ConnectionLost, match='the request was not sent'):
        await future
    assert len(layer) == 0 and layer.pending_on(conn) == 0
