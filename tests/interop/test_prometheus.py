"""Debian's Prometheus (2.42) scraping ``aiosip-ws serve``'s ``/metrics`` every second, as an
operator's would: the target is up (Go's HTTP client refuses an answer with Content-Length
twice, as serve once sent), and through Prometheus's query API the connections and
bindings gauges follow clients that connect, register and leave: with one process, and
with ``--workers 2 --redis`` (the gauges summed over the live workers, also after one was
killed and started again).  Through nginx: ``test_nginx.py``."""
from __future__ import annotations

import asyncio
import os
import signal

import pytest
from websockets.asyncio.client import connect
from websockets.protocol import State

from tests.interop.conftest import _unavailable
from tests.support.net import free_port
from tests.support.prometheus import Prometheus, prometheus_binary
from tests.support.sip import register_request

pytestmark = pytest.mark.interop

CONNECTIONS = 'aiosip_ws_connections{job="aiosip-ws"}'
BINDINGS = 'aiosip_ws_bindings{job="aiosip-ws"}'


@pytest.fixture
def prometheus(tmp_path):
    """Start a Prometheus scraping the given targets (every one stopped at the end)."""
    try:
        prometheus_binary()
    except RuntimeError as exc:
        _unavailable('prometheus', exc)
    started: list[Prometheus] = []

    def start(targets: list[str], **options) -> Prometheus:
        server = Prometheus(tmp_path / ('prometheus%d' % len(started)), targets, **options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def ws(url: str):
    return connect(url, subprotocols=['sip'], proxy=None, open_timeout=5)


async def register(client, user: str) -> None:
    await client.send(register_request(user))
    answer = await asyncio.wait_for(client.recv(), 5)
    assert answer.startswith('SIP/2.0 200 '), answer


async def assert_up(prometheus: Prometheus) -> None:
    """The target up within 10 s of Prometheus's start, its last scrape without error."""
    target = await prometheus.wait_up(timeout=10)
    assert (target['health'], target['lastError']) == ('up', ''), target
    assert await prometheus.value('up{job="aiosip-ws"}') == 1


async def assert_gauges(prometheus: Prometheus, connections: int, bindings: int) -> None:
    got = (await prometheus.wait_value(CONNECTIONS, connections),
           await prometheus.wait_value(BINDINGS, bindings))
    assert got == (connections, bindings), 'connections, bindings: %s, not %s' % (
        got, (connections, bindings))


async def test_one_process_is_up_and_its_gauges_follow_a_client(serve_process, prometheus, tmp_path):
    """With a routing app (``--app``), whose hook calls Prometheus counts too."""
    port = free_port()
    scraper = prometheus(['127.0.0.1:%d' % port])      # first: its discovery takes 5 s
    app = tmp_path / 'app.py'
    app.write_text('async def on_request(request):\n    return None\n')
    process = serve_process('--listen', 'ws://127.0.0.1:%d/' % port, '--app', str(app))
    await assert_up(scraper)
    await assert_gauges(scraper, 0, 0)
    async with ws(process.urls[0]) as alice:
        await register(alice, 'alice')
        await assert_gauges(scraper, 1, 1)
        assert await scraper.wait_value('aiosip_ws_app_hooks_total{job="aiosip-ws",'
                                        'hook="on_request",outcome="default"}', 1) == 1
    await assert_gauges(scraper, 0, 0)                  # gone: its binding with it
    code, _, err = process.stop()
    assert code == 0 and 'Traceback' not in err, err


async def test_two_workers_summed_and_a_killed_worker_no_longer_counted(
        serve_process, prometheus, redis_server):
    """Clients spread over both workers (SO_REUSEPORT) until each has one; worker 1
    SIGKILLed: its clients drop, the supervisor starts it again, and the gauges are those
    of the clients still connected (the dead worker's values are not summed)."""
    import redis.asyncio as redis_async

    port = free_port()
    scraper = prometheus(['127.0.0.1:%d' % port])
    process = serve_process('--listen', 'ws://127.0.0.1:%d/' % port, '--workers', '2',
                            '--redis', redis_server.url, '--node-id', 't')
    [line] = process.urls
    assert '(2 workers: pids ' in line
    url = line.split(' ')[0]
    first_pid = int(line.split('pids ')[1].split(',')[0])
    store = redis_async.Redis.from_url(redis_server.url, decode_responses=True)
    clients: dict[str, list] = {'t-w1': [], 't-w2': []}      # by the worker serving them
    try:
        await assert_up(scraper)
        for n in range(16):
            client = await ws(url).__aenter__()
            await register(client, 'user%d' % n)
            [key] = await store.keys('aiosip-ws:binding:sip:user%d@example.com:*' % n)
            clients[await store.hget(key, 'node')].append(client)
            if n >= 3 and all(clients.values()):
                break
        assert all(clients.values()), 'all on one worker: %s' % {
            node: len(found) for node, found in clients.items()}
        total = sum(len(found) for found in clients.values())
        await assert_gauges(scraper, total, total)

        before = await store.get('aiosip-ws:alive:t-w1')
        os.kill(first_pid, signal.SIGKILL)
        for client in clients['t-w1']:                      # the kernel closes their TCP
            await asyncio.wait_for(client.wait_closed(), 10)
        for _ in range(100):                                # started again (new incarnation)
            if (await store.get('aiosip-ws:alive:t-w1')) not in (None, before):
                break
            await asyncio.sleep(0.1)
        assert (await store.get('aiosip-ws:alive:t-w1')) not in (None, before)
        live = sum(client.state is State.OPEN for found in clients.values() for client in found)
        assert live == len(clients['t-w2'])
        await assert_gauges(scraper, live, live)
        await assert_up(scraper)

        for client in clients['t-w2']:
            await client.close()
        await assert_gauges(scraper, 0, 0)
    finally:
        for found in clients.values():
            for client in found:
                await client.close()
        await store.aclose()
    code, _, err = await asyncio.to_thread(process.stop)
    assert code == 0, err
    assert 'worker 1 exited unexpectedly (status -9): starting it again' in err
