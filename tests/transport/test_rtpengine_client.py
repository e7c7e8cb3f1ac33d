"""The ng client (aiosip_ws.transport.rtpengine) against UDP sockets of the test on
127.0.0.1, standing in for rtpengine where its behaviour is what is tested: a lost
datagram is sent again under the same cookie; a relay that never answers times out after
its retransmissions; an error reply raises with its reason; replies nobody waits for are
counted; the pending commands are bounded.  Against the real rtpengine:
tests/interop/test_rtpengine.py."""
from __future__ import annotations

import asyncio

import pytest

from aiosip_ws.core.ng import bdecode
from aiosip_ws.errors import ConfigurationError, ConnectionLost, MediaRelayError, MediaRelayTimeout
from aiosip_ws.transport.rtpengine import RelaySet, open_ng
from tests.support.rtpengine import FakeRelay


@pytest.fixture
async def relay():
    made = []

    async def start(answer, drop=0):
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: FakeRelay(answer, drop), local_addr=('127.0.0.1', 0))
        made.append(transport)
        return protocol, 'udp://127.0.0.1:%d' % transport.get_extra_info('sockname')[1]
    yield start
    for transport in made:
        transport.close()


async def test_a_lost_command_is_sent_again_under_its_cookie(relay):
    fake, url = await relay(lambda command: {'result': 'pong'}, drop=2)
    client = await open_ng(url, retransmit=0.05, timeout=2)
    try:
        await client.ping()
        assert len(fake.got) == 3 and len(set(fake.got)) == 1     # one datagram, three times
        assert client.retransmitted == 2
        await client.ping()
        assert fake.got[3] != fake.got[0]                           # a new command, a new cookie
    finally:
        client.close()
        await client.wait_closed()


async def test_a_silent_relay_times_out_and_an_error_carries_its_reason(relay):
    fake, url = await relay(lambda command: None)
    client = await open_ng(url, retransmit=0.05, timeout=0.3)
    try:
        with pytest.raises(MediaRelayTimeout, match='no reply to offer within 0.3 s'):
            await client.command({'command': 'offer', 'call-id': 'c1', 'sdp': 'v=0'})
        assert 5 <= len(fake.got) <= 8 and len(set(fake.got)) == 1
    finally:
        client.close()
        await client.wait_closed()
    fake, url = await relay(lambda command: {'result': 'error',
                                             'error-reason': 'Unknown call-id'})
    client = await open_ng(url)
    try:
        with pytest.raises(MediaRelayError, match='refused answer: Unknown call-id'):
            await client.command({'command': 'answer', 'call-id': 'nope'})
    finally:
        client.close()
        await client.wait_closed()


async def test_stray_replies_are_counted_pending_commands_bounded_and_close_fails_them(relay):
    fake, url = await relay(lambda command: None)
    client = await open_ng(url, retransmit=10, timeout=10, max_pending=2)
    waiting = [asyncio.ensure_future(client.command({'command': 'ping'})) for _ in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(MediaRelayError, match='2 ng commands already wait'):
        await client.command({'command': 'ping'})
    client.datagram_received(b'other_1 d6:result4:ponge', ('127.0.0.1', 1))
    client.datagram_received(b'not ng at all', ('127.0.0.1', 1))
    assert client.unmatched == 2                           # no command of ours: unread
    cookie = next(iter(client._pending))                   # a waiting command's cookie,
    client.datagram_received(cookie + b' d6:result', ('127.0.0.1', 1))   # a broken reply
    assert not any(future.done() for future in waiting)    # dropped, the command waits on
    client.close()
    for future in waiting:
        with pytest.raises(ConnectionLost):
            await future
    await client.wait_closed()
    with pytest.raises(ConnectionLost):
        await client.ping()
    for url in ('udp://127.0.0.1', 'tcp://127.0.0.1:2222'):
        with pytest.raises(ConfigurationError, match='udp://HOST:PORT'):
            await open_ng(url)


async def test_a_relay_set_keeps_each_call_on_its_relay_and_skips_a_silent_one(relay):
    answering = {'up': True}

    def maybe(command):
        return {'result': 'ok', 'sdp': 'v=0'} if answering['up'] else None
    first, first_url = await relay(maybe)
    second, second_url = await relay(lambda command: {'result': 'ok', 'sdp': 'v=0'})
    clients = [await open_ng(url, retransmit=0.05, timeout=0.2)
               for url in (first_url, second_url)]
    relays = RelaySet(clients, retry=0.5, max_calls=3)
    try:
        await relays.command('c1', {'command': 'offer', 'sdp': 'v=0'})
        await relays.command('c2', {'command': 'offer', 'sdp': 'v=0'})
        assert relays.relay_of('c1') is clients[0] and relays.relay_of('c2') is clients[1]
        await relays.command('c1', {'command': 'answer', 'sdp': 'v=0'})     # sticks
        sent = [bdecode(d.partition(b' ')[2]) for d in first.got]
        assert [c['command'] for c in sent] == ['offer', 'answer']
        assert all(c['call-id'] == 'c1' for c in sent)

        answering['up'] = False                       # the first relay goes silent
        with pytest.raises(MediaRelayTimeout):
            await relays.command('c1', {'command': 'answer', 'sdp': 'v=0'})   # no failover
        assert relays.live() == [clients[1]]
        for call in ('c3', 'c4'):                     # new calls: only the live relay
            await relays.command(call, {'command': 'offer', 'sdp': 'v=0'})
            assert relays.relay_of(call) is clients[1]
        assert len(relays) == 3 and relays.relay_of('c1') is None     # at most 3 calls kept
        await relays.command('c4', {'command': 'delete', 'via-branch': 'z9hG4bKx'})
        assert relays.relay_of('c4') is clients[1]     # one branch deleted: the call stays
        await relays.command('c4', {'command': 'delete'})
        assert relays.relay_of('c4') is None and len(relays) == 2
        assert await relays.command('never', {'command': 'delete'}) == {'result': 'ok'}

        await asyncio.sleep(0.55)                     # retry: the first is tried again
        assert relays.live() == clients
        answering['up'] = True
        await relays.command('c5', {'command': 'offer', 'sdp': 'v=0'})
        await relays.command('c6', {'command': 'offer', 'sdp': 'v=0'})
        assert {relays.relay_of('c5'), relays.relay_of('c6')} == set(clients)

        answering['up'] = False
        second.answer = lambda command: None          # both silent: a new call fails
        with pytest.raises(MediaRelayError, match='no rtpengine answers: .*within 0.2 s'):
            await relays.command('c7', {'command': 'offer', 'sdp': 'v=0'})
        with pytest.raises(MediaRelayError, match='all skipped for now'):
            await relays.command('c8', {'command': 'offer', 'sdp': 'v=0'})
    finally:
        relays.close()
        await relays.wait_closed()
    with pytest.raises(ConfigurationError):
        RelaySet([])
