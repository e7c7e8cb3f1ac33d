"""``aiosip-ws trace`` and ``aiosip-ws admin`` against a running ``aiosip-ws serve``
(real processes), and the trace's pcap against tshark: a WSS call, traced by Call-ID
with ``--json --pcap``, comes out as the client sent it; tshark reads the file and shows
the SIP with its addresses; the wrong token is refused (exit 1); the admin CLI lists a
raw client's connection and closes it (the client sees the close code)."""
from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import subprocess

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from aiosip_ws.serve.config import ServeConfig
from aiosip_ws.tools.cli import build_parser, serve_config
from tests.interop.conftest import _unavailable
from tests.interop.test_hep import a_wss_call
from tests.support import doc_page
from tests.support.cli import run_aiosip_ws, start_aiosip_ws
from tests.support.sip import register_raw

pytestmark = pytest.mark.interop

TOKEN = 'trace-token-0123456789'


def trace_process(url: str, *args: str, token: str = TOKEN) -> subprocess.Popen:
    return start_aiosip_ws('trace', url, *args, env={'AIOSIP_WS_ADMIN_TOKEN': token})


async def test_a_wss_call_traced_live_and_read_back_by_tshark(serve_process, certs, tmp_path):
    tshark = shutil.which('tshark')
    if tshark is None:
        _unavailable('tshark', RuntimeError('tshark not found (Debian package tshark)'))
    serve = serve_process('--listen', 'wss://127.0.0.1:0/', '--tls-cert', str(certs.cert),
                          '--tls-key', str(certs.key), '--admin-token', TOKEN)
    url = serve.urls[0]
    pcap = tmp_path / 'trace.pcap'
    tracer = trace_process(url, '--ca-file', str(certs.ca_cert), '--call-id', 'call-1',
                           '--json', '--pcap', str(pcap), '--count', '13', '--duration', '30')
    try:
        await asyncio.sleep(1.5)                          # connected and tracing
        sent, received, alice = await a_wss_call(url, certs.client_context())
        out, err = await asyncio.to_thread(tracer.communicate, timeout=30)
    finally:
        if tracer.poll() is None:
            tracer.kill()
    assert tracer.returncode == 0, err
    frames = [json.loads(line) for line in out.splitlines()]
    assert len(frames) == 13 and all(f['call_id'] == 'call-1' for f in frames)
    from_alice = [f['text'].encode() for f in frames if f['direction'] == 'in'
                  and tuple(f['source']) == alice]
    assert from_alice == sent                             # INVITE, ACK, BYE as she sent them
    to_alice = [f['text'].encode() for f in frames if f['direction'] == 'out'
                and tuple(f['destination']) == alice]
    assert to_alice == received                           # 100, 180, 200, 200
    assert all(f['transport'] == 'wss' for f in frames if alice in
               (tuple(f['source']), tuple(f['destination'])))
    shown = subprocess.run(
        [tshark, '-r', str(pcap), '-Y', 'sip', '-T', 'fields', '-e', 'ip.src', '-e',
         'udp.srcport', '-e', 'sip.Method', '-e', 'sip.Status-Code', '-e', 'sip.Call-ID'],
        capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    rows = [line.split('\t') for line in shown.stdout.splitlines()]
    assert len(rows) == 13 and all(row[4] == 'call-1' for row in rows)
    assert [row[2] for row in rows if (row[0], int(row[1])) == alice] == \
        ['INVITE', 'ACK', 'BYE']
    assert sorted(row[3] for row in rows if row[3]) == ['100', '180', '180', '200', '200',
                                                         '200', '200']
    wrong = trace_process(url, '--ca-file', str(certs.ca_cert), token='not-the-right-token')
    _, err = await asyncio.to_thread(wrong.communicate, timeout=30)
    assert wrong.returncode == 1 and 'HTTP 401' in err


def test_the_commands_of_docs_tracing_rst_trace_section_are_valid():
    page = doc_page('tracing.rst')
    serves = [shlex.split(line) for line in page.splitlines()
              if line.strip().startswith('aiosip-ws serve')]
    assert len(serves) == 3                               # trace, sngrep, Homer
    for serve in serves:                                  # each one runs as written
        config = serve_config(build_parser().parse_args(serve[1:]))
        config.validate()
    [trace] = [line.split() for line in page.splitlines()
               if line.strip().startswith('aiosip-ws trace')]
    args = build_parser().parse_args(trace[1:])
    assert args.command == 'trace' and args.pcap and args.call_id
    admins = [shlex.split(line) for line in page.splitlines()
              if line.strip().startswith('aiosip-ws admin')]
    assert sorted(build_parser().parse_args(line[1:]).action for line in admins) == [
        'close', 'connections', 'drain', 'reload', 'unbind']
    for info in ServeConfig.options():
        if info.name.startswith(('admin', 'max_tracers')):
            assert '``--%s' % info.flag_name in page, info.flag_name


async def test_the_admin_cli_lists_and_closes_a_raw_clients_connection(serve_process):
    serve = serve_process('--listen', 'ws://127.0.0.1:0/', '--admin-token', TOKEN)
    url = serve.urls[0]
    async with connect(url, subprotocols=['sip'], proxy=None) as alice:
        await register_raw(alice, 'alice')
        listed = await asyncio.to_thread(run_aiosip_ws, 'admin', url, 'connections', '--json',
                                         '--token', TOKEN)
        assert listed.returncode == 0, listed.stderr
        [row] = [r for r in json.loads(listed.stdout)
                 if tuple(r['address']) == alice.local_address[:2]]
        assert row['aors'] == ['sip:alice@example.com']
        table = await asyncio.to_thread(run_aiosip_ws, 'admin', url, 'connections', '--token',
                                        TOKEN)
        assert row['id'] in table.stdout and 'sip:alice@example.com' in table.stdout
        closed = await asyncio.to_thread(run_aiosip_ws, 'admin', url, 'close', row['id'],
                                         '--code', '4002', '--reason', 'maintenance',
                                         '--token', TOKEN)
        assert closed.returncode == 0, closed.stderr
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(alice.recv(), 5)
        assert alice.close_code == 4002 and alice.close_reason == 'maintenance'
    again = await asyncio.to_thread(run_aiosip_ws, 'admin', url, 'close', row['id'], '--token',
                                    TOKEN)
    assert again.returncode == 1 and 'no connection' in again.stderr
    _, _, err = serve.stop()
    assert 'closed connection %s' % row['id'] in err


async def test_the_admin_cli_reloads_the_users_file(serve_process, users_file):
    serve = serve_process('--listen', 'ws://127.0.0.1:0/', '--users', str(users_file),
                          '--realm', 'example.com', '--admin-token', TOKEN)
    made = await asyncio.to_thread(run_aiosip_ws, 'passwd', str(users_file), 'carol',
                                   '--realm', 'example.com', stdin='secret\n')
    assert made.returncode == 0, made.stderr
    reloaded = await asyncio.to_thread(run_aiosip_ws, 'admin', serve.urls[0], 'reload',
                                       '--token', TOKEN)
    assert reloaded.returncode == 0, reloaded.stderr
    assert json.loads(reloaded.stdout) == {'reloaded': ['users']}
    _, _, err = serve.stop()
    assert 'admin reload: reloaded 3 user(s) from %s' % users_file in err
    assert 'reload (users)' in err                        # the action's own INFO line
