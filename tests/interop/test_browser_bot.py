"""A Python voice bot (``aiosip-ws answer`` / ``aiosip-ws call``, aiortc) and JsSIP in
headless Chromium, through ``aiosip-ws serve``, all in one private network namespace.

Chromium's fake microphone plays a 440 Hz WAV; the bot records it and the recording's
dominant frequency and length are checked.  The bot plays 880 Hz, and the page measures
the remote stream with a WebAudio analyser.  DTMF goes as SIP INFO both ways (JsSIP's
``sendDTMF`` default), hold and unhold by re-INVITE both ways, BYE from either side, and
every ICE candidate in both SDPs is on loopback.
"""
from __future__ import annotations

import asyncio

import pytest

from aiosip_ws.core import sdp
from tests.interop.conftest import _unavailable
from tests.interop.test_media import BOT, CALLER, assert_tone, media_available, start_bot
from tests.support import audio
from tests.support.browser import Browser, chromium_binary, ensure_bundles
from tests.support.cli import PRIVATE_NETWORK
from tests.support.media import LOOPBACK, CommandAgent, addresses

pytestmark = pytest.mark.interop


@pytest.fixture
async def chromium_and_serve(tmp_path, serve_process, node_agents_ready):
    media_available()
    try:
        chromium_binary()
        ensure_bundles()
    except RuntimeError as exc:
        _unavailable('browser agents', exc)
    microphone = audio.write_tone(tmp_path / 'microphone-440.wav', 440, 2.0)
    process = serve_process('--listen', 'ws://127.0.0.1:0/', prefix=PRIVATE_NETWORK)
    browser = Browser(tmp_path / 'chromium', netns_pid=process.proc.pid, microphone=microphone)
    try:
        await browser.start()
    except RuntimeError as exc:
        _unavailable('chromium', exc)
    try:
        yield browser, process.urls[0], process
    finally:
        await browser.close()


def assert_loopback_only(*sdps: str) -> None:
    found = [c.address for text in sdps for c in sdp.candidates(text)]
    assert found and all(address.startswith(LOOPBACK) for address in found), found


async def connected(page) -> None:
    await page.wait_event('ice', timeout=15,
                          predicate=lambda ev: ev['state'] in ('connected', 'completed'))


async def test_jssip_calls_the_bot(chromium_and_serve, tmp_path):
    browser, url, process = chromium_and_serve
    bot = await start_bot(url, process, '--tone', '880', '--record', str(tmp_path / 'bot.wav'))
    try:
        alice = await browser.agent('jssip', url=url, aor=CALLER, name='alice')
        await alice.call(BOT)
        assert (await alice.wait_event('progress', timeout=15))['status'] == 180
        await alice.wait_event('confirmed', timeout=20)
        answered = await bot.wait_event('answered', timeout=5)
        await connected(alice)
        sdps = await alice.run('sdps')
        assert_loopback_only(sdps['local'], sdps['remote'])
        assert all(a.startswith(LOOPBACK) for a in addresses(answered))
        await asyncio.sleep(1.0)                        # let the jitter buffer fill
        heard = await alice.run('listen')
        assert heard is not None and abs(heard - 880) <= 10, heard

        await alice.run('dtmf', '5')
        dtmf = await bot.wait_event('dtmf', timeout=5)
        assert dtmf['digit'] == '5'
        await alice.run('hold')
        assert (await bot.wait_event('hold', timeout=10))['originator'] == 'remote'
        assert (await alice.wait_event('hold', timeout=5))['originator'] == 'local'
        await alice.run('unhold')
        assert (await bot.wait_event('unhold', timeout=10))['originator'] == 'remote'
        await asyncio.sleep(1.0)
        await alice.hangup()
        ended = await bot.wait_event('ended', timeout=10)
        assert (ended['cause'], ended['originator']) == ('bye', 'remote')
        assert (await alice.wait_event('ended', timeout=5))['originator'] == 'local'
    finally:
        assert await bot.stop() == 0, bot._describe()
    bot.assert_clean()
    assert_tone(tmp_path / 'bot.wav', 440, ended['time'] - answered['time'])


async def test_the_bot_calls_jssip(chromium_and_serve):
    browser, url, process = chromium_and_serve
    alice = await browser.agent('jssip', url=url, aor=CALLER, name='alice')
    assert (await alice.register())['status'] == 200
    bot = CommandAgent('call', url, '--aor', BOT, '--to', CALLER, '--tone', '880',
                       '--duration', '5', '--dtmf', '7', '--hold', '3:1',
                       netns_pid=process.proc.pid, name='bot calling')
    async with bot:
        await alice.wait_event('incomingCall', timeout=15)
        await alice.answer()
        await alice.wait_event('confirmed', timeout=15)
        answered = await bot.wait_event('answered', timeout=10)
        assert all(a.startswith(LOOPBACK) for a in addresses(answered))
        await connected(alice)
        assert (await alice.wait_event('dtmf', timeout=5))['tone'] == '7'
        await asyncio.sleep(0.8)
        heard = await alice.run('listen')
        assert heard is not None and abs(heard - 880) <= 10, heard
        assert (await alice.wait_event('hold', timeout=10))['originator'] == 'remote'
        assert (await alice.wait_event('unhold', timeout=10))['originator'] == 'remote'
        assert (await alice.wait_event('ended', timeout=10))['originator'] == 'remote'
        assert await bot.wait(10) == 0, bot._describe()
    assert [e['event'] for e in bot.events if e['event'] in ('hold', 'unhold', 'ended')] == [
        'hold', 'unhold', 'ended']
    bot.assert_clean()
