"""RFC 7118 §8.2's call with audio: Alice in Chromium (JsSIP, WebRTC: ICE, DTLS-SRTP,
rtcp-mux) and Bob on Debian's baresip (a plain SIP phone on UDP: G.711 over RTP/AVP),
through ``aiosip-ws serve --rtpengine`` and Debian's rtpengine-daemon, all in one private
network namespace so that signalling and media stay on its loopback.

Chromium's fake microphone plays 440 Hz, baresip plays 880 Hz; the page measures what it
hears with WebAudio, baresip records what it hears (sndfile) and the recording's dominant
frequency is checked: audio both ways, in both directions of the call, with BYE from
either side; CANCEL while ringing, a busy phone (486), a SIP.js callee (which registers
without ``+sip.ice``), rtpengine gone before a call (503) and during one (the call loses
its audio, BYE still passes).  After each call rtpengine holds no session of its own
within 2 s."""
from __future__ import annotations

import asyncio
import shutil

import pytest

from tests.interop.conftest import _unavailable
from tests.support import audio
from tests.support.baresip import Baresip, baresip_binary
from tests.support.browser import Browser, chromium_binary, ensure_bundles
from tests.support.cli import PRIVATE_NETWORK
from tests.support.rtpengine import own_sessions, rtpengine, rtpengine_binary, stop_rtpengine

pytestmark = pytest.mark.interop

ALICE = 'sip:alice@example.com'
BOB = 'sip:bob@example.com'
#: ports inside the private network namespace (nothing else runs there)
SERVE_UDP, NG_PORT = 5060, 2223


class Setup:
    def __init__(self, browser, url, process, phone, ng, tmp):
        self.browser, self.url, self.process, self.phone, self.ng, self.tmp = (
            browser, url, process, phone, ng, tmp)

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    async def no_sessions(self, within: float = 2.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (count := await asyncio.to_thread(own_sessions, self.ng, self.pid)) != 0:
            assert loop.time() < deadline, 'rtpengine still holds %d session(s)' % count
            await asyncio.sleep(0.1)


def available() -> None:
    try:
        chromium_binary()
        ensure_bundles()
        baresip_binary()
        rtpengine_binary()
    except RuntimeError as exc:
        _unavailable('browser, baresip and rtpengine', exc)
    if not (shutil.which('unshare') and shutil.which('nsenter')):
        _unavailable('browser, baresip and rtpengine', RuntimeError('unshare and nsenter'))


@pytest.fixture
async def setup(request, tmp_path, serve_process, node_agents_ready):
    """serve (with ``request.param``'s extra options, if any), rtpengine, Chromium and
    baresip registered as bob."""
    available()
    microphone = audio.write_tone(tmp_path / 'browser-440.wav', 440, 20.0)
    phone_tone = audio.write_tone(tmp_path / 'phone-880.wav', 880, 30.0, rate=8000)
    process = serve_process('--listen', 'ws://127.0.0.1:0/', '--listen',
                            'udp://127.0.0.1:%d' % SERVE_UDP, '--rtpengine',
                            'udp://127.0.0.1:%d' % NG_PORT, '--rtpengine-timeout', '1',
                            '--log-level', 'DEBUG', *getattr(request, 'param', ()),
                            prefix=PRIVATE_NETWORK)
    url = next(u for u in process.urls if u.startswith('ws:'))
    with rtpengine(tmp_path, netns_pid=process.proc.pid, port=NG_PORT) as ng:
        browser = Browser(tmp_path / 'chromium', netns_pid=process.proc.pid,
                          microphone=microphone)
        try:
            await browser.start()
        except RuntimeError as exc:
            _unavailable('chromium', exc)
        phone = Baresip(tmp_path / 'baresip', user='bob', domain='example.com',
                        proxy='127.0.0.1:%d' % SERVE_UDP, tone=phone_tone,
                        netns_pid=process.proc.pid)
        try:
            await phone.start()
            await phone.registered()
            yield Setup(browser, url, process, phone, ng, tmp_path)
        finally:
            await phone.stop()
            await browser.close()


async def heard_by_page(page, hz: float) -> None:
    await page.wait_event('ice', timeout=15, consume=False,
                          predicate=lambda ev: ev['state'] in ('connected', 'completed'))
    await asyncio.sleep(1.5)                              # the jitter buffer fills
    heard = await page.run('listen')
    assert heard is not None and abs(heard - hz) <= 15, heard


def heard_by_phone(phone, hz: float) -> None:
    sound = audio.read(phone.recording())
    assert sound.seconds > 1.0, sound.seconds
    heard = sound.dominant(start=sound.seconds - 1.0, length=0.5)
    assert abs(heard - hz) <= 15, heard


async def alice_calls_the_phone(setup):
    """A JsSIP page (alice) calls bob's phone, which answers: the page, its call up."""
    alice = await setup.browser.agent('jssip', url=setup.url, aor=ALICE, name='alice')
    await alice.call(BOB)
    await setup.phone.wait_event('CALL_INCOMING', timeout=10)
    await setup.phone.answer()
    await alice.wait_event('confirmed', timeout=10)
    return alice


async def talked(setup, page, *, page_hangs_up: bool) -> None:
    """An answered call between ``page`` and the phone: each hears the other, one hangs
    up, and rtpengine holds nothing afterwards."""
    await setup.phone.wait_event('CALL_ESTABLISHED', timeout=10)
    await heard_by_page(page, 880)
    sdps = await page.run('sdps')
    assert 'a=fingerprint:' in sdps['remote'] and 'UDP/TLS/RTP/SAVPF' in sdps['remote']
    if page_hangs_up:
        await page.hangup()
        await setup.phone.wait_event('CALL_CLOSED', timeout=10)
    else:
        await setup.phone.hangup()
        await page.wait_event('ended', timeout=10)
    heard_by_phone(setup.phone, 440)
    await setup.no_sessions()


async def test_a_browser_calls_a_phone_audio_both_ways_the_phone_hangs_up(setup):
    alice = await alice_calls_the_phone(setup)
    await talked(setup, alice, page_hangs_up=False)


async def test_a_phone_calls_a_browser_audio_both_ways_the_browser_hangs_up(setup):
    alice = await setup.browser.agent('jssip', url=setup.url, aor=ALICE, name='alice')
    assert (await alice.register())['status'] == 200
    await setup.phone.dial(ALICE)
    await alice.wait_event('incomingCall', timeout=10)
    await alice.answer()
    await talked(setup, alice, page_hangs_up=True)


async def test_cancel_while_ringing_and_a_busy_phone(setup):
    alice = await setup.browser.agent('jssip', url=setup.url, aor=ALICE, name='alice')
    await alice.call(BOB)
    await setup.phone.wait_event('CALL_INCOMING', timeout=10)
    assert (await alice.wait_event('progress', timeout=10))['status'] == 180
    await alice.hangup()                                             # CANCEL
    failed = await alice.wait_event('failed', timeout=10)
    assert failed['originator'] == 'local'
    await setup.phone.wait_event('CALL_CLOSED', timeout=10)
    await setup.no_sessions()

    await alice.call(BOB)
    await setup.phone.wait_event('CALL_INCOMING', timeout=10)
    await setup.phone.hangup()                                       # busy: 486
    failed = await alice.wait_event('failed', timeout=10)
    assert failed['status'] == 486, failed
    await setup.no_sessions()


async def test_a_phone_calls_a_sipjs_page_which_registers_without_sip_ice(setup):
    carol = await setup.browser.agent('sipjs', url=setup.url, aor='sip:carol@example.com',
                                      name='carol')
    await carol.register()
    await setup.phone.dial('sip:carol@example.com')
    await carol.wait_event('incomingCall', timeout=10)
    await carol.answer()
    await carol.wait_event('confirmed', timeout=10)
    await talked(setup, carol, page_hangs_up=False)


async def test_a_late_offer_from_a_sipjs_page_to_the_phone(setup):
    """SIP.js's INVITE without SDP: baresip offers plain RTP in its 200, serve has rtpengine
    make it WebRTC for the page, and the page's answer in the ACK plain for the phone."""
    carol = await setup.browser.agent('sipjs', url=setup.url, aor='sip:carol@example.com',
                                      name='carol')
    await carol.run('call', BOB, True)
    await setup.phone.wait_event('CALL_INCOMING', timeout=10)
    await setup.phone.answer()
    await carol.wait_event('confirmed', timeout=10)
    assert (await carol.run('sdps'))['localType'] == 'answer'   # it answered the phone's offer
    await talked(setup, carol, page_hangs_up=True)


async def test_rtpengine_gone_during_a_call_and_before_the_next(setup):
    alice = await alice_calls_the_phone(setup)
    await heard_by_page(alice, 880)
    stop_rtpengine(setup.ng)
    await asyncio.sleep(0.5)
    before = (await alice.run('stats'))['received']
    await asyncio.sleep(1.0)
    assert (await alice.run('stats'))['received'] == before          # the call lost its audio
    await alice.hangup()                                             # BYE still passes
    await setup.phone.wait_event('CALL_CLOSED', timeout=10)
    await alice.call(BOB)                                             # no relay: 503
    failed = await alice.wait_event('failed', timeout=10)
    assert failed['status'] == 503, failed
    assert not [e for e in setup.phone.events if e['event'] == 'CALL_INCOMING'][1:]


async def test_a_call_forked_to_a_phone_and_a_browser_of_one_user(setup):
    """bob is the phone and a JsSIP page at once: the branch to the phone is anchored, the
    one to his page passes SDP through.  Answered on the phone, alice and the phone hear
    each other; answered on the page, alice and the page hear each other directly and
    rtpengine holds nothing (the phone's branch offer said DTLS-reverse=passive: rtpengine
    never started DTLS towards alice)."""
    alice = await setup.browser.agent('jssip', url=setup.url, aor=ALICE, name='alice')
    desk = await setup.browser.agent('jssip', url=setup.url, aor=BOB, name='bob-page')
    assert (await desk.register())['status'] == 200

    await alice.call(BOB)
    await setup.phone.wait_event('CALL_INCOMING', timeout=10)
    await desk.wait_event('incomingCall', timeout=10)
    await setup.phone.answer()
    await alice.wait_event('confirmed', timeout=10)
    failed = await desk.wait_event('failed', timeout=10)          # serve's CANCEL
    assert 'cause=200' in (failed['reason'] or ''), failed
    await talked(setup, alice, page_hangs_up=True)

    await alice.call(BOB)
    await setup.phone.wait_event('CALL_INCOMING', timeout=10)
    await desk.wait_event('incomingCall', timeout=10)
    await desk.answer()
    await alice.wait_event('confirmed', timeout=10)
    await setup.phone.wait_event('CALL_CLOSED', timeout=10)        # its branch CANCELled
    await setup.no_sessions()                                      # nothing anchored now
    await heard_by_page(alice, 440)                                # the page's microphone
    await alice.hangup()
    await desk.wait_event('ended', timeout=10)


async def flowing(page, what: str, *, expect: bool) -> None:
    """Whether RTP ``what`` (received, sent) still moves on the page's call over a second."""
    await asyncio.sleep(0.5)                                  # the re-INVITE took effect
    before = (await page.run('stats'))[what]
    await asyncio.sleep(1.0)
    after = (await page.run('stats'))[what]
    assert (after > before) is expect, (what, before, after)


async def test_hold_and_unhold_from_either_side(setup):
    """Each hold is a re-INVITE whose offer and answer go through rtpengine: the held
    party's audio stops and comes back on unhold, from the browser and from the phone."""
    alice = await alice_calls_the_phone(setup)
    await heard_by_page(alice, 880)
    await alice.run('hold')                           # alice: sendonly, bob: recvonly
    assert (await alice.wait_event('hold', timeout=10))['originator'] == 'local'
    await flowing(alice, 'received', expect=False)
    await alice.run('unhold')
    await alice.wait_event('unhold', timeout=10)
    await flowing(alice, 'received', expect=True)
    await heard_by_page(alice, 880)

    await setup.phone.command('hold')                 # bob: sendonly, alice: recvonly
    assert (await alice.wait_event('hold', timeout=10))['originator'] == 'remote'
    await flowing(alice, 'sent', expect=False)
    await setup.phone.command('resume')
    await alice.wait_event('unhold', timeout=10)
    await flowing(alice, 'sent', expect=True)
    await alice.hangup()
    await setup.phone.wait_event('CALL_CLOSED', timeout=10)
    heard_by_phone(setup.phone, 440)
    await setup.no_sessions()


async def test_video_offered_to_the_phone_and_dtmf_in_rtp(setup):
    """A browser offering audio and video to a phone without video: the phone refuses the
    video stream (port 0), the audio flows both ways.  RFC 4733 telephone-events from a
    SIP.js page (RTCDTMFSender, not SIP INFO) reach the phone through rtpengine."""
    alice = await setup.browser.agent('jssip', url=setup.url, aor=ALICE, name='alice')
    await alice.run('call', BOB, True)
    await setup.phone.wait_event('CALL_INCOMING', timeout=10)
    await setup.phone.answer()
    await alice.wait_event('confirmed', timeout=10)
    sdps = await alice.run('sdps')
    assert 'm=video ' in sdps['local'] and 'm=video 0 ' in sdps['remote']
    await talked(setup, alice, page_hangs_up=True)

    carol = await setup.browser.agent('sipjs', url=setup.url, aor='sip:carol@example.com',
                                      name='carol')
    await carol.call(BOB)
    await setup.phone.wait_event('CALL_INCOMING', timeout=10)
    await setup.phone.answer()
    await carol.wait_event('confirmed', timeout=10)
    await setup.phone.wait_event('CALL_ESTABLISHED', timeout=10)
    await carol.wait_event('ice', timeout=15, consume=False,
                           predicate=lambda ev: ev['state'] in ('connected', 'completed'))
    await asyncio.sleep(0.5)
    await carol.run('dtmf', '5')
    digit = await setup.phone.wait_event('CALL_DTMF_START', timeout=10)
    assert digit['param'] == '5', digit
    await carol.hangup()
    await setup.phone.wait_event('CALL_CLOSED', timeout=10)
    await setup.no_sessions()


@pytest.mark.parametrize('setup', [('--media-relay', 'always')], indirect=True)
async def test_browser_to_browser_video_with_the_relay_always_on(setup):
    """Two browsers with audio and video, ``--media-relay always``: rtpengine relays both
    streams (Chromium bundles them on one port; rtpengine takes the BUNDLE apart and puts
    it together again), and each page decodes the other's video frames."""
    alice = await setup.browser.agent('jssip', url=setup.url, aor=ALICE, name='alice')
    carol = await setup.browser.agent('jssip', url=setup.url, aor='sip:carol@example.com',
                                      name='carol')
    assert (await carol.register())['status'] == 200
    await alice.run('call', 'sip:carol@example.com', True)
    await carol.wait_event('incomingCall', timeout=10)
    await carol.run('answer', True)
    await alice.wait_event('confirmed', timeout=10)
    assert await asyncio.to_thread(own_sessions, setup.ng, setup.pid) == 1
    for page in (alice, carol):
        await page.wait_event('ice', timeout=15, consume=False,
                              predicate=lambda ev: ev['state'] in ('connected', 'completed'))
    await asyncio.sleep(2.0)
    for page in (alice, carol):
        stats = await page.run('stats')
        assert stats['framesDecoded'] > 10 and stats['received'] > 10, stats
        remote = (await page.run('sdps'))['remote']
        assert 'm=video ' in remote and 'a=candidate' in remote
    await alice.hangup()
    await carol.wait_event('ended', timeout=10)
    await setup.no_sessions()


async def test_dtmf_in_rtp_from_the_phone_reaches_the_browser(setup):
    """baresip's RFC 4733 telephone-events (``sndcode``) reach the page through rtpengine:
    the page counts the RTP it receives by payload type (encoded insertable streams), and
    the telephone-event type its SDP says appears beside the audio's."""
    alice = await setup.browser.agent('jssip', url=setup.url, aor=ALICE, name='alice')
    assert (await alice.register())['status'] == 200
    await setup.phone.dial(ALICE)
    await alice.wait_event('incomingCall', timeout=10)
    await alice.run('answer', False, True)
    await setup.phone.wait_event('CALL_ESTABLISHED', timeout=10)
    await heard_by_page(alice, 880)
    remote = (await alice.run('sdps'))['remote']
    events = [line.split()[0].split(':')[1] for line in remote.splitlines()
              if 'telephone-event/8000' in line]
    assert events, remote
    before = (await alice.run('payloadTypes')).get(events[0], 0)
    for digit in '123':
        await setup.phone.command('sndcode', digit)
        await asyncio.sleep(0.3)
    await asyncio.sleep(0.5)
    counted = await alice.run('payloadTypes')
    assert counted.get(events[0], 0) > before, (counted, events)
    await alice.hangup()
    await setup.phone.wait_event('CALL_CLOSED', timeout=10)
    await setup.no_sessions()
