"""Faults and limits: handshake abuse, caps, dead peers, reconnection with SIP Outbound,
and resource hygiene over many connections."""
from __future__ import annotations

import asyncio
import os
import random
import signal

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from aiosip_ws import Application, ClientOptions, ConnectionLost, ServerOptions
from aiosip_ws.adapter.registration import Registration
from aiosip_ws.serve.relay import RelayServer
from tests.support.net import free_port
from tests.support.websocket import RawWebSocket


async def raw_handshake(port: int, *, complete: bool = True) -> tuple[asyncio.StreamReader,
                                                                        asyncio.StreamWriter]:
    """Open TCP and (optionally) finish a WebSocket handshake, then do nothing: never send
    the handshake (``complete=False``), or never answer a Ping."""
    if not complete:
        return await asyncio.open_connection('127.0.0.1', port)
    raw = await RawWebSocket.connect('127.0.0.1', port)
    return raw.reader, raw.writer


async def read_until_eof(reader: asyncio.StreamReader, timeout: float) -> None:
    async def drain():
        while await reader.read(4096):
            pass
    await asyncio.wait_for(drain(), timeout)


async def test_handshake_never_finished_is_closed_after_open_timeout():
    """A client that opens TCP and never sends the handshake is dropped (open_timeout)."""
    app = Application(server_options=ServerOptions(open_timeout=0.5))
    listener = await app.listen('ws://127.0.0.1:0/')
    try:
        reader, writer = await raw_handshake(listener.port, complete=False)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await read_until_eof(reader, 5)
        assert loop.time() - started < 3
        writer.close()
    finally:
        await app.close()


async def test_connection_caps_answer_503():
    """Caps per listener and per source address: further handshakes get HTTP 503."""
    app = Application(server_options=ServerOptions(max_connections_per_ip=2))
    listener = await app.listen('ws://127.0.0.1:0/')
    url = listener.bound_url
    try:
        first = await connect(url, subprotocols=['sip'], proxy=None)
        second = await connect(url, subprotocols=['sip'], proxy=None)
        with pytest.raises(InvalidStatus) as info:
            await connect(url, subprotocols=['sip'], proxy=None)
        assert info.value.response.status_code == 503
        assert 5 <= int(info.value.response.headers['Retry-After']) <= 10   # jittered
        await first.close()
        for _ in range(50):
            if len(app.connections) < 2:
                break
            await asyncio.sleep(0.02)
        third = await connect(url, subprotocols=['sip'], proxy=None)      # room again
        await third.close()
        await second.close()
    finally:
        await app.close()
    app = Application(server_options=ServerOptions(max_connections=1))
    listener = await app.listen('ws://127.0.0.1:0/')
    try:
        only = await connect(listener.bound_url, subprotocols=['sip'], proxy=None)
        with pytest.raises(InvalidStatus) as info:
            await connect(listener.bound_url, subprotocols=['sip'], proxy=None)
        assert info.value.response.status_code == 503
        await only.close()
    finally:
        await app.close()


async def test_dead_peer_is_reaped_by_websocket_pings():
    """RFC 7118 §6 (RFC7118-6-a): a peer that stops answering Pings is closed and its bindings removed."""
    relay = RelayServer(server_options=ServerOptions(ping_interval=0.2, ping_timeout=0.3,
                                                      close_timeout=0.5))
    [listener] = await relay.start('ws://127.0.0.1:0/')
    try:
        reader, writer = await raw_handshake(listener.port)           # never answers a Ping
        assert len(relay.connections) == 1
        await read_until_eof(reader, 5)
        for _ in range(50):
            if not relay.connections:
                break
            await asyncio.sleep(0.02)
        assert not relay.connections
        writer.close()
    finally:
        await relay.close()


async def test_one_keepalive_task_pings_every_connection_and_live_peers_stay():
    """RFC 7118 §6 keep-alive without a task per connection: one task of the listener
    pings every connection each interval; peers that answer (websockets clients pong by
    themselves) stay open, and the task ends with the listener."""
    relay = RelayServer(server_options=ServerOptions(ping_interval=0.1, ping_timeout=0.2))
    [listener] = await relay.start('ws://127.0.0.1:0/')
    clients = []
    try:
        clients = [await connect(listener.bound_url, subprotocols=['sip'], proxy=None,
                                 ping_interval=None) for _ in range(20)]
        for _ in range(100):
            if len(relay.connections) == 20:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.8)                              # several intervals
        assert len(relay.connections) == 20
        assert all(conn.websocket.latency > 0 for conn in relay.connections)  # Pongs came
        assert listener.keepalive is not None and listener.keepalive.timeouts == 0
        names = [repr(task.get_coro()) for task in asyncio.all_tasks()]
        assert sum('SharedKeepalive._run' in name for name in names) == 1
        assert not any('Connection.keepalive' in name for name in names)
    finally:
        for client in clients:
            await client.close()
        await relay.close()
    names = [repr(task.get_coro()) for task in asyncio.all_tasks()]
    assert not any('SharedKeepalive' in name for name in names)


def test_backoff_grows_with_jitter_between_the_bounds():
    """Reconnection delays: exponential from recovery_min, capped at recovery_max, jittered."""
    registration = Registration(object(), 'sip:a@example.com', 'ws://127.0.0.1:1/',
                                recovery_min=1, recovery_max=16, rng=random.Random(7))
    seen = []
    for failures in range(1, 9):
        registration.failures = failures
        delays = [registration.backoff() for _ in range(200)]
        ceiling = min(16, 2 ** (failures - 1))
        assert all(max(1, ceiling / 2) <= d <= ceiling for d in delays)
        seen.append(max(delays))
    assert seen[0] == 1 and seen[-1] > 15 and len({round(d, 3) for d in delays}) > 100


async def test_outbound_registration_replaces_the_old_flow(relay):
    """RFC 5626 §6 (RFC5626-6-a): same +sip.instance and reg-id on a new connection replaces the
    binding; without Outbound each Contact is a binding of its own."""
    server, url = relay
    apps = [Application(), Application()]
    try:
        regs = [Registration(app, 'sip:alice@example.com', url, instance_id='urn:uuid:0000-1')
                for app in apps]
        for reg in regs:
            await reg.start(timeout=5)
        [binding] = server.registrar.lookup('sip:alice@example.com')
        assert binding.connection.remote_addr == next(iter(apps[1].connections)).local_addr
        assert 'outbound' in regs[1].last_response.headers['Require']
        assert binding.instance == '"<urn:uuid:0000-1>"' and binding.reg_id == '1'
        plain = [Registration(app, 'sip:bob@example.com', url, outbound=False) for app in apps]
        for reg in plain:
            await reg.start(timeout=5)
        assert len(server.registrar.lookup('sip:bob@example.com')) == 2
        for reg in regs + plain:
            await reg.stop()
        assert not server.registrar.lookup('sip:alice@example.com')
        assert not server.registrar.lookup('sip:bob@example.com')
    finally:
        for app in apps:
            await app.close()


async def test_server_killed_and_restarted_client_registers_again(serve_process):
    """A server restart (SIGKILL, then a new process on the same port): the pending
    transaction fails with ConnectionLost at once, and the client reconnects with backoff
    and REGISTERs again (same instance and reg-id), so it is reachable again."""
    port = free_port()
    url = 'ws://127.0.0.1:%d/' % port
    first = serve_process('--listen', url)
    alice_app, bob_app = Application(), Application()
    silent = Application()                      # registered, never answers MESSAGE
    hold = asyncio.Event()

    async def never_answer(dialog, msg):
        await hold.wait()

    silent.router.add_route('MESSAGE', never_answer)
    inbox: asyncio.Queue = asyncio.Queue()

    async def on_message(dialog, msg):
        await inbox.put(msg.payload)
        dialog.reply(msg, 200)

    alice_app.router.add_route('MESSAGE', on_message)
    alice = Registration(alice_app, 'sip:alice@example.com', url, recovery_min=0.1,
                         recovery_max=0.4)
    mute = Registration(silent, 'sip:mute@example.com', url)
    try:
        await alice.start(timeout=5)
        await mute.start(timeout=5)
        bob = await bob_app.start_dialog('sip:bob@example.com', 'sip:mute@example.com',
                                         remote_addr=url)
        pending = bob.send_message('MESSAGE', payload='will never be answered')
        await asyncio.sleep(0.2)
        first.proc.send_signal(signal.SIGKILL)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(pending, 5)
        assert loop.time() - started < 2

        await loop.run_in_executor(None, lambda: first.stop(terminate=False))
        second = serve_process('--listen', url)
        assert second.urls == [url]
        for _ in range(100):
            if alice.registrations >= 2 and alice.registered.is_set():
                break
            await asyncio.sleep(0.05)
        assert alice.registrations == 2
        dialog = await bob_app.start_dialog('sip:bob@example.com', 'sip:alice@example.com',
                                            remote_addr=url)
        response = await asyncio.wait_for(dialog.send_message('MESSAGE', payload='back?'), 5)
        assert response.status_code == 200 and await inbox.get() == 'back?'
    finally:
        hold.set()
        await alice.stop()
        await mute.stop(unregister=False)
        for app in (alice_app, bob_app, silent):
            await app.close()


async def test_many_connect_register_drop_cycles_leave_nothing_behind():
    """1,000 connect/REGISTER/drop cycles: tasks, file descriptors, connections, dialogs and
    bindings of the server come back to their baseline."""
    relay = RelayServer()
    [listener] = await relay.start('ws://127.0.0.1:0/')
    url = listener.bound_url

    def fds() -> int:
        return len(os.listdir('/proc/self/fd'))

    async def cycle(n: int) -> None:
        app = Application(client_options=ClientOptions(close_timeout=1))
        try:
            aor = 'sip:user%d@example.com' % n
            dialog = await app.start_dialog(aor, aor, remote_addr=url)
            response = await asyncio.wait_for(dialog.register(expires=60), 5)
            assert response.status_code == 200
        finally:
            if n % 2:
                await app.close()                            # a clean close ...
            else:
                next(iter(app.connections)).websocket.transport.abort()   # ... or a drop
                await app.close()

    try:
        await cycle(-1)
        await asyncio.sleep(0.1)
        base_tasks, base_fds = len(asyncio.all_tasks()), fds()
        for start in range(0, 1000, 50):
            await asyncio.gather(*(cycle(n) for n in range(start, start + 50)))
        for _ in range(100):
            if not relay.connections and len(asyncio.all_tasks()) <= base_tasks:
                break
            await asyncio.sleep(0.05)
        assert not relay.connections
        assert len(relay.registrar) == 0
        assert not len(relay.transactions) and not len(relay.contacts) and not relay.forker.invites
        assert len(asyncio.all_tasks()) <= base_tasks
        assert fds() <= base_fds
    finally:
        await relay.close()
