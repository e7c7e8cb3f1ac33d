"""``serve --hep`` against the programs that read HEP: sngrep 1.6 as a HEP listener,
whose saved pcap tshark reads (sngrep rewrites each packet as an IPv4/UDP frame with the
HEP addresses, ports and time), and npm's hep-js, Homer's decoder, over UDP and TCP.

For a call over WSS the SIP tshark shows from sngrep's file is, byte for byte, what the
client sent and what it received; sngrep's ``eep.listen.pass`` refuses packets without
serve's ``--hep-password``.  (sngrep keeps at most 20 KiB of a datagram: the messages here
are far smaller.  Its HEP listener is UDP only; hep-js covers TCP.  IPv6 and binary
bodies, which hep-js does not decode, are checked with the project's own decoder in
tests/serve/test_hep.py.)"""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time

import pytest
from websockets.asyncio.client import connect

from aiosip_ws.core.codec import make_response, parse, serialize
from aiosip_ws.serve.config import ServeConfig
from aiosip_ws.tools.cli import build_parser, serve_config
from tests.interop.conftest import _unavailable
from tests.serve.test_hep import Collector
from tests.support import doc_page
from tests.support.cli import stop_process
from tests.support.net import free_port
from tests.support.node import NODE_DIR, ensure_node_modules, node_binary
from tests.support.sip import SDP, invite, recv, register_raw

pytestmark = pytest.mark.interop


def tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        _unavailable(name, RuntimeError('%s not found (Debian package %s)' % (name, package)))
    return str(found)


def sngreprc(password: str) -> str:
    return 'set eep.listen.pass %s\nset capture.device hep-no-such-dev\n' % password


def sngrep_arguments(rc: str, port: int, pcap: str) -> list[str]:
    return ['-N', '-q', '-F', '-f', rc, '-L', 'udp:127.0.0.1:%d' % port, '-O', pcap]


def test_the_commands_of_docs_tracing_rst_are_the_tests_own():
    page = doc_page('tracing.rst')
    [sngrep] = [line.split() for line in page.splitlines()
                if line.strip().startswith('sngrep -N')]
    assert sngrep[1:] == sngrep_arguments('sngreprc', 9060, 'serve.pcap')
    assert '    ' + sngreprc('s3cret').replace('\n', '\n    ').rstrip() in page
    [serve] = [line.split() for line in page.splitlines()
               if line.strip().startswith('aiosip-ws serve') and 'udp://127.0.0.1:9060' in line]
    config = serve_config(build_parser().parse_args(serve[1:]))
    config.validate()
    assert config.hep == ['udp://127.0.0.1:9060'] and config.hep_password == 's3cret'
    for info in ServeConfig.options():                  # every tracing option is described
        if info.name.startswith(('hep', 'trace_')):
            assert '``--%s' % info.flag_name in page, info.flag_name


def sngrep_listener(tmp_path, port: int, password: str) -> tuple[subprocess.Popen, object]:
    """sngrep listening for HEP on udp 127.0.0.1:PORT, saving to a pcap (the file appears
    once its socket is bound).  Its own config file only (-F -f): the password, and a
    capture device that does not exist, so that sngrep exits instead of capturing live
    traffic when it cannot bind."""
    rc, pcap = tmp_path / 'sngreprc', tmp_path / 'sngrep.pcap'
    rc.write_text(sngreprc(password))
    proc = subprocess.Popen([tool('sngrep', 'sngrep'), *sngrep_arguments(str(rc), port,
                                                                        str(pcap))],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not pcap.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, 'sngrep did not start listening'
        time.sleep(0.05)
    return proc, pcap


async def a_wss_call(url: str, ssl) -> tuple[list[bytes], list[bytes], tuple[str, int]]:
    """alice calls bob over WSS (both raw clients of serve): REGISTER, INVITE, 180, 200,
    ACK, BYE, 200.  What alice sent, what she received, and her address."""
    sent, received = [], []
    async with connect(url, subprotocols=['sip'], proxy=None, ssl=ssl) as alice, \
            connect(url, subprotocols=['sip'], proxy=None, ssl=ssl) as bob:
        alice_host = await register_raw(alice, 'alice')
        bob_host = await register_raw(bob, 'bob')

        async def alice_sends(text: str) -> None:
            sent.append(text.encode())
            await alice.send(text)
        await alice_sends(invite(alice_host, 'z9hG4bKhepinv'))
        offer = await recv(bob)
        assert offer.method == 'INVITE'
        await bob.send(serialize(make_response(offer, 180, to_tag='b1')).decode())
        answer = make_response(offer, 200, to_tag='b1')
        answer.headers.append(('Contact', '<sip:bob@%s;transport=ws>' % bob_host))
        answer.headers.append(('Content-Type', 'application/sdp'))
        answer.body = SDP.encode()
        await bob.send(serialize(answer).decode())
        for _ in range(3):
            message = await asyncio.wait_for(alice.recv(), 5)
            received.append(message.encode())
        ok = parse(received[-1])
        assert [parse(m).status for m in received] == [100, 180, 200]
        route = ''.join('Route: %s\r\n' % r for r in reversed(ok.get_all('Record-Route')))
        for method, cseq in (('ACK', 10), ('BYE', 11)):
            await alice_sends(
                '%s sip:bob@%s;transport=ws SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKhep%s'
                '\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b1'
                '\r\nCall-ID: call-1\r\nCSeq: %d %s\r\nMax-Forwards: 70\r\n%s\r\n'
                % (method, bob_host, alice_host, method, cseq, method, route))
        assert (await recv(bob)).method == 'ACK'
        bye = await recv(bob)
        await bob.send(serialize(make_response(bye, 200)).decode())
        received.append(await asyncio.wait_for(alice.recv(), 5))
        received[-1] = received[-1].encode()
        address = alice.local_address[:2]
    return sent, received, address


def tshark_frames(pcap) -> list[dict]:
    shown = subprocess.run(
        [tool('tshark', 'tshark'), '-r', str(pcap), '-Y', 'sip', '-T', 'fields', '-e',
         'ip.src', '-e', 'udp.srcport', '-e', 'ip.dst', '-e', 'udp.dstport', '-e',
         'frame.time_epoch', '-e', 'sip.Call-ID', '-e', 'udp.payload'],
        capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    frames = []
    for line in shown.stdout.splitlines():
        src, sport, dst, dport, when, call_id, payload = line.split('\t')
        frames.append({'source': (src, int(sport)), 'destination': (dst, int(dport)),
                       'time': float(when), 'call_id': call_id,
                       'payload': bytes.fromhex(payload.replace(':', ''))})
    return frames


async def test_sngrep_saves_a_wss_call_that_tshark_shows_byte_for_byte(serve_process, certs,
                                                                          tmp_path):
    port = free_port(udp=True)
    sngrep, pcap = sngrep_listener(tmp_path, port, 's3cret')
    try:
        started = time.time()
        serve = serve_process('--listen', 'wss://127.0.0.1:0/', '--tls-cert', str(certs.cert),
                              '--tls-key', str(certs.key), '--hep', 'udp://127.0.0.1:%d' % port,
                              '--hep-password', 's3cret')
        sent, received, alice = await a_wss_call(serve.urls[0], certs.client_context())
        server_port = int(serve.urls[0].rsplit(':', 1)[1].strip('/'))
        wrong = serve_process('--listen', 'wss://127.0.0.1:0/', '--tls-cert', str(certs.cert),
                              '--tls-key', str(certs.key), '--hep', 'udp://127.0.0.1:%d' % port,
                              '--hep-password', 'not-it')
        async with connect(wrong.urls[0], subprotocols=['sip'], proxy=None,
                           ssl=certs.client_context()) as carol:
            await register_raw(carol, 'carol')
        await asyncio.sleep(0.5)
        serve.stop()
        wrong.stop()
    finally:
        stop_process(sngrep)
    frames = tshark_frames(pcap)
    assert not [f for f in frames if f['call_id'] == 'reg-carol']   # refused: wrong key
    from_alice = [f['payload'] for f in frames if f['source'] == alice]
    to_alice = [f['payload'] for f in frames if f['destination'] == alice]
    for message in sent:
        assert message in from_alice, message[:80]                    # byte for byte
    for message in received:
        assert message in to_alice, message[:80]
    for frame in frames:
        assert started - 1 < frame['time'] < time.time() + 1          # the wire event's time
        assert ('127.0.0.1', server_port) in (frame['source'], frame['destination']) or \
            frame['source'][0] == frame['destination'][0] == '127.0.0.1'
    methods = [parse(f['payload']).method or parse(f['payload']).status
               for f in frames if f['call_id'] == 'call-1']
    assert methods.count('INVITE') == 2 and methods.count('BYE') == 2   # in and out each
    assert methods.count(200) == 4 and methods.count(180) == 2 and methods.count('ACK') == 2
    assert methods.count(100) == 1                              # serve's own, to alice


async def test_hep_js_decodes_every_chunk_over_udp_and_tcp(serve_process, tmp_path):
    try:
        ensure_node_modules()
        node = node_binary()
    except RuntimeError as exc:
        _unavailable('node (hep-js)', exc)
    decoder = subprocess.Popen([node, str(NODE_DIR / 'hep_decode.js'), 'both', '0'],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ports = {}
        while len(ports) < 2:
            line = decoder.stderr.readline()
            assert line, 'hep_decode.js did not start'
            kind, address = line.split()[1:3]
            ports[kind] = int(address.rsplit(':', 1)[1])
        assert decoder.stdout.readline().strip() == 'ready'
        started = time.time()
        serve = serve_process('--listen', 'ws://127.0.0.1:0/', '--hep',
                              'udp://127.0.0.1:%d' % ports['udp'], '--hep',
                              'tcp://127.0.0.1:%d' % ports['tcp'], '--hep-id', '4242',
                              '--hep-password', 'pw', '--node-id', 'edge-7')
        await asyncio.sleep(0.3)                      # the TCP collector connected
        async with connect(serve.urls[0], subprotocols=['sip'], proxy=None) as alice:
            await register_raw(alice, 'alice')
            alice_addr = alice.local_address[:2]
        serve.stop()
        lines = []
        deadline = time.monotonic() + 5
        while len(lines) < 4 and time.monotonic() < deadline:
            lines.append(json.loads(decoder.stdout.readline()))
    finally:
        stop_process(decoder)
    by_transport = {'udp': [], 'tcp': []}
    for line in lines:
        assert 'error' not in line, line
        by_transport[line['transport']].append(line)
    assert len(by_transport['udp']) == len(by_transport['tcp']) == 2
    server_port = int(serve.urls[0].rsplit(':', 1)[1].strip('/'))
    for transport, (request, response) in by_transport.items():
        info = request['rcinfo']
        assert (info['srcIp'], info['srcPort']) == alice_addr, transport
        assert (info['dstIp'], info['dstPort']) == ('127.0.0.1', server_port)
        assert info['protocolFamily'] == 2 and info['protocol'] == 6
        assert info['payloadType'] == 1 and info['captureId'] == 4242
        assert info['capturePass'] == 'pw' and info['hepNodeName'] == 'edge-7'
        assert info['correlation_id'] == 'reg-alice'
        assert started - 1 < info['timeSeconds'] < time.time() + 1
        assert 0 <= info['timeUseconds'] < 10 ** 6
        assert request['hepjs_payload_lossless'] and response['hepjs_payload_lossless']
        assert base64.b64decode(request['payload_b64']).startswith(b'REGISTER sip:example.com')
        assert parse(base64.b64decode(response['payload_b64'])).status == 200
        assert (response['rcinfo']['srcIp'], response['rcinfo']['srcPort']) == \
            ('127.0.0.1', server_port)
        assert not request['not_decoded_by_hepjs']        # every chunk serve sent, decoded


async def test_two_nodes_on_one_redis_export_one_call_with_their_names(serve_process,
                                                                      redis_server):
    """alice on node n1 sends a MESSAGE to bob on node n2 (forwarded through Redis): the
    collector gets each node's messages under that node's name and one correlation id,
    the merged view of the call."""
    loop = asyncio.get_running_loop()
    transport, collector = await loop.create_datagram_endpoint(Collector,
                                                               local_addr=('127.0.0.1', 0))
    url = 'udp://127.0.0.1:%d' % transport.get_extra_info('sockname')[1]
    try:
        nodes = [serve_process('--listen', 'ws://127.0.0.1:0/', '--redis', redis_server.url,
                               '--node-id', name, '--hep', url) for name in ('n1', 'n2')]
        async with connect(nodes[0].urls[0], subprotocols=['sip'], proxy=None) as alice, \
                connect(nodes[1].urls[0], subprotocols=['sip'], proxy=None) as bob:
            alice_host = await register_raw(alice, 'alice')
            await register_raw(bob, 'bob')
            await alice.send('MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch'
                             '=z9hG4bKn1\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@'
                             'example.com>\r\nCall-ID: across-1\r\nCSeq: 1 MESSAGE\r\nMax-Forwar'
                             'ds: 70\r\nContent-Type: text/plain\r\n\r\nhi' % alice_host)
            got = await recv(bob)
            await bob.send(serialize(make_response(got, 200, to_tag='b1')).decode())
            assert (await recv(alice)).status == 200
        packets = []
        while len(packets) < 4:
            packet = await collector.next(5)
            if packet.correlation_id == 'across-1':
                packets.append(packet)
    finally:
        transport.close()
    by_node = {(p.node, parse(p.payload).method or parse(p.payload).status,
                'in' if p.source[1] != int(nodes[0 if p.node == 'n1' else 1].urls[0]
                                           .rsplit(':', 1)[1].strip('/')) else 'out')
               for p in packets}
    assert by_node == {('n1', 'MESSAGE', 'in'), ('n2', 'MESSAGE', 'out'),
                       ('n2', 200, 'in'), ('n1', 200, 'out')}
