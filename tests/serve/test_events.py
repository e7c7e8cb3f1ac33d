"""serve's event stream: what its pipeline tells the consumers that subscribe, from real
connections on 127.0.0.1; each consumer's bounded queue and drop counter; a slow or
broken consumer never holds up the relay."""
from __future__ import annotations

import asyncio
import time

import pytest
from websockets.asyncio.client import connect

from aiosip_ws.core.codec import parse
from aiosip_ws.serve.events import (
    CallChanged,
    ConnectionClosed,
    ConnectionOpened,
    Event,
    EventStream,
    MessageIn,
    MessageOut,
    RegistrationChanged,
    RequestAnswered,
    RequestRelayed,
)
from aiosip_ws.serve.relay import RelayServer
from tests.support.cli import interrupt
from tests.support.net import http_get
from tests.support.sip import answer, invite, message, recv, register_device, register_raw

ALL = (MessageIn, MessageOut, ConnectionOpened, ConnectionClosed, RegistrationChanged,
       CallChanged, RequestRelayed, RequestAnswered)


def bye(caller_host: str, callee_host: str, to_tag: str) -> str:
    return ('BYE sip:bob@%s;transport=ws SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKbye1\r\n'
            'From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=%s\r\n'
            'Call-ID: call-1\r\nCSeq: 11 BYE\r\nMax-Forwards: 70\r\n\r\n'
            % (callee_host, caller_host, to_tag))


async def settle(seen: list[Event], count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


@pytest.mark.parametrize('kind', ['plain', 'coroutine'])
async def test_a_call_told_as_events(kind):
    """Registrations, a call (attempted, ringing, answered, ended by BYE), the messages in
    and out and the connections, in the order they happened, to a plain and to a
    coroutine consumer alike."""
    seen: list[Event] = []
    if kind == 'plain':
        def consumer(event: Event) -> None:
            seen.append(event)
    else:
        async def consumer(event: Event) -> None:          # type: ignore[misc]
            await asyncio.sleep(0)
            seen.append(event)
    async with RelayServer() as server:
        subscription = server.events.subscribe('test', consumer, ALL)
        [listener] = await server.start('ws://127.0.0.1:0/')
        async with connect(listener.bound_url, subprotocols=['sip'], proxy=None) as alice, \
                connect(listener.bound_url, subprotocols=['sip'], proxy=None) as bob:
            alice_host = await register_raw(alice, 'alice')
            bob_host = await register_device(bob, 'bob', 'desk')
            await alice.send(invite(alice_host))
            assert (await recv(alice)).status == 100
            request = await recv(bob)
            await answer(bob, request, 180, 'b1')
            assert (await recv(alice)).status == 180
            await answer(bob, request, 200, 'b1')
            assert (await recv(alice)).status == 200
            await alice.send(bye(alice_host, bob_host, 'b1'))
            await answer(bob, await recv(bob), 200, 'b1')
            assert (await recv(alice)).status == 200
            await alice.send(message(alice_host).replace('bob@', 'nobody@'))
            assert (await recv(alice)).status == 404
        await settle(seen, 1)
        for _ in range(100):
            if sum(isinstance(e, ConnectionClosed) for e in seen) == 2:
                break
            await asyncio.sleep(0.02)

    calls = [(e.change, e.status) for e in seen if isinstance(e, CallChanged)]
    assert calls == [('attempted', None), ('ringing', 180), ('answered', 200), ('ended', 200)]
    assert all(e.call_id == 'call-1' and 'alice' in e.caller and 'bob' in e.callee
               for e in seen if isinstance(e, CallChanged))
    registrations = [(e.change, e.aor, e.why) for e in seen if isinstance(e, RegistrationChanged)]
    assert ('added', 'sip:alice@example.com', 'registered') in registrations
    assert ('added', 'sip:bob@example.com', 'registered') in registrations
    assert ('removed', 'sip:alice@example.com', 'connection closed') in registrations
    assert ('removed', 'sip:bob@example.com', 'connection closed') in registrations
    ins = [e.message.method or e.message.status for e in seen if isinstance(e, MessageIn)]
    assert ins[:2] == ['REGISTER', 'REGISTER'] and 'INVITE' in ins and 'BYE' in ins
    assert ins.count(200) == 2 and 180 in ins                   # bob's answers came in
    outs = [e.message.method or e.message.status for e in seen if isinstance(e, MessageOut)]
    assert outs.count('INVITE') == 1 and outs.count('BYE') == 1 and 404 in outs and 100 in outs
    assert all(e.sent for e in seen if isinstance(e, MessageOut))
    answered = [(e.method, e.status) for e in seen if isinstance(e, RequestAnswered)]
    assert answered == [('INVITE', 200)]
    assert [e.method for e in seen if isinstance(e, RequestRelayed)] == ['INVITE']
    opened = [e for e in seen if isinstance(e, ConnectionOpened)]
    closed = [e for e in seen if isinstance(e, ConnectionClosed)]
    assert len(opened) == 2 and sorted(e.code for e in closed) == [1000, 1000]
    assert seen.index(opened[0]) == 0
    times = [e.time for e in seen]
    assert times == sorted(times) and abs(times[0] - time.time()) < 30
    assert subscription.dropped == 0 and subscription.failed == 0
    assert subscription.delivered == len(seen)


async def test_a_slow_consumer_loses_events_counted_and_never_holds_up_the_relay():
    """A consumer that takes 50 ms an event, with room for 5: MESSAGEs still round-trip
    at once; what did not fit is dropped and counted, in /metrics too; closing the server
    ends its task."""
    got: list[Event] = []

    async def slow(event: Event) -> None:
        await asyncio.sleep(0.05)
        got.append(event)

    def broken(event: Event) -> None:
        raise RuntimeError('a broken consumer')

    async with RelayServer() as server:
        slow_sub = server.events.subscribe('slow', slow, (MessageIn, MessageOut), maxsize=5)
        broken_sub = server.events.subscribe('broken', broken, (MessageIn,))
        [listener] = await server.start('ws://127.0.0.1:0/')
        async with connect(listener.bound_url, subprotocols=['sip'], proxy=None) as alice, \
                connect(listener.bound_url, subprotocols=['sip'], proxy=None) as bob:
            alice_host = await register_raw(alice, 'alice')
            await register_device(bob, 'bob', 'desk')
            started = time.monotonic()
            for n in range(20):
                await alice.send(message(alice_host).replace('msg-1', 'm-%d' % n)
                                 .replace('z9hG4bKm1', 'z9hG4bKm1x%d' % n))
                relayed = await recv(bob)
                await answer(bob, relayed, 200, 'b%d' % n)
                assert (await recv(alice)).status == 200
            elapsed = time.monotonic() - started
        assert elapsed < 2.0, elapsed            # 80 events at 50 ms would take 4 s
        assert slow_sub.dropped > 40 and len(got) < 20
        assert broken_sub.failed >= 40 and broken_sub.delivered == 0
        status, _, body = await http_get(listener.port, '/metrics')
        assert status == 200
        samples = dict(line.rsplit(' ', 1) for line in body.decode().splitlines()
                       if line and not line.startswith('#'))
        assert float(samples['aiosip_ws_event_drops_total{consumer="slow"}']) == slow_sub.dropped
        # the metrics themselves lost nothing: every request counted
        assert float(samples['aiosip_ws_sip_requests_total{method="MESSAGE"}']) == 20
    assert slow_sub._task is None                                # ended with the server


async def test_events_no_consumer_wants_are_not_made():
    stream = EventStream()
    assert not stream.wants(MessageIn) and not stream.wanted
    seen: list[Event] = []
    subscription = stream.subscribe('in only', seen.append, (MessageIn,))
    assert stream.wants(MessageIn) and not stream.wants(MessageOut)
    msg = parse(b'OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/WS h.invalid;branch=z9hG4bK1\r\n'
                b'From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n')
    stream.publish(MessageOut(None, msg, True))                 # nobody takes it
    for _ in range(3):
        stream.publish(MessageIn(None, msg))
    assert seen == []                                            # in a batch, from the loop
    await asyncio.sleep(0)
    assert len(seen) == 3 and subscription.delivered == 3
    await subscription.close()
    assert not stream.wants(MessageIn)
    with pytest.raises(ValueError):
        stream.subscribe('none', seen.append, (MessageIn,), maxsize=0)


async def test_inline_handlers_take_fields_and_no_event_is_made_for_them_alone(monkeypatch):
    """A kind only handlers want is emitted without an object; a prebuilt event reaches
    the handlers as its fields; another consumer of the kind still gets the object; a
    handler that raises is counted and logged, and the others still run."""
    stream = EventStream()
    msg = parse(b'OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/WS h.invalid;branch=z9hG4bK1\r\n'
                b'From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n')
    made: list[Event] = []
    original = MessageIn.__init__

    def counting_init(self, *args):
        made.append(self)
        original(self, *args)
    monkeypatch.setattr(MessageIn, '__init__', counting_init)
    fields: list[tuple] = []
    handled = stream.subscribe('fields', lambda event: None, (MessageIn, MessageOut),
                               inline=True, handlers={MessageIn: lambda *f: fields.append(f),
                                                      MessageOut: lambda *f: 1 / 0})
    stream.emit(MessageIn, 'flow', msg)
    assert fields == [('flow', msg)] and made == []                # no object was made
    stream.publish(MessageIn('other', msg))                        # prebuilt: its fields
    assert fields[-1] == ('other', msg) and len(made) == 1
    objects: list[Event] = []
    stream.subscribe('objects', objects.append, (MessageIn,), inline=True)
    stream.emit(MessageIn, 'third', msg)
    assert fields[-1] == ('third', msg)
    assert len(objects) == 1 and objects[0].flow == 'third' and len(made) == 2
    stream.emit(MessageOut, 'flow', msg, True)
    assert handled.failed == 1
    with pytest.raises(ValueError, match='inline'):
        stream.subscribe('queued', objects.append, (MessageIn,), handlers={MessageIn: print})


async def test_registration_changes_say_why():
    """added, refreshed, removed by Expires: 0 (unregistered)."""
    seen: list[RegistrationChanged] = []
    async with RelayServer() as server:
        server.events.subscribe('registrations', seen.append, (RegistrationChanged,))
        [listener] = await server.start('ws://127.0.0.1:0/')
        async with connect(listener.bound_url, subprotocols=['sip'], proxy=None) as bob:
            text = ('REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS b.invalid;branch=z9hG4bK%s'
                    '\r\nFrom: <sip:bob@example.com>;tag=t\r\nTo: <sip:bob@example.com>\r\n'
                    'Call-ID: r1\r\nCSeq: %d REGISTER\r\nMax-Forwards: 70\r\n'
                    'Contact: <sip:bob@b.invalid;transport=ws>\r\nExpires: %d\r\n\r\n')
            for cseq, expires in ((1, 60), (2, 60), (3, 0)):
                await bob.send(text % ('r%d' % cseq, cseq, expires))
                assert (await recv(bob)).status == 200
        await asyncio.sleep(0.05)
    assert [(e.change, e.why) for e in seen] == [
        ('added', 'registered'), ('refreshed', 'registered'), ('removed', 'unregistered')]
    assert all(e.aor == 'sip:bob@example.com' and 'b.invalid' in e.contact for e in seen)
    assert seen[0].source is not None and seen[0].source[0] == '127.0.0.1'


def test_the_pipeline_docs_example_logs_registrations_as_written(tmp_path):
    """docs/pipeline.rst's call_log.py, unchanged, in a process of its own: a client
    registers and leaves; the program prints both changes, and stops on SIGINT."""
    import subprocess
    import sys

    from tests.support import code_block, doc_page
    from tests.support.net import free_port
    block = code_block('# call_log.py', doc_page('pipeline.rst'), 'docs/pipeline.rst')
    (tmp_path / 'call_log.py').write_text(block)
    url = 'ws://127.0.0.1:%d/' % free_port()
    process = subprocess.Popen([sys.executable, '-u', str(tmp_path / 'call_log.py'), url],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == 'listening on %s' % url

        async def client() -> None:
            async with connect(url, subprotocols=['sip'], proxy=None) as bob:
                await register_raw(bob, 'bob')
        asyncio.run(client())
        lines = [process.stdout.readline().strip() for _ in range(2)]
        assert lines == ['registration added sip:bob@example.com registered',
                         'registration removed sip:bob@example.com connection closed']
    finally:
        code, err = interrupt(process)
    assert code == 0 and 'Traceback' not in err, err
