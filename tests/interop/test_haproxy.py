"""`aiosip-ws serve --proxy-protocol` behind Debian's HAProxy (docs/operations.rst: "Behind a
reverse proxy").

HAProxy passes TLS through in TCP mode and sends a PROXY v2 header first
(``send-proxy-v2``, health checks with ``check-send-proxy``); serve terminates TLS itself
after the header.  JsSIP registers through it; a raw client from 127.0.0.2 registers and
messages JsSIP, and serve reports that client at exactly its own address and port, so it
took them from the header: HAProxy itself connects from 127.0.0.1.  /metrics asked through
HAProxy from 127.0.0.2 is refused, and a client that bypasses HAProxy is closed unanswered.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import ssl
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.interop.conftest import _unavailable, front_process
from tests.support import doc_page
from tests.support.net import free_port, http_get
from tests.support.node import NodeAgent
from tests.support.sip import register_request

pytestmark = pytest.mark.interop

OPERATIONS = doc_page('operations.rst')


def readme_haproxy_config(listen_port: int, serve_port: int) -> str:
    """docs/operations.rst's HAProxy example, bound to ``listen_port`` on loopback, sent to serve."""
    section = OPERATIONS.split('HAProxy in front of\n', 1)[1]
    block = section.split('::\n\n', 1)[1].split('\n``tests/interop/test_haproxy.py``', 1)[0]
    config = ''.join(line[4:] + '\n' for line in block.splitlines())
    assert 'bind :443' in config and '127.0.0.1:8443 send-proxy-v2' in config
    return config.replace('bind :443', 'bind 127.0.0.1:%d' % listen_port).replace(
        '127.0.0.1:8443', '127.0.0.1:%d' % serve_port)


@pytest.fixture
def haproxy_in_front(tmp_path, certs, serve_process):
    binary = shutil.which('haproxy') or '/usr/sbin/haproxy'
    if not Path(binary).exists():
        _unavailable('haproxy', RuntimeError('not installed (Debian package haproxy)'))
    process = serve_process('--listen', 'wss://127.0.0.1:0/', '--tls-cert', str(certs.cert),
                            '--tls-key', str(certs.key), '--proxy-protocol',
                            '--trusted-proxy', '127.0.0.1/32', '--metrics-allow', '127.0.0.1/32')
    [url] = process.urls
    serve_port = int(url.rsplit(':', 1)[1].strip('/'))
    port = free_port()
    conf = tmp_path / 'haproxy.cfg'
    conf.write_text(readme_haproxy_config(port, serve_port))
    with front_process('haproxy', [binary, '-db', '-f', str(conf)], port):
        yield process, 'wss://127.0.0.1:%d/' % port, port, serve_port


async def test_jssip_through_haproxy_and_serve_reads_the_client_from_the_proxy_header(
        haproxy_in_front, certs, node_agents_ready):
    process, wss_url, haproxy_port, serve_port = haproxy_in_front
    trust = ssl.create_default_context(cafile=str(certs.ca_cert))
    env = {'NODE_EXTRA_CA_CERTS': str(certs.ca_cert)}
    async with NodeAgent('jssip', url=wss_url, aor='sip:alice@example.com', env=env) as alice:
        await alice.register()
        async with connect(wss_url, subprotocols=['sip'], ssl=trust, proxy=None,
                           local_addr=('127.0.0.2', 0)) as carol:
            await carol.send(register_request('carol'))
            assert (await asyncio.wait_for(carol.recv(), 5)).startswith('SIP/2.0 200 ')
            await carol.send(
                'MESSAGE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/WS c.invalid;branch=z9hG4bKm1\r\n'
                'From: <sip:carol@example.com>;tag=c1\r\nTo: <sip:alice@example.com>\r\n'
                'Call-ID: haproxy-m1\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n'
                'Content-Type: text/plain\r\nContent-Length: 15\r\n\r\nthrough haproxy')
            assert (await alice.wait_event('message', timeout=10))['body'] == 'through haproxy'
            assert (await asyncio.wait_for(carol.recv(), 5)).startswith('SIP/2.0 200 ')

            # through HAProxy from 127.0.0.1: allowed (every connection to serve needs a header)
            status, _, body = await http_get(haproxy_port, '/registrations', ssl=trust)
            assert status == 200
            remote = {row['aor']: row['remote'] for row in json.loads(body)}
            host, port = carol.local_address[:2]
            assert remote['sip:carol@example.com'] == '%s:%d' % (host, port)
            assert remote['sip:alice@example.com'].startswith('127.0.0.1:')

    # /metrics through HAProxy from 127.0.0.2: the client is 127.0.0.2, not HAProxy: 403
    status, _, _ = await http_get(haproxy_port, '/metrics', source='127.0.0.2', ssl=trust)
    assert status == 403
    assert (await http_get(haproxy_port, '/metrics', ssl=trust))[0] == 200
    reader, writer = await asyncio.open_connection('127.0.0.1', serve_port, local_addr=('127.0.0.2', 0))
    assert await asyncio.wait_for(reader.read(), 5) == b''      # not a trusted proxy: closed
    writer.close()
    code, _, err = process.stop()
    assert code == 0 and 'Traceback' not in err
    assert 'not a trusted proxy' in err
