"""The call history and /calls, in process on real sockets: what a call's record holds
(messages both ways in order, who took part, the final status, redaction), its bounds
(calls, entries, age), who may read it (address and token), what the page escapes, and
the pcap tshark reads."""
from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import subprocess
import urllib.parse

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from aiosip_ws.core.codec import make_response
from aiosip_ws.serve.admin import SUBPROTOCOL, AdminSocket
from aiosip_ws.serve.config import ServeConfig
from aiosip_ws.serve.console import Console
from aiosip_ws.serve.events import MediaCommand, WireMessage
from aiosip_ws.serve.history import CallHistory
from aiosip_ws.serve.relay import RelayServer
from aiosip_ws.tools.cli import build_parser, serve_config
from tests.serve.test_bridge import bridged
from tests.support import DOCS, doc_page, eventually
from tests.support.net import http_get
from tests.support.sip import recv

pytestmark = pytest.mark.filterwarnings('error')

TOKEN = 'history-token-0123456789'


@pytest.fixture
async def history():
    server = RelayServer()
    server.server_options.admin = AdminSocket(server, token=TOKEN)
    history = CallHistory(node='n1')
    history.follow(server.events)
    server.admin.console = Console(history, TOKEN.encode(), server.admin.allowed)
    async with bridged(server) as (server, bob, alice, alice_host):
        port = int(server.listeners[0].bound_url.rsplit(':', 1)[1].strip('/'))
        yield server, bob, alice, alice_host, history, port
    await history.close()


def message(host: str, call_id: str, display: str = 'Alice') -> str:
    return ('MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bK%s\r\n'
            'From: "%s" <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n'
            'Call-ID: %s\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: text/plain\r\n'
            '\r\nhello' % (host, abs(hash(call_id)), display, call_id))


async def exchange(bob, alice, host: str, call_id: str, display: str = 'Alice') -> None:
    await alice.send(message(host, call_id, display))
    got = await bob.next()
    bob.send(make_response(got, 202, to_tag='b1'))
    assert (await recv(alice)).status == 202
    await asyncio.sleep(0.05)                          # the history's batch ran


async def test_a_call_is_recorded_both_ways_redacted_and_served_to_the_token(history):
    server, bob, alice, host, history, port = history
    await exchange(bob, alice, host, 'h-1')
    record = history.get('h-1')
    assert record.method == 'MESSAGE' and record.status == 202 and record.node == 'n1'
    assert record.from_ == '"Alice" <sip:alice@example.com>;tag=a1'
    assert [(e.kind, e.direction, e.transport, e.label) for e in record.entries] == [
        ('opened', '', 'ws', 'opened'), ('message', 'in', 'ws', 'MESSAGE'),
        ('message', 'out', 'udp', 'MESSAGE'), ('message', 'in', 'udp', '202'),
        ('message', 'out', 'ws', '202')]
    assert record.entries[0].time < record.entries[1].time      # alice's connection opened
    assert record.entries[0].source == alice.local_address[:2]    # before the call
    server.events.emit(MediaCommand, 'offer', 'h-1', 'ok', 0.002)   # as serve/media.py does
    alice_conn = next(iter(server.connections))
    await alice.close()
    await eventually(lambda: record.entries[-1].kind == 'closed')
    assert record.entries[-2].kind == 'media' and record.entries[-2].label == 'offer ok'
    assert record.entries[-1].label == '1000' and alice_conn.close_code == 1000
    assert record.peers == {('ws', *alice.local_address[:2]), ('udp', '127.0.0.1', bob.addr[1])}
    assert b'hello' not in record.entries[0].data                 # a MESSAGE body: redacted
    status, headers, _ = await http_get(port, '/calls')
    assert status == 401 and headers['www-authenticate'].startswith('Bearer')
    status, _, _ = await http_get(port, '/calls', headers=('Authorization: Bearer wrong',))
    assert status == 401
    auth = ('Authorization: Bearer ' + TOKEN,)
    status, headers, body = await http_get(port, '/calls.json', headers=auth)
    assert status == 200 and [row['call_id'] for row in json.loads(body)] == [
        'h-1', 'reg-alice', 'reg-bob']                                 # newest first
    assert headers['content-security-policy'] == "default-src 'self'"
    status, _, body = await http_get(port, '/calls/h-1.json', headers=auth)
    assert [e['label'] for e in json.loads(body)['entries']] == [
        'opened', 'MESSAGE', 'MESSAGE', '202', '202', 'offer ok', '1000']
    status, _, body = await http_get(port, '/calls.json?aor=alice@example.com', headers=auth)
    assert [row['call_id'] for row in json.loads(body)] == ['h-1', 'reg-alice']
    status, _, body = await http_get(port, '/calls.json?address=192.0.2.1', headers=auth)
    assert json.loads(body) == []
    assert (await http_get(port, '/calls/nothing.pcap', headers=auth))[0] == 404
    server.admin.allow = server.admin.allow[:0]                     # no address allowed
    assert (await http_get(port, '/calls', headers=auth))[0] == 403


async def test_the_page_shows_sip_strings_as_text(history):
    server, bob, alice, host, history, port = history
    await exchange(bob, alice, host, 'odd/id <1>', display='</svg><script>alert(1)</script>')
    auth = ('Authorization: Bearer ' + TOKEN,)
    status, headers, body = await http_get(port, '/calls', headers=auth)
    page = body.decode()
    assert status == 200 and headers['content-type'].startswith('text/html')
    assert page.count('<script') == 1 and '<script src="/calls/console.js"' in page
    assert '&lt;/svg&gt;&lt;script&gt;alert(1)' in page
    assert 'odd/id &lt;1&gt;' in page and '/calls/odd%2Fid%20%3C1%3E.pcap' in page
    status, _, data = await http_get(port, '/calls/%s.pcap' % urllib.parse.quote(
        'odd/id <1>', safe=''), headers=auth)
    assert status == 200 and data[:4] == b'\x0a\x0d\x0d\x0a'           # pcapng


@pytest.mark.parametrize('framing', ['udp', 'tcp'])
async def test_tshark_reads_a_calls_pcap(history, tmp_path, framing):
    tshark = shutil.which('tshark')
    if tshark is None:
        pytest.skip('tshark not installed (Debian package tshark)')
    server, bob, alice, host, history, port = history
    await exchange(bob, alice, host, 'h-pcap')
    status, _, data = await http_get(port, '/calls/h-pcap.pcap?framing=' + framing,
                                     headers=('Authorization: Bearer ' + TOKEN,))
    assert status == 200
    path = tmp_path / 'call.pcapng'
    path.write_bytes(data)
    kind = 'udp' if framing == 'udp' else 'tcp'
    shown = subprocess.run([tshark, '-r', str(path), '-Y', 'sip', '-T', 'fields', '-e',
                            'ip.src', '-e', '%s.srcport' % kind, '-e', 'sip.Method', '-e',
                            'sip.Status-Code', '-e', 'sip.Call-ID', '-e', 'frame.comment',
                            '-e', 'tcp.analysis.flags'],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    rows = [line.split('\t') for line in shown.stdout.splitlines()]
    assert [(r[2] or r[3], r[4]) for r in rows] == [('MESSAGE', 'h-pcap'), ('MESSAGE', 'h-pcap'),
                                                   ('202', 'h-pcap'), ('202', 'h-pcap')]
    assert (rows[0][0], int(rows[0][1])) == alice.local_address[:2]
    assert [r[5] for r in rows] == ['transport=ws', 'transport=udp', 'transport=udp',
                                    'transport=ws']
    assert not any(r[6] for r in rows)                  # no TCP complaint: the stream adds up


class _Flow:
    transport_name = 'udp'
    remote_addr = peer_addr = ('192.0.2.7', 5060)
    local_addr = ('192.0.2.1', 5060)


def test_the_history_is_bounded_by_calls_entries_and_age():
    now = [1000.0]
    history = CallHistory(size=2, per_call=3, age=60, clock=lambda: now[0])
    flow = _Flow()

    def seen(call_id: str, at: float, count: int = 1) -> None:
        for _ in range(count):
            event = WireMessage('in', flow, b'OPTIONS sip:a@b SIP/2.0\r\nCall-ID: %s\r\n'
                                b'CSeq: 1 OPTIONS\r\n\r\n' % call_id.encode())
            event.time = at
            history.consume(event)
    seen('one', 1000, count=5)
    assert len(history.get('one').entries) == 3 and history.get('one').lost == 2
    seen('two', 1001)
    seen('three', 1002)
    assert list(history.calls) == ['two', 'three']                 # 'one' forgotten
    assert history._by_flow[flow] == {'two', 'three'}              # and by its flow too
    now[0] = 1070
    assert [row['call_id'] for row in history.recent()] == []      # both past 60 s
    assert history.cost == 0
    small = CallHistory(max_bytes=3000, clock=lambda: now[0])
    history = small
    for name in ('a', 'b', 'c', 'd'):
        seen(name, 1070, count=2)                                  # about 1.1 KB a call
    assert list(small.calls) == ['c', 'd'] and 0 < small.cost <= 3000


async def test_the_login_gives_a_cookie_for_the_pages_and_the_admin_websocket(history):
    server, bob, alice, host, history, port = history
    await exchange(bob, alice, host, 'h-cookie')
    status, headers, page = await http_get(port, '/calls/login')
    assert status == 200 and b'<script src="/calls/console.js"' in page
    assert headers['content-security-policy'] == "default-src 'self'"
    assert (await http_get(port, '/calls/console.js'))[0] == 200
    assert (await http_get(port, '/calls/session'))[0] == 401
    status, headers, _ = await http_get(port, '/calls/session',
                                        headers=('Authorization: Bearer ' + TOKEN,))
    cookie = headers['set-cookie']
    assert status == 204 and 'HttpOnly' in cookie and 'SameSite=Strict' in cookie
    assert TOKEN not in cookie
    pair = cookie.split(';', 1)[0]
    status, _, body = await http_get(port, '/calls/h-cookie', headers=('Cookie: ' + pair,))
    assert status == 200 and b'data-call-id="h-cookie"' in body
    forged = pair.rsplit('.', 1)[0] + '.' + '0' * 64
    assert (await http_get(port, '/calls', headers=('Cookie: ' + forged,)))[0] == 401
    url = server.listeners[0].bound_url
    same = 'http://127.0.0.1:%d' % port
    async with connect(url, subprotocols=[SUBPROTOCOL], proxy=None, origin=same,
                       additional_headers={'Cookie': pair}) as ws:   # the ladder page's way
        await ws.send(json.dumps({'trace': {'call_id': 'h-cookie'}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))['type'] == 'tracing'
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, subprotocols=[SUBPROTOCOL], proxy=None,
                           origin='https://evil.example.com',
                           additional_headers={'Cookie': pair}):
            pass
    assert refused.value.response.status_code == 403


def test_the_commands_of_docs_console_rst_run_as_written():
    page = doc_page('console.rst')
    [serve] = [shlex.split(line) for line in page.splitlines()
               if line.strip().startswith('aiosip-ws serve')]
    config = serve_config(build_parser().parse_args(serve[1:]))
    config.validate()
    assert config.admin_token == '$AIOSIP_WS_ADMIN_TOKEN'
    for info in ServeConfig.options():
        if info.name.startswith('call_history'):
            assert '``--%s' % info.flag_name in page, info.flag_name
    assert (DOCS / 'console-ladder.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
