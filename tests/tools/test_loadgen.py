"""The open-loop load generator (aiosip_ws.tools.loadgen) against an in-process relay on 127.0.0.1:
counts, scenarios, digest, exact percentiles, and coordinated omission (a slow server or a
stalled client must show up in the latencies)."""
from __future__ import annotations

import asyncio
import math
import time

import pytest

from aiosip_ws import Application
from aiosip_ws.core.digest import parse_challenges
from aiosip_ws.errors import ConfigurationError
from aiosip_ws.serve.relay import RelayServer
from aiosip_ws.tools.loadgen import BenchConfig, LoadGenerator, percentile, run_bench, summarize
from tests.support.digest import independent_response
from tests.support.net import closed_port


def counting(server: RelayServer, method: str, delay: float = 0.0,
             serialize: bool = False) -> list[float]:
    """Wrap the relay's route for ``method``: note arrival times, optionally slow it down
    (``serialize``: one request at a time, so the server's capacity is 1/delay per second)."""
    seen: list[float] = []
    route = server.routes[method]
    lock = asyncio.Lock()

    async def run(conn, msg):
        outcome = route(conn, msg)
        if outcome is not None:
            await outcome

    async def wrapped(conn, msg):
        seen.append(time.monotonic())
        if serialize:
            async with lock:
                await asyncio.sleep(delay)
                await run(conn, msg)
        else:
            if delay:
                await asyncio.sleep(delay)
            await run(conn, msg)

    server.routes[method] = wrapped
    return seen


# ---------------------------------------------------------------------------- pure parts
def test_percentile_is_exact_nearest_rank():
    values = [float(v) for v in range(1, 101)]                 # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 90) == 90.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert percentile([1.0, 2.0], 50) == 1.0                    # rank ceil(1.0) = 1
    summary = summarize([0.3, 0.1, 0.2, 0.4])
    assert (summary.count, summary.min, summary.p50, summary.max) == (4, 0.1, 0.2, 0.4)
    assert summary.as_ms()['p99'] == 400.0
    assert summarize([]).as_ms()['p50'] is None


def test_config_is_validated():
    for bad in (dict(scenario='invite'), dict(clients=0), dict(rate=-1), dict(duration=0),
                dict(rate=1e6, duration=100), dict(timeout=0), dict(hold=-1)):
        with pytest.raises(ConfigurationError):
            BenchConfig('ws://127.0.0.1:1/', **bad).validate()
    with pytest.raises(ConfigurationError):
        BenchConfig('http://127.0.0.1/').validate()


# ---------------------------------------------------------------------------- runs
async def test_register_counts_per_client_and_unregisters_at_the_end(relay):
    server, url = relay
    arrivals = counting(server, 'REGISTER')
    reports = []
    result = await run_bench(BenchConfig(url, clients=5, rate=100, duration=1.0,
                                         scenario='register', expires=60),
                             on_progress=reports.append, progress_interval=0.25)
    assert result.sent == 100
    assert dict(result.answered) == {200: 100} and result.errors_total == 0
    assert (result.connections_opened, result.connections_failed, result.connections_lost) == (5, 0, 0)
    assert len(result.latencies) == 100 and result.ok
    assert len(arrivals) == 100 + 5                       # 20 per client, then 5 un-REGISTERs
    assert len(server.registrar) == 0                     # every client un-registered
    # the open loop sent on schedule: 100 requests spread over ~1 s, not in a burst
    assert 0.9 <= arrivals[99] - arrivals[0] <= 1.3
    assert result.lag().p99 < 0.05
    assert 0.95 <= result.elapsed <= 1.5
    assert len(reports) >= 3 and reports[-1].answered == 100 and reports[-1].sent == 100
    assert all(r.errors == 0 for r in reports)


async def test_options_and_message_scenarios(relay):
    server, url = relay
    result = await run_bench(BenchConfig(url, clients=3, rate=60, duration=0.5, scenario='options'))
    assert result.sent == 30 and dict(result.answered) == {200: 30}
    message_arrivals = counting(server, 'MESSAGE')
    result = await run_bench(BenchConfig(url, clients=4, rate=80, duration=0.5, scenario='message',
                                         body='ping'))
    assert result.sent == 40 and dict(result.answered) == {200: 40}
    assert result.requests_received == 40 and len(message_arrivals) == 40
    assert not result.setup_failed and len(server.registrar) == 0
    as_dict = result.as_dict()
    assert as_dict['answered'] == {'200': 40} and as_dict['latency_ms']['count'] == 40


def requests_seen(server: RelayServer) -> list[str]:
    """The methods of the requests ``server`` receives from its clients, in order."""
    seen: list[str] = []
    received = server.message_received

    def wrapped(conn, message):
        if message.is_request:
            seen.append(message.method)
        received(conn, message)

    server.message_received = wrapped
    return seen


async def test_call_scenario_sets_up_holds_and_hangs_up_every_call(relay):
    """--scenario call: INVITE with SDP, 180/200 from the callee client, ACK and BYE on the
    200's route set through serve; the latency is the set-up time, not the call's length."""
    server, url = relay
    seen = requests_seen(server)
    result = await run_bench(BenchConfig(url, clients=4, rate=20, duration=0.5, scenario='call',
                                         hold=0.3))
    assert result.sent == 10 and dict(result.answered) == {200: 10} and result.ok
    assert result.requests_received == 10                     # INVITEs the callees answered
    calls = [m for m in seen if m in ('INVITE', 'ACK', 'BYE')]
    assert calls.count('INVITE') == calls.count('ACK') == calls.count('BYE') == 10
    assert result.latency().count == 10 and result.latency().max < 0.3 <= result.elapsed
    assert len(server.registrar) == 0                          # un-registered at the end


async def test_call_scenario_counts_a_refused_invite_as_a_failure_and_acks_it(relay):
    server, url = relay
    seen = requests_seen(server)
    result = await run_bench(BenchConfig(url, clients=2, rate=20, duration=0.2, scenario='call',
                                         to='sip:nobody@example.com', hold=0))
    assert dict(result.answered) == {404: 4} and not result.ok
    assert seen.count('INVITE') == seen.count('ACK') == 4 and 'BYE' not in seen


async def test_message_to_unknown_aor_counts_404_by_status(relay):
    _, url = relay
    result = await run_bench(BenchConfig(url, clients=2, rate=40, duration=0.5,
                                         scenario='message', to='sip:nobody@example.com'))
    assert dict(result.answered) == {404: 20} and result.errors_total == 0
    assert not result.ok
    assert '404 Not Found' in result.table()


async def test_slow_server_shows_in_latency_no_coordinated_omission(relay):
    """The server handles one REGISTER per 20 ms (50/s); 100/s is offered for 1 s.  The
    queue grows to ~1 s: latencies counted from the intended send times show it,
    although each request spends only ~20 ms being served."""
    server, url = relay
    arrivals = counting(server, 'REGISTER', delay=0.02, serialize=True)
    result = await run_bench(BenchConfig(url, clients=4, rate=100, duration=1.0,
                                         scenario='register', timeout=10, unregister=False))
    assert result.sent == 100 and dict(result.answered) == {200: 100}
    # requests still left on schedule (the client was not slowed down by the server) ...
    assert result.lag().max < 0.05
    assert arrivals[99] - arrivals[0] < 1.2
    latency = result.latency()
    # ... but the answers came at 50/s: the last one ~2 s after the start, ~1 s late
    assert latency.max > 0.8
    assert latency.p50 > 0.3
    assert latency.p90 > 0.7
    assert result.elapsed > 1.8


async def test_stalled_client_loop_shows_in_latency_no_coordinated_omission(relay):
    """The whole event loop (load generator and server) blocks for 300 ms in the middle of
    the run.  Requests that should have left during the stall leave late, and their
    latency counts from when they should have left, not from when they did."""
    _, url = relay
    stalled = []

    def progress(report):
        if not stalled:
            stalled.append(report.elapsed)
            time.sleep(0.3)                     # blocks the event loop: client and server

    result = await run_bench(BenchConfig(url, clients=4, rate=200, duration=1.0,
                                         scenario='options'),
                             on_progress=progress, progress_interval=0.3)
    assert stalled and result.sent == 200 and dict(result.answered) == {200: 200}
    late = sorted(result.latencies)
    # ~60 requests were due during the 300 ms stall; 40 of them by more than 100 ms
    assert sum(1 for v in late if v > 0.1) >= 30
    assert late[-1] > 0.25
    assert result.lag().max > 0.25                        # the scheduler saw it was late
    assert result.latency().p90 > 0.05


async def test_closed_loop_mode_measures_capacity(relay):
    _, url = relay
    result = await run_bench(BenchConfig(url, clients=3, rate=0, window=2, duration=0.5,
                                         scenario='options'))
    assert result.sent > 20 and result.answered_total == result.sent
    assert result.as_dict()['mode'] == 'closed'


async def test_unreachable_target_counts_failed_connections():
    port = closed_port()
    result = await run_bench(BenchConfig('ws://127.0.0.1:%d/' % port, clients=3, rate=10,
                                         duration=0.2, timeout=2))
    assert (result.connections_opened, result.connections_failed) == (0, 3)
    assert result.sent == 0 and not result.ok
    assert 'HandshakeError' in result.connect_errors[0]


async def test_server_closing_connections_counts_errors_and_lost_connections(relay):
    server, url = relay
    generator = LoadGenerator(BenchConfig(url, clients=2, rate=50, duration=1.0,
                                          scenario='options'),
                              on_progress=lambda report: None, progress_interval=0.4)
    closer_done = asyncio.Event()

    async def close_server_side():
        await asyncio.sleep(0.3)
        while not server.connections:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        for conn in list(server.connections):
            await conn.close(1011, 'test')
        closer_done.set()

    closer = asyncio.get_running_loop().create_task(close_server_side())
    result = await generator.run()
    await closer
    assert result.connections_lost == 2
    assert result.errors['no connection'] > 10
    assert result.answered_total + result.errors_total == result.sent == 50


async def test_digest_challenge_is_answered_and_counted_as_one_transaction():
    """A registrar that demands SHA-256 digest: the generator answers the 401, keeps the
    challenge for the next REGISTERs (nc increments) and counts one transaction each."""
    realm, nonce, password = 'bench.test', 'n0nce', 's3cret'
    app = Application()
    seen: list[str] = []

    def expected(auth: dict[str, str]) -> str:
        """The response for the realm, nonce, algorithm and qop challenged (not the echoed ones)."""
        return independent_response(dict(auth, realm=realm, nonce=nonce, algorithm='SHA-256',
                                         qop='auth'), 'REGISTER', password)

    async def on_register(dialog, msg):
        header = msg.headers.get('Authorization')
        seen.append(header or '')
        if header:
            [credentials] = parse_challenges(header)      # same grammar as a challenge
            auth = credentials.params
            if auth['response'] == expected(auth) and auth['username'] == 'user7':
                dialog.reply(msg, 200)
                return
        dialog.reply(msg, 401, headers={'WWW-Authenticate': 'Digest realm="%s", nonce="%s", '
                                        'qop="auth", algorithm=SHA-256' % (realm, nonce)})

    app.router.add_route('REGISTER', on_register)
    listener = await app.listen('ws://127.0.0.1:0/')
    try:
        result = await run_bench(BenchConfig(listener.bound_url, clients=1, rate=20, duration=0.5,
                                             scenario='register', user_template='user7',
                                             password=password, unregister=False))
    finally:
        await app.close()
    assert result.sent == 10 and dict(result.answered) == {200: 10}
    assert seen[0] == '' and len(seen) == 11                    # one challenge, then pre-auth
    assert ['nc=%08x' % n in seen[n] for n in range(1, 11)] == [True] * 10


async def test_start_at_aligns_the_measurement_window(relay):
    """Several generators measure the same window: nothing is sent before start_at."""
    server, url = relay
    arrivals = counting(server, 'OPTIONS')
    start_at = time.time() + 0.6
    result = await run_bench(BenchConfig(url, clients=2, rate=50, duration=0.4, scenario='options',
                                         start_at=start_at))
    assert result.sent == 20 and dict(result.answered) == {200: 20}
    first_wall = time.time() - (time.monotonic() - arrivals[0])
    assert first_wall >= start_at - 0.01
