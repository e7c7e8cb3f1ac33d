"""serve's one configuration (aiosip_ws.serve.config.ServeConfig) and its life cycle
(aiosip_ws.serve.run): the command line, the ``--config`` TOML file and a program that
embeds serve all meet the same options; docs/pipeline.rst's my_serve.py runs as written."""
from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
import subprocess
import sys

import pytest
from websockets.asyncio.client import connect

from aiosip_ws.errors import ConfigurationError
from aiosip_ws.serve.config import ServeConfig
from aiosip_ws.tools.cli import build_parser, serve_config
from tests.support import REPO, code_block, doc_page
from tests.support.net import free_port
from tests.support.sip import recv, register_request

if sys.version_info >= (3, 11):
    import tomllib
else:                                                    # pragma: no cover - Python 3.10
    import tomli as tomllib


def flags(*argv: str) -> ServeConfig:
    return serve_config(build_parser().parse_args(['serve', *argv]))


def test_every_option_is_a_flag_with_the_configs_help_and_default():
    serve = build_parser().parse_args(['serve'])
    assert serve_config(serve) == ServeConfig()               # nothing given: the defaults
    help_text = ' '.join(subprocess.run(
        [sys.executable, '-m', 'aiosip_ws', 'serve', '--help'], capture_output=True, text=True,
        check=True).stdout.split())
    for info in ServeConfig.options():
        if info.hidden:
            assert '--%s' % info.flag_name not in help_text
            continue
        assert '--%s' % info.flag_name in help_text, info.name
        words = ' '.join(info.help_text.split())
        assert words[:40] in help_text, info.name          # (argparse folds the lines)
    assert 'Timer C: how long a forked INVITE branch may ring' in help_text
    assert '(default 180.0)' in help_text and '(default SHA-256,MD5' in help_text


def test_flags_become_the_fields_they_name():
    config = flags('--listen', 'ws://127.0.0.1:0/', '--listen', 'udp://127.0.0.1:0',
                   '--max-pending', '5', '--ping-interval', '0', '--proxy-protocol',
                   '--trusted-proxy', '10.0.0.0/8', '--log-format', 'json', '--loop', 'asyncio')
    assert config == ServeConfig(listen=['ws://127.0.0.1:0/', 'udp://127.0.0.1:0'],
                                 max_pending=5, ping_interval=0.0, proxy_protocol=True,
                                 trusted_proxy=['10.0.0.0/8'], log_format='json',
                                 loop='asyncio')
    options = config.server_options(None)
    assert options.ping_interval is None and options.proxy_protocol
    assert config.limits().max_pending == 5


def test_a_toml_file_then_flags(tmp_path):
    path = tmp_path / 'serve.toml'
    path.write_text('listen = "ws://127.0.0.1:0/"\nmax_pending = 7\nroute = ["a=sip:1.2.3.4"]\n'
                    'proxy-protocol = true\n')
    assert flags('--config', str(path)) == ServeConfig(
        listen=['ws://127.0.0.1:0/'], max_pending=7, route=['a=sip:1.2.3.4'],
        proxy_protocol=True)
    both = flags('--config', str(path), '--route', 'b=sip:5.6.7.8', '--max-pending', '9')
    assert both.route == ['b=sip:5.6.7.8'] and both.max_pending == 9   # flags replace
    for text, error in (('max-pendng = 5', "unknown option 'max-pendng'"),
                        ('max-pending = "many"', 'max-pending takes a number'),
                        ('max-pending = [1, 2]', 'max-pending takes one int'),
                        ('proxy-protocol = "yes"', 'proxy-protocol takes true or false'),
                        ('log-format = "xml"', 'log-format is one of text, json')):
        path.write_text(text + '\n')
        with pytest.raises(ConfigurationError, match=re.escape(error)):
            flags('--config', str(path))


def test_to_toml_is_read_back_as_the_same_configuration():
    config = ServeConfig(listen=['ws://127.0.0.1:0/'], route=['x="y"=sip:1.2.3.4'],
                         jwt_secret='s\u00e9cret "quoted" \\ back', max_send_queue=5,
                         transaction_timeout=1.5, reuse_port=True, node_id='n-w1', workers=0)
    table = tomllib.loads(config.to_toml())
    assert 'workers' not in table and 'log-level' not in table    # defaults are left out
    assert ServeConfig(**ServeConfig.from_mapping(table)) == config


@pytest.mark.parametrize('changes, error', [
    ({'tls_cert': 'c.pem'}, '--tls-cert and --tls-key go together'),
    ({'listen': ['wss://127.0.0.1:0/']}, 'wss://127.0.0.1:0/ needs --tls-cert and --tls-key'),
    ({'workers': 2}, '--workers needs --redis URL'),
    ({'flow_secret': 'x'}, '--flow-secret needs --registrar'),
    ({'realm': 'example.com'}, '--realm needs --users FILE'),
    ({'users': 'users.txt'}, '--users needs --realm REALM'),
    ({'route': ['nothing']}, '--route takes DOMAIN=SIP-URI'),
    ({'proxy_protocol': True, 'loop': 'uvloop'}, '--proxy-protocol needs --loop asyncio'),
])
def test_options_that_do_not_go_together_name_what_to_change(changes, error):
    with pytest.raises(ConfigurationError, match=re.escape(error)):
        dataclasses.replace(ServeConfig(), **changes).validate()


def test_the_event_loop_option_falls_back_to_the_environment(monkeypatch):
    monkeypatch.delenv('AIOSIP_WS_LOOP', raising=False)
    assert ServeConfig().event_loop() == 'asyncio'
    monkeypatch.setenv('AIOSIP_WS_LOOP', 'auto')
    assert ServeConfig().event_loop() == 'auto'
    assert ServeConfig(proxy_protocol=True).event_loop() == 'asyncio'
    assert ServeConfig(loop='uvloop').event_loop() == 'uvloop'


def test_the_command_line_reads_no_private_argparse_api():
    source = (REPO / 'aiosip_ws' / 'tools' / 'cli.py').read_text()
    assert not re.search(r'\._actions|_SubParsersAction|_AppendAction|\._subparsers', source)


def test_the_embedding_example_runs_as_written(tmp_path):
    """docs/pipeline.rst's my_serve.py, unchanged, in a process of its own: it listens
    with the options it set (one binding per AOR), prints registrations, and stops
    cleanly on SIGTERM."""
    block = code_block('# my_serve.py', doc_page('pipeline.rst'), 'docs/pipeline.rst')
    (tmp_path / 'my_serve.py').write_text(block)
    url = 'ws://127.0.0.1:%d/' % free_port()
    process = subprocess.Popen([sys.executable, '-u', str(tmp_path / 'my_serve.py'), url],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == 'aiosip-ws serve: listening on %s' % url

        async def clients() -> list[int]:
            async with connect(url, subprotocols=['sip'], proxy=None) as phone, \
                    connect(url, subprotocols=['sip'], proxy=None) as laptop:
                await phone.send(register_request('bob', host='bob-phone.invalid'))
                first = (await recv(phone)).status
                await laptop.send(register_request('bob', host='bob-laptop.invalid'))
                return [first, (await recv(laptop)).status]
        assert asyncio.run(clients()) == [200, 403]
        assert process.stdout.readline().strip() == 'registration added sip:bob@example.com'
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15)
    finally:
        if process.returncode is None:
            process.kill()
            process.wait()
    assert process.returncode == 0 and 'Traceback' not in err, err
    assert 'aiosip-ws serve: stopped cleanly' in out
