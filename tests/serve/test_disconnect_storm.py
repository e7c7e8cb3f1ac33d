"""A disconnect storm: N registered clients dropped at once while another client REGISTERs.

The N clients live in a child process (tests/support/storm.py: one asyncio Protocol each,
no aiosip, no websockets), so that each process holds N sockets and the storm reaches the
in-process RelayServer as it would from the network.  The REGISTER sent in the middle of
the storm must get its 200 within 1 s of the moment the drop began, and every binding of
the dropped clients must go.

N is 5,000, or what the file descriptor limit allows; AIOSIP_WS_STORM_CLIENTS sets
another N.  The cost of a dropped connection is linear (no path in the relay or the
transport grows with the number of connections), but the REGISTER is answered only after
the loop has torn down every connection dropped before it: about 65-170 us each on
websockets 15-17 on a 2-core machine, most of it in websockets and asyncio.  So 5,000
clients are answered in 0.3-0.65 s; 10,000 in 0.1-1.7 s, often over the second.
"""
from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from aiosip_ws.serve.relay import RelayServer
from tests.support.websocket import RawWebSocket

REPO = Path(__file__).resolve().parent.parent.parent
HOST = '127.0.0.1'
#: source addresses of the storm's clients (127.0.0.2 ...): ephemeral ports to spare
SOURCES = 8
WANTED = int(os.environ.get('AIOSIP_WS_STORM_CLIENTS', '5000'))

PROBE_REGISTER = ('REGISTER sip:127.0.0.1 SIP/2.0\r\n'
                  'Via: SIP/2.0/WS probe.invalid;branch=z9hG4bKprobe%d\r\n'
                  'Max-Forwards: 70\r\nFrom: <sip:probe@example.com>;tag=p\r\n'
                  'To: <sip:probe@example.com>\r\nCall-ID: storm-probe\r\nCSeq: %d REGISTER\r\n'
                  'Contact: <sip:probe@probe.invalid;transport=ws>\r\nExpires: 600\r\n'
                  'Content-Length: 0\r\n\r\n')


@dataclass
class StormTimes:
    clients: int
    setup: float          # the N clients connected and registered (the child's clock)
    drop: float           # the drop began -> every dropped binding and connection gone
    register: float       # the drop began -> the probe's 200
    register_sent: float  # the probe's REGISTER sent -> its 200


def storm_size(wanted: int = WANTED) -> int:
    """``wanted``, or fewer when RLIMIT_NOFILE (its soft limit raised to the hard one here and
    in the child) cannot hold that many sockets and a margin."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    free = (soft if soft != resource.RLIM_INFINITY else 1 << 20) - len(os.listdir('/proc/self/fd'))
    return max(0, min(wanted, free - 500))


async def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def run_storm(count: int, *, on_drop: Callable[[bool], None] | None = None) -> StormTimes:
    """The storm against a new in-process RelayServer; ``on_drop(True)`` when the drop
    begins, ``on_drop(False)`` when it is over (for a profiler)."""
    relay = RelayServer()
    [listener] = await relay.start('ws://%s:0/' % HOST)
    child = await asyncio.create_subprocess_exec(
        sys.executable, '-m', 'tests.support.storm', HOST, str(listener.port), str(count),
        str(SOURCES), cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    probe = None
    try:
        ready = json.loads(await asyncio.wait_for(child.stdout.readline(), 120) or b'{}')
        assert ready.get('ready') == count, ready
        assert len(relay.registrar) == count and len(relay.connections) == count

        probe = await RawWebSocket.connect(HOST, listener.port)
        await probe.send_text(PROBE_REGISTER % (1, 1))
        assert (await probe.recv_text()).startswith('SIP/2.0 200 ')
        [probe_conn] = [c for c in relay.connections if c.remote_addr[0] == HOST]

        loop = asyncio.get_running_loop()
        if on_drop:
            on_drop(True)
        began = loop.time()
        child.stdin.write(b'drop\n')
        await child.stdin.drain()
        dropped = json.loads(await asyncio.wait_for(child.stdout.readline(), 30) or b'{}')
        assert dropped.get('dropped') == count, dropped
        sent = loop.time()
        await probe.send_text(PROBE_REGISTER % (2, 2))             # into the storm
        answer = await probe.recv_text(timeout=30)
        answered = loop.time()
        assert answer.startswith('SIP/2.0 200 '), answer

        def gone() -> bool:
            return relay.connections == {probe_conn} and len(relay.registrar) == 1
        assert await wait_for(gone, 60), (len(relay.connections), len(relay.registrar))
        cleaned = loop.time()
        if on_drop:
            on_drop(False)
        assert [b.aor for b in relay.registrar.bindings()] == ['sip:probe@example.com']
        assert set(relay._contacts) == {'probe.invalid'}
        assert not relay._pending
        return StormTimes(count, ready['setup'], cleaned - began, answered - began,
                          answered - sent)
    finally:
        if probe is not None:
            await probe.close()
        child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), 10)
        except asyncio.TimeoutError:
            child.kill()
            await child.wait()
        await relay.close()


async def test_a_register_in_a_disconnect_storm_gets_its_200_within_a_second():
    """N clients registered, all dropped at once (their transports aborted): a REGISTER
    sent in the storm is answered 200 within 1 s of the drop's start; the registrar, the
    Contact hosts and the connections then hold nothing of the dropped clients."""
    count = storm_size()
    if count < 1000:
        pytest.skip('RLIMIT_NOFILE leaves room for %d clients only' % count)
    started = time.perf_counter()
    times = await run_storm(count)
    collected = gc.collect()        # here, not in the middle of a later test that times itself
    print('disconnect storm: %r, %.1f s in all, %d objects collected'
          % (times, time.perf_counter() - started, collected))
    assert times.register < 1.0, times
