"""serve's media options without a relay (aiosip_ws.serve.media): a call between a
browser (WebRTC SDP) and a phone on UDP (plain RTP) that nothing can anchor is warned of
once per burst and counted, or refused 488 with the Warning RFC 3261 §20.43 describes;
calls of one profile pass untouched; the flags and their checks (each error names the
option to change), the profile overrides by AOR, domain and CIDR."""
from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from websockets.asyncio.client import connect

from aiosip_ws.core.codec import make_response
from aiosip_ws.core.mediaflags import PLAIN, WEBRTC
from aiosip_ws.errors import ConfigurationError
from aiosip_ws.serve.config import ServeConfig
from aiosip_ws.serve.fork import MAX_BACKLOG
from aiosip_ws.serve.media import MISMATCH_WARNING, MediaSettings, ProfileRule
from aiosip_ws.serve.relay import RelayServer
from aiosip_ws.tools.cli import build_parser, serve_config
from tests.serve.test_bridge import bridged
from tests.support import doc_page
from tests.support.net import http_get
from tests.support.rtpengine import FakeRelay, arguments
from tests.support.sdp import BROWSER_OFFER, PHONE_OFFER
from tests.support.sip import recv, register_raw


def invite(host: str, call_id: str, body: str, user: str = 'bob') -> str:
    return ('INVITE sip:%s@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bK%s\r\n'
            'From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:%s@example.com>\r\n'
            'Call-ID: %s\r\nCSeq: 10 INVITE\r\nMax-Forwards: 70\r\n'
            'Contact: <sip:alice@%s;transport=ws>\r\nContent-Type: application/sdp\r\n\r\n%s'
            % (user, host, call_id, user, call_id, host, body))


@contextlib.asynccontextmanager
async def behind_fake_relay(answer, *, drop: int = 0):
    """serve anchoring every call (``always``) on a FakeRelay that answers as ``answer``
    says (after dropping ``drop`` datagrams); what :func:`bridged` yields (server, bob,
    alice, alice's Contact host), all closed at the end."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: FakeRelay(answer, drop=drop),
                                                       local_addr=('127.0.0.1', 0))
    url = 'udp://127.0.0.1:%d' % transport.get_extra_info('sockname')[1]
    try:
        async with bridged(RelayServer(media=MediaSettings(rtpengine=[url],
                                                           mode='always'))) as parts:
            yield parts
    finally:
        transport.close()


async def test_a_mismatched_call_is_warned_of_and_goes_on(caplog):
    async with bridged(RelayServer(media=MediaSettings())) as (server, bob, alice, host):
        listener = server.listeners[0]
        with caplog.at_level(logging.WARNING, logger='aiosip_ws.serve.media'):
            for n in range(3):
                await alice.send(invite(host, 'w-%d' % n, BROWSER_OFFER))
                assert (await recv(alice)).status == 100
                got = await bob.next()
                assert got.method == 'INVITE' and got.body == BROWSER_OFFER.encode()
                bob.send(make_response(got, 486, to_tag='b%d' % n))
                assert (await recv(alice)).status == 486
                assert (await bob.next()).method == 'ACK'
        lines = [r for r in caplog.records if 'without a media relay' in r.getMessage()]
        assert len(lines) == 1                  # rate-limited: one a minute
        assert 'a webrtc caller and a plain callee' in lines[0].getMessage()
        _, _, metrics = await http_get(listener.port, '/metrics')
        assert 'aiosip_ws_media_mismatch_total{action="warn"} 3.0' in metrics.decode()
        assert server.media.mismatches == 3 and not server.media.calls


async def test_a_mismatched_call_is_refused_with_a_warning_and_others_pass():
    async with bridged(RelayServer(media=MediaSettings(mismatch='refuse'))) as (
            server, bob, alice, host), connect(server.listeners[0].bound_url, subprotocols=['sip'],
                       proxy=None) as carol:
        await register_raw(carol, 'carol')
        await alice.send(invite(host, 'r-1', BROWSER_OFFER))
        refused = await recv(alice)
        assert refused.status == 488
        warning = refused.get('Warning')
        assert warning.startswith('399 ') and warning.endswith(' "%s"' % MISMATCH_WARNING)
        with pytest.raises(asyncio.TimeoutError):
            await bob.next(timeout=0.3)                      # the phone never rang
        # a plain offer to the phone, a WebRTC offer to another browser: untouched
        await alice.send(invite(host, 'r-2', PHONE_OFFER))
        assert (await recv(alice)).status == 100
        assert (await bob.next()).body == PHONE_OFFER.encode()
        await alice.send(invite(host, 'r-3', BROWSER_OFFER, user='carol'))
        assert (await recv(alice)).status == 100
        assert (await recv(carol)).body == BROWSER_OFFER.encode()


def test_the_media_flags_and_what_they_refuse():
    def config(*argv: str) -> ServeConfig:
        return serve_config(build_parser().parse_args(['serve', *argv]))
    got = config('--rtpengine', 'udp://127.0.0.1:2223', '--rtpengine', 'udp://[::1]:2223',
                 '--rtpengine-timeout', '2', '--media-relay', 'always', '--media-profile',
                 'pbx.example.com=webrtc', '--rtpengine-flags-plain',
                 'ICE=remove RTP/AVP rtcp-mux-demux replace-origin')
    settings = got.media_settings()
    assert settings.rtpengine == ['udp://127.0.0.1:2223', 'udp://[::1]:2223']
    assert settings.timeout == 2.0 and settings.relay_mode == 'always'
    assert settings.flags()[PLAIN] == {'ICE': 'remove', 'transport-protocol': 'RTP/AVP',
                                       'rtcp-mux': ['demux'], 'replace': ['origin']}
    assert settings.flags()[WEBRTC] is None                       # serve's own
    assert 'rtpengine = ["udp://127.0.0.1:2223", "udp://[::1]:2223"]' in got.to_toml()
    for argv, message in (
            (('--media-relay', 'always'), '--media-relay always needs --rtpengine'),
            (('--rtpengine', 'tcp://127.0.0.1:1'), '--rtpengine takes udp://HOST:PORT'),
            (('--media-profile', 'bob'), '--media-profile takes TARGET=webrtc'),
            (('--media-profile', 'sip:bob@example.com=sip'), 'TARGET=webrtc or TARGET=plain'),
            (('--rtpengine', 'udp://127.0.0.1:1', '--rtpengine-flags-webrtc',
              'ICE=force DTLS=passive'), 'must not say DTLS=passive'),
            (('--rtpengine', 'udp://127.0.0.1:1', '--rtpengine-retry', '0'),
             '--rtpengine-retry must be positive')):
        with pytest.raises(ConfigurationError, match=message.replace('+', r'\+')):
            config(*argv).validate()
    with pytest.raises(SystemExit):                                # argparse: not a choice
        config('--media-relay', 'sometimes')


def test_profile_overrides_by_aor_domain_and_network():
    aor = ProfileRule.parse('bob@example.com=webrtc')
    assert aor.kind == 'aor' and aor.matches('sip:bob@example.com', None)
    assert not aor.matches('sip:carol@example.com', None)
    domain = ProfileRule.parse('pbx.example.com=plain')
    assert domain.kind == 'domain' and domain.matches('sip:100@pbx.example.com', '192.0.2.1')
    network = ProfileRule.parse('10.0.0.0/8=plain')
    assert network.kind == 'network' and network.matches('sip:x@y', '10.1.2.3')
    assert not network.matches('sip:x@y', '192.0.2.1') and not network.matches('sip:x@y', None)


def test_the_commands_of_docs_calls_rst_are_the_tests_own():
    page = doc_page('calls.rst')
    [rtpengine] = [line.split() for line in page.splitlines()
                   if line.strip().startswith('rtpengine --')]
    assert rtpengine[1:] == arguments(2223, 30000, 30040)
    [serve] = [line.split() for line in page.splitlines()
               if line.strip().startswith('aiosip-ws serve') and '--rtpengine' in line]
    config = serve_config(build_parser().parse_args(serve[1:]))
    config.validate()
    assert config.media_settings().rtpengine == ['udp://127.0.0.1:2223']
    assert config.media_settings().relay_mode == 'auto'
    for info in ServeConfig.options():                  # every media option is described
        if info.name.startswith(('rtpengine', 'media_')):
            assert '``--%s' % info.flag_name in page, info.flag_name


async def test_a_cancel_while_the_offer_waits_for_the_relay():
    """The caller CANCELs while rtpengine has not answered the offer yet (its first copy
    lost; the ng client sends it again a second later): the caller gets 487 once the
    offer is back, the callee never rings, and the call is deleted on the relay."""
    commands = []

    def answer(command):
        commands.append(command['command'])
        return {'result': 'ok', 'sdp': PHONE_OFFER}
    async with behind_fake_relay(answer, drop=1) as (server, bob, alice, host):
        request = invite(host, 'c-1', BROWSER_OFFER)
        await alice.send(request)
        assert (await recv(alice)).status == 100
        await alice.send(request.split('\r\n\r\n')[0].replace('INVITE sip:', 'CANCEL sip:')
                         .replace('CSeq: 10 INVITE', 'CSeq: 10 CANCEL')
                         .replace('Content-Type: application/sdp\r\n', '') + '\r\n\r\n')
        assert (await recv(alice)).status == 200                    # the CANCEL's
        cancelled = await asyncio.wait_for(recv(alice), 5)
        assert cancelled.status == 487 and cancelled.cseq == (10, 'INVITE')
        with pytest.raises(asyncio.TimeoutError):
            await bob.next(timeout=0.3)                             # never rang
        for _ in range(20):
            if 'delete' in commands:
                break
            await asyncio.sleep(0.05)
        assert commands == ['offer', 'delete'] and not server.media.calls


async def test_provisionals_faster_than_the_relay_are_bounded_finals_never_dropped():
    """A callee that sends 40 183s with SDP while rtpengine takes a second to answer the
    first: a branch keeps at most MAX_BACKLOG responses waiting (the extra provisionals
    are dropped, one log line), and its 200 still reaches the caller, in order."""
    answers = []

    def answer(command):
        if command['command'] == 'answer':
            answers.append(command)
            if len(answers) == 1:
                return None                    # the first answer: silent, resent in 1 s
        return {'result': 'ok', 'sdp': BROWSER_OFFER if command['command'] == 'answer'
                else PHONE_OFFER}
    async with behind_fake_relay(answer) as (server, bob, alice, host):
        await alice.send(invite(host, 'b-1', BROWSER_OFFER))
        assert (await recv(alice)).status == 100
        to_bob = await bob.next()
        for _ in range(40):
            bob.send(make_response(to_bob, 183, to_tag='b', headers=[
                ('Content-Type', 'application/sdp')], body=PHONE_OFFER.encode()))
        bob.send(make_response(to_bob, 200, to_tag='b', headers=[
            ('Content-Type', 'application/sdp'), ('Contact', bob.contact)],
            body=PHONE_OFFER.encode()))
        statuses = []
        while not statuses or statuses[-1] < 200:
            statuses.append((await asyncio.wait_for(recv(alice), 10)).status)
        assert statuses[-1] == 200 and set(statuses[:-1]) == {183}
        assert len(statuses) - 1 <= MAX_BACKLOG < 40
