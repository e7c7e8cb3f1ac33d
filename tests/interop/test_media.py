"""Calls with WebRTC media between Python user agents (``aiosip-ws answer`` and ``aiosip-ws
call``, aiortc) through ``aiosip-ws serve``, all in one private network namespace whose
loopback is the only interface (ICE host candidates on 127.0.0.2).

What is proven on the wire: the SDP offer/answer with every candidate gathered first, the
media itself (a 440 Hz tone recorded at the other end, echoed back), DTMF as SIP INFO,
hold and unhold by re-INVITE from either side, RFC 3264 late offer (offer in the 200,
answer in the ACK), BYE from either side, CANCEL of a ringing call, Digest through
``serve --users``, and the exit statuses of ``call``.
"""
from __future__ import annotations

import asyncio
import importlib.util
import shutil
import signal

import pytest

from tests.interop.conftest import _unavailable
from tests.support import audio
from tests.support.cli import PRIVATE_NETWORK, run_aiosip_ws
from tests.support.media import LOOPBACK, CommandAgent, addresses

pytestmark = pytest.mark.interop

BOT = 'sip:bob@example.com'
CALLER = 'sip:alice@example.com'


def media_available() -> None:
    if importlib.util.find_spec('aiortc') is None:
        _unavailable('aiortc', RuntimeError('pip install "aiosip-ws[media]"'))
    if not (shutil.which('unshare') and shutil.which('nsenter') and shutil.which('ip')):
        _unavailable('a private network namespace',
                     RuntimeError('unshare, nsenter and ip (util-linux, iproute2) are needed'))


@pytest.fixture
def serve_alone(serve_process):
    """serve in a network namespace of its own: (its ws:// URL, its process)."""
    media_available()
    process = serve_process('--listen', 'ws://127.0.0.1:0/', prefix=PRIVATE_NETWORK)
    return process.urls[0], process


async def start_bot(url, process, *args, name='bot'):
    bot = await CommandAgent('answer', url, '--aor', BOT, *args, netns_pid=process.proc.pid,
                             name=name).start()
    AGENTS.append(bot)
    await bot.wait_event('registered', timeout=15)
    return bot


def caller(url, process, *args, name='caller'):
    agent = CommandAgent('call', url, '--aor', CALLER, '--to', BOT, *args,
                         netns_pid=process.proc.pid, name=name)
    AGENTS.append(agent)
    return agent


#: the agents a test started: each must have ended clean (see the autouse fixture)
AGENTS: list[CommandAgent] = []


@pytest.fixture(autouse=True)
def agents_end_clean():
    AGENTS.clear()
    yield
    for agent in AGENTS:
        if agent.proc is not None and agent.proc.returncode is not None:
            agent.assert_clean()
    AGENTS.clear()


def assert_tone(path, frequency, seconds, *, slack=0.8):
    sound = audio.read(path)
    assert abs(sound.seconds - seconds) <= slack, (path, sound.seconds, seconds)
    assert sound.rms() > 0.02, '%s is silent' % path
    assert abs(sound.dominant() - frequency) <= 10, (path, sound.dominant())
    return sound


async def test_a_call_to_an_echo_bot_carries_tone_dtmf_and_hold_both_ways(serve_alone, tmp_path):
    url, process = serve_alone
    bot = await start_bot(url, process, '--echo', '--record', str(tmp_path / 'bot{n}.wav'))
    try:
        async with caller(url, process, '--tone', '440', '--record', str(tmp_path / 'heard.wav'),
                          '--duration', '4', '--dtmf', '12#', '--hold', '1.5:1') as alice:
            answered = await alice.wait_event('answered', timeout=20)
            assert await alice.wait(30) == 0, alice._describe()
        assert all(a.startswith(LOOPBACK) for a in addresses(answered)) and addresses(answered)
        ended = [e for e in alice.events if e['event'] == 'ended']
        assert ended == [{**ended[0], 'cause': 'bye', 'originator': 'local', 'status': 200}]
        assert [e['originator'] for e in alice.events if e['event'] in ('hold', 'unhold')] == [
            'local', 'local']

        assert (await bot.wait_event('incoming', timeout=5))['from'] == CALLER
        digits = [(await bot.wait_event('dtmf', timeout=5))['digit'] for _ in range(3)]
        assert digits == ['1', '2', '#']
        assert (await bot.wait_event('hold', timeout=5))['originator'] == 'remote'
        assert (await bot.wait_event('unhold', timeout=5))['originator'] == 'remote'
        bye = await bot.wait_event('ended', timeout=10)
        assert (bye['cause'], bye['originator']) == ('bye', 'remote')
    finally:
        assert await bot.stop() == 0, bot._describe()
    # the bot heard the caller's 440 Hz for the whole call (on hold it still receives); the
    # caller heard it back except for the second on hold, when the bot sends nothing
    assert_tone(tmp_path / 'bot1.wav', 440, 4.0)
    assert_tone(tmp_path / 'heard.wav', 440, 3.0)


async def test_late_offer_and_the_bot_hanging_up(serve_alone, tmp_path):
    """INVITE without SDP: the bot's offer in the 200, the caller's answer in the ACK; the
    bot plays 880 Hz and hangs up after two seconds; the caller exits 0 (ended by BYE)."""
    url, process = serve_alone
    bot = await start_bot(url, process, '--tone', '880', '--duration', '2', '--calls', '1')
    async with caller(url, process, '--late-offer', '--record', str(tmp_path / 'heard.wav')) as alice:
        answered = await alice.wait_event('answered', timeout=20)
        ended = await alice.wait_event('ended', timeout=10)
        assert await alice.wait(10) == 0, alice._describe()
    assert (ended['cause'], ended['originator']) == ('bye', 'remote')
    assert all(a.startswith(LOOPBACK) for a in addresses(answered))
    assert (await bot.wait_event('ended', timeout=5))['originator'] == 'local'
    assert await bot.wait(10) == 0, bot._describe()             # --calls 1: done
    assert_tone(tmp_path / 'heard.wav', 880, 2.0)


async def test_a_ringing_call_is_cancelled_and_a_missing_callee_fails(serve_alone):
    url, process = serve_alone
    bot = await start_bot(url, process, '--tone', '440', '--ring', '20')
    try:
        async with caller(url, process, '--ring-timeout', '1.5') as alice:
            assert (await alice.wait_event('ringing', timeout=10))['status'] == 180
            assert await alice.wait(15) == 1
        assert 'cancelled' in '\n'.join(alice.stderr)
        assert (await alice.wait_event('failed', timeout=1))['status'] == 487
        cancelled = await bot.wait_event('ended', timeout=10)
        assert cancelled['cause'] == 'cancelled'
    finally:
        assert await bot.stop() == 0, bot._describe()
    nobody = CommandAgent('call', url, '--aor', CALLER, '--to', 'sip:nobody@example.com',
                          netns_pid=process.proc.pid, name='to nobody')
    AGENTS.append(nobody)
    async with nobody:
        assert await nobody.wait(15) == 1
    assert (await nobody.wait_event('failed', timeout=1))['status'] == 404
    assert '404' in '\n'.join(nobody.stderr)


async def test_an_interrupted_call_cancels_its_invite_and_exits_130(serve_alone):
    url, process = serve_alone
    bot = await start_bot(url, process, '--tone', '440', '--ring', '20')
    try:
        async with caller(url, process) as alice:
            assert (await alice.wait_event('ringing', timeout=10))['status'] == 180
            alice.proc.send_signal(signal.SIGINT)
            assert await alice.wait(10) == 130, alice._describe()
            await alice.wait_event('interrupted', timeout=1)
        assert (await bot.wait_event('ended', timeout=10))['cause'] == 'cancelled'
    finally:
        assert await bot.stop() == 0, bot._describe()


async def test_digest_through_serve_users_and_hold_from_the_bot(serve_process, users_file,
                                                                 tmp_path):
    """serve --users challenges the REGISTER (401) and the INVITE (407); both commands
    answer with their passwords.  The bot puts the caller on hold and takes it off."""
    media_available()
    process = serve_process('--listen', 'ws://127.0.0.1:0/', '--users', str(users_file),
                            '--realm', 'example.com', prefix=PRIVATE_NETWORK)
    url = process.urls[0]
    bot = await start_bot(url, process, '--password', 'secret', '--tone', '440',
                          '--hold', '0.5:1', '--record', str(tmp_path / 'bot.wav'))
    try:
        async with caller(url, process, '--password', 'secret', '--tone', '660',
                          '--duration', '3') as alice:
            await alice.wait_event('answered', timeout=20)
            assert (await alice.wait_event('hold', timeout=5))['originator'] == 'remote'
            assert (await alice.wait_event('unhold', timeout=5))['originator'] == 'remote'
            assert await alice.wait(15) == 0, alice._describe()
        assert (await bot.wait_event('hold', timeout=1))['originator'] == 'local'
    finally:
        assert await bot.stop() == 0, bot._describe()
    assert_tone(tmp_path / 'bot.wav', 660, 2.0)       # on hold for one second of three


async def test_call_usage_errors_exit_2_before_any_network():
    done = await asyncio.to_thread(run_aiosip_ws, 'call', 'ws://127.0.0.1:9/', '--aor', CALLER,
                                   '--to', BOT, '--hold', 'soon')
    assert done.returncode == 2 and '--hold takes AFTER:LENGTH' in done.stderr
    done = await asyncio.to_thread(run_aiosip_ws, 'call', 'ws://127.0.0.1:9/', '--aor', CALLER,
                                   '--to', BOT, '--codec', 'speex')
    assert done.returncode == 2 and 'unknown codec(s) speex' in done.stderr
    done = await asyncio.to_thread(run_aiosip_ws, 'answer', 'ws://127.0.0.1:9/', '--aor', BOT,
                                   '--tone', '440', '--echo')
    assert done.returncode == 2 and 'not allowed with argument' in done.stderr
