"""Calls through `aiosip-ws serve --users` between JsSIP and SIP.js running in Chromium,
with real WebRTC (fake microphone), serve and the browser alone in a private network
namespace so that signalling and media stay on its loopback.

RFC 3261 §16.6-16.7 and RFC 3326 as browsers see them: two JsSIP pages registered as one
user both get the MESSAGE and both ring; the one that answers gets the call, the other
sees serve's CANCEL with ``Reason: SIP;cause=200;text="Call completed elsewhere"``; ICE
connects between the caller and the answering page; BYE ends both.  SIP.js (with a
password) calls JsSIP and hangs up.
"""
from __future__ import annotations

import asyncio

import pytest

from tests.interop.conftest import _unavailable, answered_jssip_call, browser_beside_serve
from tests.support.browser import Browser, chromium_binary, ensure_bundles
from tests.support.cli import PRIVATE_NETWORK

pytestmark = pytest.mark.interop

BOB = 'sip:bob@example.com'
ALICE = 'sip:alice@example.com'


@pytest.fixture
async def browser_and_serve(tmp_path, serve_process, users_file, node_agents_ready):
    """serve (Digest, realm example.com) and Chromium in one private network namespace."""
    async with browser_beside_serve(tmp_path, serve_process, '--users', str(users_file),
                                    '--realm', 'example.com') as parts:
        yield parts


async def test_two_browsers_of_one_user_ring_and_the_one_that_answers_gets_the_call(
        browser_and_serve):
    browser, url, process = browser_and_serve
    alice = await browser.agent('jssip', url=url, aor=ALICE, password='secret', name='alice')
    desk = await browser.agent('jssip', url=url, aor=BOB, password='secret', name='bob-desk')
    phone = await browser.agent('jssip', url=url, aor=BOB, password='secret', name='bob-phone')
    for agent in (alice, desk, phone):
        assert (await agent.register())['status'] == 200      # after serve's 401

    await alice.message(BOB, 'two devices?')                  # 407, then forked to both
    assert (await desk.wait_event('message', timeout=10))['body'] == 'two devices?'
    assert (await phone.wait_event('message', timeout=10))['body'] == 'two devices?'
    assert (await alice.wait_event('messageSent', timeout=10))['status'] == 200

    await alice.call(BOB)                                     # the INVITE gets a 407 first
    await desk.wait_event('incomingCall', timeout=15)
    await phone.wait_event('incomingCall', timeout=15)
    assert (await alice.wait_event('progress', timeout=10))['status'] == 180
    await phone.answer()
    await alice.wait_event('confirmed', timeout=15)
    await phone.wait_event('confirmed', timeout=15)
    cancelled = await desk.wait_event('failed', timeout=10)
    assert cancelled['cause'] == 'Canceled' and cancelled['method'] == 'CANCEL'
    assert cancelled['reason'] == 'SIP;cause=200;text="Call completed elsewhere"'
    # media: the caller's ICE connects to the answering page, over loopback
    await alice.wait_event('ice', timeout=15,
                           predicate=lambda ev: ev['state'] in ('connected', 'completed'))

    await alice.hangup()                                      # BYE through serve's Record-Route
    assert (await phone.wait_event('ended', timeout=10))['originator'] == 'remote'
    assert (await alice.wait_event('ended', timeout=10))['originator'] == 'local'
    assert not [ev for ev in desk.events if ev['event'] in ('confirmed', 'ended')]
    code, _, err = await asyncio.get_running_loop().run_in_executor(None, process.stop)
    assert code == 0 and 'Traceback' not in err


async def packets(page, kind, *, more_than=0, timeout=10.0):
    """The page's RTP counter ``kind`` (received, sent) once it is above ``more_than``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        count = (await page.run('stats'))[kind]
        if count > more_than or loop.time() > deadline:
            return count
        await asyncio.sleep(0.2)


async def test_a_browser_call_carries_media_goes_on_hold_and_ends(browser_and_serve):
    """JsSIP to JsSIP: RTP flows both ways (getStats), stops towards the page that put
    the other on hold and flows again after unhold, BYE ends it; a second call cancelled
    while ringing ends both sides with Canceled."""
    browser, url, process = browser_and_serve
    alice, bob = await answered_jssip_call(browser, url)
    await bob.wait_event('confirmed', timeout=15)
    for page in (alice, bob):
        assert await packets(page, 'received', more_than=25) > 25, page.name

    await alice.run('hold')
    assert (await bob.wait_event('hold', timeout=10))['originator'] == 'remote'
    assert (await alice.wait_event('hold', timeout=10))['originator'] == 'local'
    await asyncio.sleep(0.5)                               # what was in flight arrives
    held = (await alice.run('stats'))['received']
    await asyncio.sleep(1.0)
    assert (await alice.run('stats'))['received'] - held <= 3     # bob sends nothing now
    await alice.run('unhold')
    assert (await bob.wait_event('unhold', timeout=10))['originator'] == 'remote'
    assert await packets(alice, 'received', more_than=held + 25) > held + 25

    await bob.hangup()
    assert (await alice.wait_event('ended', timeout=10))['originator'] == 'remote'
    assert (await bob.wait_event('ended', timeout=10))['originator'] == 'local'

    await alice.call(BOB)                                  # cancelled while it rings
    await bob.wait_event('incomingCall', timeout=15)
    assert (await alice.wait_event('progress', timeout=10))['status'] == 180
    await alice.hangup()
    mine = await alice.wait_event('failed', timeout=10)
    theirs = await bob.wait_event('failed', timeout=10)
    assert (mine['cause'], mine['originator']) == ('Canceled', 'local')
    assert (theirs['cause'], theirs['method']) == ('Canceled', 'CANCEL')
    code, _, err = await asyncio.get_running_loop().run_in_executor(None, process.stop)
    assert code == 0 and 'Traceback' not in err


async def test_sipjs_with_a_password_calls_jssip_and_hangs_up(browser_and_serve):
    browser, url, process = browser_and_serve
    bob = await browser.agent('sipjs', url=url, aor=BOB, password='secret', name='bob-sipjs')
    alice = await browser.agent('jssip', url=url, aor=ALICE, password='secret', name='alice')
    await bob.register()
    await alice.register()
    await bob.message(ALICE, 'from SIP.js')
    assert (await alice.wait_event('message', timeout=10))['body'] == 'from SIP.js'

    await bob.call(ALICE)
    await alice.wait_event('incomingCall', timeout=15)
    await alice.answer()
    await bob.wait_event('confirmed', timeout=15)
    await alice.wait_event('confirmed', timeout=15)
    await bob.wait_event('ice', timeout=15,
                         predicate=lambda ev: ev['state'] in ('connected', 'completed'))
    await bob.hangup()
    assert (await alice.wait_event('ended', timeout=10))['originator'] == 'remote'
    await bob.wait_event('ended', timeout=10)
    code, _, err = await asyncio.get_running_loop().run_in_executor(None, process.stop)
    assert code == 0 and 'Traceback' not in err


async def test_a_browser_call_between_two_serve_nodes_on_redis(tmp_path, serve_process,
                                                              node_agents_ready):
    """Redis, two ``serve --redis`` nodes and Chromium in one private network namespace:
    JsSIP on node one calls JsSIP on node two; the INVITE, its answer, the ACK and the
    BYE cross the nodes through Redis, and media flows between the pages."""
    try:
        chromium_binary()
        ensure_bundles()
    except RuntimeError as exc:
        _unavailable('browser agents', exc)
    from tests.support.redis import RedisServer
    try:
        redis = RedisServer(tmp_path / 'redis', prefix=PRIVATE_NETWORK).start()
    except (RuntimeError, OSError) as exc:
        _unavailable('redis-server', exc)
    inside = ('nsenter', '--net=/proc/%d/ns/net' % redis.proc.pid, '--')
    try:
        one, two = (serve_process('--listen', 'ws://127.0.0.1:0/', '--redis', redis.url,
                                  '--node-id', name, prefix=inside) for name in ('one', 'two'))
        async with Browser(tmp_path / 'chromium', netns_pid=redis.proc.pid) as browser:
            alice = await browser.agent('jssip', url=one.urls[0], aor=ALICE, name='alice@one')
            bob = await browser.agent('jssip', url=two.urls[0], aor=BOB, name='bob@two')
            await alice.register()
            await bob.register()
            await alice.call(BOB)
            await bob.wait_event('incomingCall', timeout=15)
            await bob.answer()
            await alice.wait_event('confirmed', timeout=15)
            await bob.wait_event('confirmed', timeout=15)          # the ACK crossed too
            await alice.wait_event('ice', timeout=15,
                                   predicate=lambda ev: ev['state'] in ('connected', 'completed'))
            await bob.hangup()                                      # BYE from node two
            assert (await alice.wait_event('ended', timeout=10))['originator'] == 'remote'
        for process in (one, two):
            code, _, err = await asyncio.get_running_loop().run_in_executor(None, process.stop)
            assert code == 0 and 'Traceback' not in err
    finally:
        redis.stop()
