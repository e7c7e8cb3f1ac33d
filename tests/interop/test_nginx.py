"""`aiosip-ws serve` behind Debian's nginx terminating TLS (docs/operations.rst: "Behind a reverse
proxy").

nginx listens on wss:// (127.0.0.1, a test certificate) and proxies WebSocket upgrades to
serve's ws:// port with ``X-Forwarded-For``; serve trusts it (``--trusted-proxy``).  JsSIP
and SIP.js register and message through it; serve sees each client's own address
(127.0.0.2 here for the raw client), so per-IP caps, logs and ``--metrics-allow`` apply
to the client, not to nginx: /metrics asked through nginx from 127.0.0.2 is refused, and
Debian's Prometheus (127.0.0.1, allowed) scraping it through nginx (connecting from
127.0.0.3: trusted, not allowed itself) has its target up.
"""
from __future__ import annotations

import asyncio
import contextlib
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
from tests.support.prometheus import Prometheus, prometheus_binary
from tests.support.sip import register_request

pytestmark = pytest.mark.interop

OPERATIONS = doc_page('operations.rst')


def readme_location_block(serve_port: int) -> str:
    """The ``location / { ... }`` of docs/operations.rst's nginx example, pointed at ``serve_port``."""
    section = OPERATIONS.split('Behind a reverse proxy\n', 1)[1]
    start = section.index('        location / {')
    end = section.index('        }\n', start) + len('        }\n')
    block = section[start:end]
    assert 'proxy_pass http://127.0.0.1:8080;' in block
    return block.replace('127.0.0.1:8080', '127.0.0.1:%d' % serve_port)


#: the test's nginx: its own files and ports around docs/operations.rst's location block
NGINX_CONF = """\
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        proxy_bind {source};
{location}    }}
}}
"""


@contextlib.contextmanager
def nginx_and_serve(tmp_path, certs, serve_process, source: str = '127.0.0.1'):
    """serve on ws://127.0.0.1 trusting ``source`` as its proxy (/metrics for 127.0.0.1),
    nginx on wss:// in front, connecting to serve from ``source`` (``proxy_bind``)."""
    binary = shutil.which('nginx') or '/usr/sbin/nginx'
    if not Path(binary).exists():
        _unavailable('nginx', RuntimeError('not installed (Debian package nginx-light)'))
    process = serve_process('--listen', 'ws://127.0.0.1:0/', '--trusted-proxy', source + '/32',
                            '--metrics-allow', '127.0.0.1/32')
    [url] = process.urls
    serve_port = int(url.rsplit(':', 1)[1].strip('/'))
    port = free_port()
    conf = tmp_path / 'nginx.conf'
    conf.write_text(NGINX_CONF.format(tmp=tmp_path, port=port, cert=certs.cert, key=certs.key,
                                      source=source, location=readme_location_block(serve_port)))
    with front_process('nginx', [binary, '-p', str(tmp_path), '-c', str(conf), '-g', 'daemon off;'],
                       port, log=tmp_path / 'error.log'):
        yield process, 'wss://127.0.0.1:%d/' % port, port, serve_port


@pytest.fixture
def nginx_in_front(tmp_path, certs, serve_process):
    """serve on ws://127.0.0.1 trusting 127.0.0.1 as its proxy, nginx on wss:// in front."""
    with nginx_and_serve(tmp_path, certs, serve_process) as running:
        yield running


async def test_jssip_and_sipjs_through_nginx_and_serve_sees_the_real_client(
        nginx_in_front, certs, node_agents_ready):
    process, wss_url, nginx_port, serve_port = nginx_in_front
    env = {'NODE_EXTRA_CA_CERTS': str(certs.ca_cert)}
    async with NodeAgent('jssip', url=wss_url, aor='sip:alice@example.com', env=env) as alice, \
            NodeAgent('sipjs', url=wss_url, aor='sip:bob@example.com', env=env) as bob:
        await alice.register()
        await bob.register()
        await alice.message('sip:bob@example.com', 'through nginx')
        assert (await bob.wait_event('message', timeout=10))['body'] == 'through nginx'
        assert (await alice.wait_event('messageSent', timeout=10))['status'] == 200

        trust = ssl.create_default_context(cafile=str(certs.ca_cert))
        async with connect(wss_url, subprotocols=['sip'], ssl=trust, proxy=None,
                           local_addr=('127.0.0.2', 0)) as carol:
            await carol.send(register_request('carol'))
            assert (await asyncio.wait_for(carol.recv(), 5)).startswith('SIP/2.0 200 ')
            status, _, body = await http_get(serve_port, '/registrations')   # direct: allowed
            assert status == 200
            remote = {row['aor']: row['remote'] for row in json.loads(body)}
            assert remote['sip:carol@example.com'].startswith('127.0.0.2:')
            assert remote['sip:alice@example.com'].startswith('127.0.0.1:')

        # /metrics through nginx from 127.0.0.2: the client is 127.0.0.2, not nginx: 403
        status, _, _ = await http_get(nginx_port, '/metrics', source='127.0.0.2', ssl=trust)
        assert status == 403
        # a client that is no trusted proxy cannot claim another address
        status, _, _ = await http_get(serve_port, '/metrics', source='127.0.0.2',
                                      headers=('X-Forwarded-For: 127.0.0.1',))
        assert status == 403
        assert (await http_get(serve_port, '/metrics'))[0] == 200
    code, _, err = process.stop()
    assert code == 0 and 'Traceback' not in err


async def test_prometheus_scrapes_metrics_through_nginx_from_an_allowed_address(
        certs, serve_process, tmp_path):
    """nginx connects to serve from 127.0.0.3, its trusted proxy but not allowed /metrics;
    Prometheus (127.0.0.1, allowed) scrapes https://nginx/metrics: serve answers the
    address nginx forwards, and the target is up with serve's series."""
    try:
        prometheus_binary()
    except RuntimeError as exc:
        _unavailable('prometheus', exc)
    with nginx_and_serve(tmp_path, certs, serve_process, source='127.0.0.3') as running, \
            Prometheus(tmp_path / 'prometheus', ['127.0.0.1:%d' % running[2]], scheme='https',
                       ca_file=certs.ca_cert) as prometheus:
        process, _, nginx_port, serve_port = running
        # nginx's own address is refused: only the forwarded one can make the target up
        assert (await http_get(serve_port, '/metrics', source='127.0.0.3'))[0] == 403
        target = await prometheus.wait_up(timeout=10)
        assert (target['health'], target['lastError']) == ('up', ''), target
        assert target['scrapeUrl'] == 'https://127.0.0.1:%d/metrics' % nginx_port
        assert await prometheus.value('aiosip_ws_connections{job="aiosip-ws"}') == 0
    code, _, err = process.stop()
    assert code == 0 and 'Traceback' not in err
