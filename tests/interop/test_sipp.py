"""SIPp (Debian's ``sip-tester``) over UDP through ``aiosip-ws serve`` to and from a
WebSocket client (a raw one of the test, so that every header it gets is checked): a SIPp
UAC sends MESSAGE and INVITE/ACK/BYE to the WebSocket client, and the WebSocket client
calls a SIPp UAS reached by a static route; SIPp on both legs of a call with reliable
provisional responses (RFC 3262) through rtpengine.  The double Record-Route (RFC 5658), the Vias
and the ACK and BYE reaching the far end are asserted on both sides; SIPp exits 0 only
when its whole scenario ran."""
from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from aiosip_ws.core.codec import make_response, serialize
from aiosip_ws.serve.media import MediaSettings
from aiosip_ws.serve.relay import RelayServer
from tests.interop.conftest import _unavailable
from tests.support.net import free_port
from tests.support.rtpengine import own_sessions
from tests.support.sip import SDP, recv, register_raw

pytestmark = pytest.mark.interop

SCENARIOS = Path(__file__).parent / 'sipp'


def sipp_binary() -> str:
    binary = shutil.which('sipp')
    if binary is None:
        _unavailable('SIPp', RuntimeError('sipp not found (Debian package sip-tester)'))
    return binary


async def run_sipp(tmp_path, scenario, *args, name='sipp'):
    """Start SIPp with ``scenario``; returns (process, its message log path)."""
    log = tmp_path / ('%s-messages.log' % name)
    port = free_port(udp=True)
    if '-p' not in args:
        args = (*args, '-p', str(port))
    proc = await asyncio.create_subprocess_exec(
        sipp_binary(), *args, '-sf', str(SCENARIOS / scenario), '-m', '1', '-i', '127.0.0.1',
        '-timeout', '20s', '-timeout_error', '-nostdin', '-trace_msg', '-message_file', str(log),
        '-trace_err', '-error_file', str(tmp_path / ('%s-errors.log' % name)),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=str(tmp_path))
    RUNNING.append(proc)
    return proc, log


#: SIPp processes of the running test (killed if the test fails before they end)
RUNNING: list = []


@pytest.fixture(autouse=True)
async def no_sipp_left():
    RUNNING.clear()
    yield
    for proc in RUNNING:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if proc.stderr is not None:
            await proc.stderr.read()
    RUNNING.clear()


async def finished(proc, log, timeout=25):
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
    stderr = (await proc.stderr.read()).decode('utf-8', 'replace')
    text = log.read_text(errors='replace') if log.exists() else ''
    assert proc.returncode == 0, 'SIPp failed (%s):\n%s\n%s' % (proc.returncode, stderr[-2000:],
                                                               text[-4000:])
    return text


@pytest.fixture
async def serve_for_sipp():
    sipp_binary()
    uas_port = free_port(udp=True)
    server = RelayServer(next_hops={'sipp.example.com': 'sip:127.0.0.1:%d' % uas_port},
                         domains=['example.com'])
    ws, udp = await server.start('ws://127.0.0.1:0/', 'udp://127.0.0.1:0')
    try:
        async with connect(ws.bound_url, subprotocols=['sip'], proxy=None) as bob:
            host = await register_raw(bob, 'bob')
            yield udp.bound_url.split('//', 1)[1], uas_port, bob, host
    finally:
        await server.close()


async def test_a_sipp_uac_messages_and_calls_a_websocket_client(serve_for_sipp, tmp_path):
    target, _, bob, bob_host = serve_for_sipp
    proc, log = await run_sipp(tmp_path, 'uac_message.xml', target, name='message')
    message = await recv(bob)
    assert message.method == 'MESSAGE' and message.body.strip() == b'hello from SIPp'
    vias = message.get_all('Via')
    assert vias[0].startswith('SIP/2.0/WS ') and vias[1].startswith('SIP/2.0/UDP 127.0.0.1:')
    await bob.send(serialize(make_response(message, 200, to_tag='bm')).decode())
    await finished(proc, log)

    proc, log = await run_sipp(tmp_path, 'uac_call.xml', target, name='call')
    invite = await recv(bob)
    routes = invite.get_all('Record-Route')
    assert len(routes) == 2                                   # RFC 5658: one per side
    assert 'transport=ws;lr' in routes[0] and 'transport=udp;lr' in routes[1]
    contact = '<sip:bob@%s;transport=ws>' % bob_host
    await bob.send(serialize(make_response(invite, 180, to_tag='b1')).decode())
    await bob.send(serialize(make_response(invite, 200, to_tag='b1', headers=[
        ('Contact', contact), ('Content-Type', 'application/sdp')], body=SDP.encode())).decode())
    ack = await recv(bob)
    assert ack.method == 'ACK' and ack.get('Route') is None     # serve took both entries
    bye = await recv(bob)
    assert bye.method == 'BYE' and bye.cseq == (2, 'BYE')
    await bob.send(serialize(make_response(bye, 200)).decode())
    text = await finished(proc, log)
    # what SIPp saw: the 200 with both Record-Route entries, its ACK and BYE routed by them
    assert text.count('Record-Route: ') >= 2
    assert 'ACK sip:bob@%s;transport=ws SIP/2.0' % bob_host in text
    assert 'Route: %s' % routes[1] in text or 'Route: %s,' % routes[1] in text


async def test_a_websocket_client_calls_a_sipp_uas(serve_for_sipp, tmp_path):
    _, uas_port, alice, alice_host = serve_for_sipp
    proc, log = await run_sipp(tmp_path, 'uas_call.xml', '-p', str(uas_port), name='uas')
    await asyncio.sleep(0.3)                                  # SIPp binds its port
    await alice.send('INVITE sip:service@sipp.example.com SIP/2.0\r\n'
                     'Via: SIP/2.0/WS %s;branch=z9hG4bKsp1\r\nFrom: <sip:bob@example.com>;tag=s1'
                     '\r\nTo: <sip:service@sipp.example.com>\r\nCall-ID: sipp-call-1\r\n'
                     'CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContact: <sip:bob@%s;transport=ws>'
                     '\r\nContent-Type: application/sdp\r\n\r\n%s' % (alice_host, alice_host, SDP))
    statuses = []
    while not statuses or statuses[-1] < 200:
        response = await recv(alice)
        statuses.append(response.status)
    assert statuses[-2:] == [180, 200] and response.body.startswith(b'v=0')
    routes = response.get_all('Record-Route')
    assert len(routes) == 2 and 'transport=udp;lr' in routes[0] and 'transport=ws;lr' in routes[1]
    uas_contact = response.get('Contact')[1:-1]
    route_lines = 'Route: %s\r\nRoute: %s\r\n' % (routes[1], routes[0])     # reversed (§12.1.2)
    common = ('From: <sip:bob@example.com>;tag=s1\r\nTo: %s\r\nCall-ID: sipp-call-1\r\n'
              'Max-Forwards: 70\r\n' % response.get('To'))
    await alice.send('ACK %s SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKsp2\r\n%s%s'
                     'CSeq: 1 ACK\r\n\r\n' % (uas_contact, alice_host, route_lines, common))
    await asyncio.sleep(0.2)
    await alice.send('BYE %s SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKsp3\r\n%s%s'
                     'CSeq: 2 BYE\r\n\r\n' % (uas_contact, alice_host, route_lines, common))
    assert (await recv(alice)).status == 200
    text = await finished(proc, log)
    assert 'ACK sip:sipp@127.0.0.1:%d SIP/2.0' % uas_port in text      # the ACK reached SIPp
    assert 'BYE sip:sipp@127.0.0.1:%d SIP/2.0' % uas_port in text
    assert text.count('Via: SIP/2.0/UDP 127.0.0.1:') >= 3


@pytest.mark.parametrize('late', [False, True], ids=['offer-in-invite', 'offer-in-183'])
async def test_reliable_provisional_responses_through_rtpengine(ng_url, tmp_path, late):
    """RFC 3262 through ``serve --media-relay always`` and rtpengine, SIPp on both plain
    legs: the answer in a reliable 183 (or, for a late offer, the offer in the 183 and the
    answer in the PRACK) goes through rtpengine like any other; each SIPp sees rtpengine's
    media port, never the other's, and rtpengine holds nothing after the BYE."""
    sipp_binary()
    uas_port, uac_media, uas_media = (free_port(udp=True) for _ in range(3))
    server = RelayServer(next_hops={'sipp.example.com': 'sip:127.0.0.1:%d' % uas_port},
                         domains=['example.com'],
                         media=MediaSettings(rtpengine=[ng_url], mode='always'))
    _, udp = await server.start('ws://127.0.0.1:0/', 'udp://127.0.0.1:0')
    try:
        suffix = '_late' if late else ''
        uas, uas_log = await run_sipp(tmp_path, 'uas_prack%s.xml' % suffix, '-p', str(uas_port),
                                      '-mp', str(uas_media), name='uas')
        await asyncio.sleep(0.3)                              # SIPp binds its port
        uac, uac_log = await run_sipp(tmp_path, 'uac_prack%s.xml' % suffix,
                                      udp.bound_url.split('//', 1)[1], '-mp', str(uac_media),
                                      name='uac')
        uac_text = await finished(uac, uac_log)
        uas_text = await finished(uas, uas_log)
    finally:
        await server.close()
    assert uac_text.count('m=audio %d ' % uac_media) == 1         # its own offer or answer
    assert uas_text.count('m=audio %d ' % uas_media) == 1
    assert 'm=audio %d ' % uac_media not in uas_text and 'm=audio %d ' % uas_media not in uac_text
    assert uas_text.count('m=audio ') == 2 and uac_text.count('m=audio ') == 2
    assert ('PRACK sip:' in uas_text) and ('RAck: 1 1 INVITE' in uas_text)
    for _ in range(20):
        if own_sessions(ng_url) == 0:
            break
        await asyncio.sleep(0.1)
    assert own_sessions(ng_url) == 0
