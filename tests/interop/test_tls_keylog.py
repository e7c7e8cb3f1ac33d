"""``serve --tls-keylog FILE`` against its real consumer: Wireshark's tshark, given the
key log, decrypts a captured WSS session (dumpcap on loopback) and finds the SIP inside;
without the key log it finds none.  The log is in the NSS key log format and serve warns
at start that it writes one."""
from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess

import pytest
from websockets.asyncio.client import connect

from aiosip_ws.errors import ConfigurationError
from aiosip_ws.serve.config import ServeConfig
from aiosip_ws.serve.relay import RelayServer
from tests.interop.conftest import _unavailable
from tests.support.cli import stop_process
from tests.support.net import free_port
from tests.support.sip import register_raw

pytestmark = pytest.mark.interop


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        _unavailable('tshark', RuntimeError('%s not found (Debian package tshark)' % name))
    return str(found)


async def test_tshark_decrypts_a_wss_session_with_the_key_log(tmp_path, certs):
    tshark, dumpcap = tool('tshark'), tool('dumpcap')
    keylog, capture = tmp_path / 'keys.log', tmp_path / 'wss.pcapng'
    port = free_port()
    config = ServeConfig(listen=['wss://127.0.0.1:%d/' % port], tls_cert=str(certs.cert),
                         tls_key=str(certs.key), tls_keylog=str(keylog))
    server = RelayServer(server_options=config.server_options(None),
                         client_ssl=config.client_ssl_context())
    dumper = subprocess.Popen([dumpcap, '-q', '-i', 'lo', '-f', 'tcp port %d' % port,
                               '-w', str(capture)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        for _ in range(100):                            # capturing once the file exists
            if capture.exists() or dumper.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert dumper.poll() is None, dumper.stderr.read().decode()
        await asyncio.sleep(0.5)
        [listener] = await server.start(*config.listen_urls)
        async with connect(listener.bound_url, subprotocols=['sip'], proxy=None,
                           ssl=certs.client_context()) as alice:
            await register_raw(alice, 'alice')
        await asyncio.sleep(0.5)
    finally:
        await server.close()
        stop_process(dumper, signal.SIGINT)
    lines = keylog.read_text().splitlines()
    assert lines and all(line.split(' ', 1)[0] in (
        'CLIENT_HANDSHAKE_TRAFFIC_SECRET', 'SERVER_HANDSHAKE_TRAFFIC_SECRET',
        'CLIENT_TRAFFIC_SECRET_0', 'SERVER_TRAFFIC_SECRET_0', 'EXPORTER_SECRET',
        'CLIENT_RANDOM') for line in lines if line and not line.startswith('#'))

    def sip_methods(*options: str) -> list[str]:
        shown = subprocess.run(
            [tshark, '-r', str(capture), '-d', 'tcp.port==%d,tls' % port, *options,
             '-Y', 'sip', '-T', 'fields', '-e', 'sip.Method', '-e', 'sip.Status-Code'],
            capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        return [line.strip() for line in shown.stdout.splitlines() if line.strip()]
    assert sip_methods() == []                           # TLS alone: nothing to read
    decrypted = sip_methods('-o', 'tls.keylog_file:%s' % keylog)
    assert 'REGISTER' in decrypted and any('200' in line for line in decrypted), decrypted


def test_serve_warns_that_it_writes_a_key_log_and_names_a_bad_path(serve_process, certs,
                                                                   tmp_path):
    keylog = tmp_path / 'keys.log'
    process = serve_process('--listen', 'wss://127.0.0.1:0/', '--tls-cert', str(certs.cert),
                            '--tls-key', str(certs.key), '--tls-keylog', str(keylog))
    _, _, err = process.stop()
    assert 'WARNING' in err and '--tls-keylog %s' % keylog in err
    assert 'decrypt' in err
    bad = ServeConfig(listen=['wss://127.0.0.1:0/'], tls_cert=str(certs.cert),
                      tls_key=str(certs.key), tls_keylog='/nonexistent/dir/keys.log')
    with pytest.raises(ConfigurationError, match='--tls-keylog /nonexistent/dir/keys.log: '
                                                 'No such file or directory'):
        bad.ssl_context()
