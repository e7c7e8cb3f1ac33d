"""The client commands of `aiosip-ws` as real processes against a real `aiosip-ws serve`:
options, register (un-registering on SIGINT), message and bench (--json)."""
from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import threading
import time

import pytest

from tests.support.cli import run_aiosip_ws as run_cli
from tests.support.cli import start_aiosip_ws
from tests.support.dnsmasq import Dnsmasq, DnsmasqNotFound, find_dnsmasq
from tests.support.net import closed_port


class CLIProcess:
    """A long-running `aiosip-ws` command whose stdout is read line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = start_aiosip_ws(*args)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if regex.search(line):
                return line
        raise AssertionError('%r not printed within %s s; stdout so far:\n%s' % (
            pattern, timeout, ''.join(self.lines)))

    def finish(self, timeout: float = 15) -> tuple[int, str, str]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        assert self.proc.stderr is not None
        return self.proc.returncode, ''.join(self.lines), self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def cli_processes():
    started: list[CLIProcess] = []

    def start(*args: str) -> CLIProcess:
        process = CLIProcess(*args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def serve_url(serve_process) -> str:
    [url] = serve_process('--listen', 'ws://127.0.0.1:0/').urls
    return url


# ---------------------------------------------------------------------------- options
def test_options_prints_the_response_and_timings_and_exits_0(serve_url):
    result = run_cli('options', serve_url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith('connected to %s (127.0.0.1:' % serve_url)
    assert re.search(r'tcp \d+\.\d ms, websocket handshake \d+\.\d ms \(total \d+\.\d ms\)', out)
    assert 'SIP/2.0 200 OK' in out and 'Allow: REGISTER' in out
    port = serve_url.rsplit(':', 1)[1].rstrip('/')
    # the Request-URI is the server itself, with the URL's port (Kamailio's myself check)
    assert re.search(r'OPTIONS sip:127\.0\.0\.1:%s;transport=ws -> 200 OK \(first response '
                     r'[\d.]+ ms, final [\d.]+ ms\)' % port, out)


@pytest.mark.parametrize('target', ['127.0.0.1:8080', 'http://127.0.0.1:8080/', 'localhost'])
def test_a_target_that_is_no_url_or_sip_uri_is_a_usage_error(target):
    """No scheme: exit 2 at once, listing the forms the transport registry accepts."""
    result = run_cli('options', target, '--timeout', '3')
    assert result.returncode == 2
    assert 'is not a URL or SIP URI that aiosip-ws can reach' in result.stderr
    for form in ('ws://HOST[:PORT][/PATH]', 'wss://HOST[:PORT][/PATH]', 'sip:[USER@]DOMAIN'):
        assert form in result.stderr
    assert 'cannot connect' not in result.stderr


def test_options_non_2xx_exits_1_with_the_reason(serve_url):
    result = run_cli('options', serve_url, '--to', 'sip:nobody@example.com')
    assert result.returncode == 1
    assert 'SIP/2.0 404 Not Found' in result.stdout
    assert 'aiosip-ws options: failed: 404 Not Found' in result.stderr


def test_options_unreachable_exits_1_with_the_reason():
    result = run_cli('options', 'ws://127.0.0.1:%d/' % closed_port(), '--timeout', '3')
    assert result.returncode == 1
    assert 'failed: cannot connect to ws://127.0.0.1:' in result.stderr
    assert 'HandshakeError' in result.stderr and 'Traceback' not in result.stderr


def silent_websocket_server(subprotocols: list[str] | None):
    """A WebSocket server in a thread that accepts and never says anything: (port, stop)."""
    import asyncio

    import websockets.asyncio.server as ws_server

    ready = threading.Event()
    holder: dict = {}

    def run() -> None:
        async def main() -> None:
            async def silent(ws):
                await ws.wait_closed()
            server = await ws_server.serve(silent, '127.0.0.1', 0, subprotocols=subprotocols)
            holder['port'] = server.sockets[0].getsockname()[1]
            holder['stop'] = asyncio.get_running_loop().create_future()
            holder['loop'] = asyncio.get_running_loop()
            ready.set()
            await holder['stop']
            server.close()
            await server.wait_closed()
        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)

    def stop() -> None:
        holder['loop'].call_soon_threadsafe(holder['stop'].set_result, None)
        thread.join(10)
    return holder['port'], stop


def test_options_not_a_sip_websocket_server_exits_1():
    """A WebSocket server that does not select `sip` (RFC 7118 §4.1) is a failure, with the reason."""
    port, stop = silent_websocket_server(None)
    try:
        result = run_cli('options', 'ws://127.0.0.1:%d/' % port, '--timeout', '5')
    finally:
        stop()
    assert result.returncode == 1
    assert 'sip' in result.stderr and 'subprotocol' in result.stderr


def test_options_without_answer_times_out_and_exits_1():
    port, stop = silent_websocket_server(['sip'])
    try:
        started = time.monotonic()
        result = run_cli('options', 'ws://127.0.0.1:%d/' % port, '--timeout', '1')
        elapsed = time.monotonic() - started
    finally:
        stop()
    assert result.returncode == 1
    assert re.search(r'failed: (timeout|no final response)', result.stderr), result.stderr
    assert 'OPTIONS sip:127.0.0.1:%d;transport=ws -> ' % port in result.stdout
    assert elapsed < 15


def test_options_trace_shows_sip_messages_and_websocket_events(serve_url):
    result = run_cli('options', serve_url, '--trace')
    assert result.returncode == 0
    trace = result.stderr
    assert 'sip <WSConnection client ws %s> sent text:' % serve_url in trace
    port = serve_url.rsplit(':', 1)[1].rstrip('/')
    assert '    OPTIONS sip:127.0.0.1:%s;transport=ws SIP/2.0' % port in trace
    assert 'received text:' in trace and '    SIP/2.0 200 OK' in trace
    for event in ('= connection is CONNECTING', '> GET / HTTP/1.1', '< HTTP/1.1 101',
                  'Sec-WebSocket-Protocol: sip', '= connection is OPEN', '> CLOSE 1000'):
        assert event in trace, event
    assert 'SIP/2.0 200 OK' in result.stdout               # stdout is unchanged


def test_options_over_wss_times_tls(serve_process, certs):
    [url] = serve_process('--listen', 'wss://127.0.0.1:0/', '--tls-cert', str(certs.cert),
                          '--tls-key', str(certs.key)).urls
    result = run_cli('options', url, '--ca-file', str(certs.ca_cert))
    assert result.returncode == 0, result.stderr
    assert re.search(r'tcp [\d.]+ ms, tls [\d.]+ ms, websocket handshake', result.stdout)
    refused = run_cli('options', url, '--timeout', '5')            # system CAs: not trusted
    assert refused.returncode == 1 and 'certificate' in refused.stderr.lower()
    insecure = run_cli('options', url, '--insecure')
    assert insecure.returncode == 0


def test_options_sip_uri_target(serve_url):
    port = serve_url.rsplit(':', 1)[1].strip('/')
    result = run_cli('options', 'sip:127.0.0.1:%s;transport=ws' % port)
    assert result.returncode == 0, result.stderr
    assert 'discovery' in result.stdout and 'OPTIONS sip:127.0.0.1:%s -> 200 OK' % port in result.stdout


def test_options_sip_uri_discovered_with_dns_option(serve_url):
    try:
        find_dnsmasq()
    except DnsmasqNotFound:
        pytest.skip('dnsmasq is not installed')
    port = int(serve_url.rsplit(':', 1)[1].strip('/'))
    with Dnsmasq(naptr=[('cli.test', 10, 10, 's', 'SIP+D2W', '', '_sip._ws.cli.test')],
                 srv=[('_sip._ws.cli.test', 'edge.cli.test', port, 10, 1)],
                 hosts=[('edge.cli.test', '127.0.0.1')]) as dns:
        result = run_cli('options', 'sip:cli.test', '--dns', dns.nameserver)
        assert result.returncode == 0, result.stderr
        assert 'connected to ws://cli.test:%d/ (127.0.0.1:%d)' % (port, port) in result.stdout
        assert 'OPTIONS sip:cli.test -> 200 OK' in result.stdout
        assert ('NAPTR', 'cli.test') in dns.queries()


# ---------------------------------------------------------------------------- register + message
def test_register_message_and_unregister_on_sigint(serve_url, cli_processes):
    """register prints the bindings and incoming MESSAGEs; SIGINT un-registers (the AOR
    then answers 404) and the process exits 0."""
    alice = cli_processes('register', serve_url, '--aor', 'sip:alice@example.com',
                          '--expires', '120', '--trace')
    alice.wait_for(r'^REGISTER sip:example\.com -> 200 OK')
    alice.wait_for(r'^bindings of sip:alice@example\.com:')
    binding = alice.wait_for(r'^  <sip:alice@[a-z0-9]+\.invalid;transport=ws>;expires=120$')
    alice.wait_for('Ctrl-C to un-register')

    sent = run_cli('message', serve_url, '--aor', 'sip:bob@example.com',
                   '--to', 'sip:alice@example.com', '--body', 'hello alice')
    assert sent.returncode == 0, sent.stderr
    assert 'MESSAGE sip:alice@example.com -> 200 OK' in sent.stdout
    alice.wait_for(r'^MESSAGE from sip:bob@example\.com: hello alice$')

    alice.proc.send_signal(signal.SIGINT)
    code, out, err = alice.finish()
    assert code == 0, err
    assert re.search(r'un-register: REGISTER sip:example\.com -> 200 OK', out)
    assert 'bindings of sip:alice@example.com left: none' in out
    assert 'Expires: 0' in err                                  # --trace: the un-REGISTER
    assert binding.strip().split(';expires')[0] in err

    after = run_cli('message', serve_url, '--aor', 'sip:bob@example.com',
                    '--to', 'sip:alice@example.com', '--body', 'still there?')
    assert after.returncode == 1
    assert 'failed: 404 Not Found' in after.stderr


def test_register_unregisters_on_sigint_while_the_connection_stays(serve_url, cli_processes):
    """The binding goes because of the un-REGISTER, not because the connection closed:
    a second registration of the same AOR from another connection is kept."""
    carol1 = cli_processes('register', serve_url, '--aor', 'sip:carol@example.com')
    carol1.wait_for('Ctrl-C to un-register')
    carol2 = cli_processes('register', serve_url, '--aor', 'sip:carol@example.com')
    carol2.wait_for('Ctrl-C to un-register')
    carol1.proc.send_signal(signal.SIGINT)
    code, out, _ = carol1.finish()
    assert code == 0
    left = out.split('bindings of sip:carol@example.com left:', 1)[1]
    assert left.count('.invalid;transport=ws>') == 1                 # carol2's binding
    sent = run_cli('message', serve_url, '--aor', 'sip:bob@example.com',
                   '--to', 'sip:carol@example.com', '--body', 'to the survivor')
    assert sent.returncode == 0
    carol2.wait_for('MESSAGE from sip:bob@example.com: to the survivor')
    carol2.proc.send_signal(signal.SIGTERM)
    assert carol2.finish()[0] == 0


def test_register_duration_refreshes_then_unregisters(serve_url):
    # Registration refreshes at 80 % of the granted 2 s
    result = run_cli('register', serve_url, '--aor', 'sip:dave@example.com', '--expires', '2',
                     '--duration', '2.5')
    assert result.returncode == 0, result.stderr
    assert 'refreshed: REGISTER sip:example.com -> 200 OK' in result.stdout
    assert 'un-register: REGISTER sip:example.com -> 200 OK' in result.stdout


def test_register_refused_exits_1_and_does_not_unregister(serve_url):
    result = run_cli('register', serve_url, '--aor', 'sip:eve@example.com', '--expires', '0')
    assert result.returncode == 2 and '--expires' in result.stderr
    result = run_cli('register', 'ws://127.0.0.1:%d/' % closed_port(), '--aor',
                     'sip:eve@example.com', '--timeout', '3')
    assert result.returncode == 1 and 'cannot connect' in result.stderr
    assert 'un-register' not in result.stdout


def test_message_body_from_stdin(serve_url, cli_processes):
    bob = cli_processes('register', serve_url, '--aor', 'sip:bob@example.com')
    bob.wait_for('Ctrl-C to un-register')
    sent = run_cli('message', serve_url, '--aor', 'sip:alice@example.com', '--to',
                   'sip:bob@example.com', '--body', '-', stdin='from stdin')
    assert sent.returncode == 0, sent.stderr
    bob.wait_for('MESSAGE from sip:alice@example.com: from stdin')
    bob.proc.send_signal(signal.SIGINT)
    assert bob.finish()[0] == 0


# ---------------------------------------------------------------------------- bench
@pytest.mark.parametrize('scenario', ['register', 'message', 'options'])
def test_bench_json(serve_url, scenario):
    result = run_cli('bench', serve_url, '--clients', '4', '--rate', '80', '--duration', '1',
                     '--scenario', scenario, '--json')
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report['scenario'] == scenario and report['mode'] == 'open'
    assert report['sent'] == 80 and report['answered'] == {'200': 80}
    assert report['errors_total'] == 0 and report['errors'] == {}
    assert report['connections'] == {'opened': 4, 'failed': 0, 'lost': 0}
    latency = report['latency_ms']
    assert latency['count'] == 80
    assert 0 < latency['min'] <= latency['p50'] <= latency['p90'] <= latency['p99'] <= latency['max']
    assert report['ok'] is True
    if scenario == 'message':
        assert report['requests_received'] == 80
    assert '] sent' in result.stderr and 'p99' in result.stderr          # progress lines


def test_bench_table_and_progress(serve_url):
    result = run_cli('bench', serve_url, '--clients', '3', '--rate', '50', '--duration', '1.5',
                     '--scenario', 'register')
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r'^sent\s+75\s', out, re.M)
    assert re.search(r'^answered\s+75\s', out, re.M)
    assert re.search(r'^  200 OK\s+75\s+100\.00 %', out, re.M)
    assert re.search(r'^errors\s+0\s', out, re.M)
    assert re.search(r'^ms\s+min\s+p50\s+p90\s+p99\s+max$', out, re.M)
    assert re.search(r'^latency(\s+[\d.]+){5}$', out, re.M)
    assert 'connections opened 3, failed 0, lost 0' in out
    progress = [line for line in result.stderr.splitlines() if '] sent' in line]
    assert progress and all('p50' in line and 'errors' in line and 'rate' in line
                            for line in progress)


def test_bench_unreachable_exits_1_and_counts_failed_connections():
    result = run_cli('bench', 'ws://127.0.0.1:%d/' % closed_port(), '--clients', '3', '--rate',
                     '10', '--duration', '0.5', '--json', '--timeout', '3')
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report['connections'] == {'opened': 0, 'failed': 3, 'lost': 0}
    assert report['connect_errors'] and report['ok'] is False


def test_bench_non_2xx_counts_by_status_and_exits_1(serve_url):
    result = run_cli('bench', serve_url, '--clients', '2', '--rate', '20', '--duration', '1',
                     '--scenario', 'message', '--to', 'sip:nobody@example.com', '--json')
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report['answered'] == {'404': 20} and report['errors_total'] == 0


def test_bench_refuses_unbounded_runs(serve_url):
    result = run_cli('bench', serve_url, '--rate', '100000', '--duration', '1000')
    assert result.returncode == 2 and 'more than the limit' in result.stderr


def test_serve_still_listed_and_help():
    result = run_cli('--help')
    for command in ('serve', 'options', 'register', 'message', 'bench'):
        assert command in result.stdout


def test_a_bad_uri_option_is_a_usage_error():
    """--to/--aor must be SIP URIs: exit 2 with what to write, before any connection."""
    result = run_cli('message', 'ws://127.0.0.1:%d/' % closed_port(), '--aor', 'sip:a@example.com',
                     '--to', 'sip:bob@[bad', '--body', 'x')
    assert result.returncode == 2
    assert "--to 'sip:bob@[bad' is not a valid SIP URI" in result.stderr
    assert 'write it as sip:user@host' in result.stderr


def test_serve_connection_cap_and_bad_message_options():
    """Without --max-connections the cap is the open file limit minus max(64, 5 %), shared
    among the listeners; a given value wins (0: no cap); --max-bad-messages 0 never closes.
    --help and docs/serve.rst say so."""
    from aiosip_ws.serve.fdlimit import connection_cap
    from aiosip_ws.tools.cli import build_parser, serve_config
    from tests.support import doc_page

    def options(*argv: str, fd_limit: int | None = 1024):
        return serve_config(build_parser().parse_args(['serve', *argv])).server_options(fd_limit)

    assert options().max_connections == 960 and options().max_bad_messages == 20
    assert options('--listen', 'ws://127.0.0.1:0/', '--listen', 'ws://127.0.0.1:1/'
                   ).max_connections == 480
    assert options('--max-connections', '5000').max_connections == 5000
    assert options('--max-connections', '0').max_connections is None
    assert options(fd_limit=None).max_connections is None
    assert options('--max-bad-messages', '0').max_bad_messages is None
    assert connection_cap(65536) == 65536 - 3276 and connection_cap(10) == 1
    help_text = ' '.join(build_parser()._subparsers._group_actions[0].choices['serve']
                         .format_help().split())
    assert 'minus max(64, 5%) for other descriptors' in help_text
    assert '--max-bad-messages N close a connection with 1008' in help_text
    page = ' '.join(doc_page('serve.rst').split())
    assert '``--max-bad-messages N`` close a connection with 1008' in page
    assert 'the open file limit minus max(64, 5 %)' in page


def test_passwd_then_serve_with_users_and_the_cli_authenticates_with_sha256(serve_process,
                                                                             tmp_path):
    """``aiosip-ws passwd`` writes HA1s (never the password, mode 0600) and replaces a
    user's line; ``serve --users`` challenges; ``aiosip-ws register`` answers the SHA-256
    challenge (RFC 8760: the strongest offered), ``message`` the 407; a wrong password
    ends with 401 or 403, exit 1, after one retry."""
    users = tmp_path / 'users'
    for user, password in [('alice', 'first'), ('alice', 'wonderland'), ('bob', 'builder')]:
        made = run_cli('passwd', str(users), user, '--realm', 'example.com', stdin=password + '\n')
        assert made.returncode == 0, made.stderr
    text = users.read_text()
    assert text.count('alice:example.com:') == 1 and 'wonderland' not in text
    assert 'replaced alice' in made.stdout or 'added bob' in made.stdout
    assert users.stat().st_mode & 0o777 == 0o600
    process = serve_process('--listen', 'ws://127.0.0.1:0/', '--users', str(users),
                            '--realm', 'example.com', '--nonce-secret', 'shared')
    [url] = process.urls
    alice = run_cli('register', url, '--aor', 'sip:alice@example.com', '--password',
                    'wonderland', '--expires', '60', '--duration', '0.5', '--trace')
    assert alice.returncode == 0, alice.stderr
    assert 'REGISTER sip:example.com -> 200 OK' in alice.stdout
    assert re.search(r'Authorization: Digest .*algorithm=SHA-256', alice.stderr), alice.stderr
    sent = run_cli('message', url, '--aor', 'sip:alice@example.com', '--to',
                   'sip:bob@example.com', '--body', 'hi', '--password', 'wonderland')
    assert 'MESSAGE sip:bob@example.com -> 404' in sent.stdout, sent.stdout + sent.stderr
    wrong = run_cli('register', url, '--aor', 'sip:bob@example.com', '--password', 'nope',
                    '--expires', '60', '--trace')
    assert wrong.returncode == 1
    assert len(re.findall(r'^ +REGISTER sip:example\.com SIP/2\.0', wrong.stderr, re.M)) == 2
    refused = run_cli('serve', '--users', str(users))
    assert refused.returncode == 2 and '--users needs --realm' in refused.stderr


def test_serve_without_users_warns_when_reachable_beyond_loopback(serve_process):
    """Listening on a wildcard address without --users logs a warning at start; on
    loopback it does not."""
    wide = serve_process('--listen', 'ws://0.0.0.0:0/')
    local = serve_process('--listen', 'ws://127.0.0.1:0/')
    _, _, wide_err = wide.stop()
    _, _, local_err = local.stop()
    assert 'checks no credentials: anyone may register as anyone' in wide_err
    assert 'checks no credentials' not in local_err


async def test_serve_takes_its_options_from_a_toml_config_and_flags_win(serve_process, tmp_path):
    """--config FILE: every serve option as a TOML key (dashes or underscores); a flag on
    the command line wins over the file (a repeatable one replaces the file's list);
    --log-format json writes one JSON object per log line; unknown keys exit 2 naming
    them."""
    from tests.support.net import free_port, http_get
    port = free_port()
    config = tmp_path / 'serve.toml'
    config.write_text('listen = ["ws://127.0.0.1:%d/"]\nmetrics-allow = "127.0.0.2/32"\n'
                      'max_contacts_per_aor = 1\nlog-format = "json"\n' % port)
    process = serve_process('--config', str(config))
    assert process.urls == ['ws://127.0.0.1:%d/' % port]
    assert (await http_get(port, '/metrics'))[0] == 403
    assert (await http_get(port, '/metrics', source='127.0.0.2'))[0] == 200
    _, _, err = process.stop()
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert any(r['message'].startswith('listening for SIP over WebSocket') for r in records)
    assert all({'time', 'level', 'logger', 'message'} <= set(r) for r in records)

    flagged = serve_process('--config', str(config), '--metrics-allow', '127.0.0.1/32')
    assert (await http_get(port, '/metrics'))[0] == 200
    flagged.stop()

    config.write_text('listen = "ws://127.0.0.1:0/"\nmax-pendng = 5\n')
    bad = run_cli('serve', '--config', str(config))
    assert bad.returncode == 2 and "unknown option 'max-pendng'" in bad.stderr
    assert 'max-pending' in bad.stderr


def test_serve_with_jwt_secret_admits_only_token_holders(serve_process):
    """serve --jwt-secret: aiosip-ws register with ?token= in the URL registers its sub;
    without a token the handshake is refused with 401 and the command exits 1."""
    import jwt
    secret = 'the secret of this test, 32 bytes long or more'
    process = serve_process('--listen', 'ws://127.0.0.1:0/', '--jwt-secret', secret,
                            '--domain', 'example.com')
    [url] = process.urls
    good = jwt.encode({'sub': 'alice', 'exp': int(time.time()) + 60}, secret, algorithm='HS256')
    alice = run_cli('register', url + '?token=' + good, '--aor', 'sip:alice@example.com',
                    '--duration', '0.3')
    assert alice.returncode == 0, alice.stderr
    assert 'REGISTER sip:example.com -> 200 OK' in alice.stdout
    anonymous = run_cli('register', url, '--aor', 'sip:alice@example.com', '--duration', '0.3')
    assert anonymous.returncode == 1 and 'HTTP 401' in anonymous.stderr
    _, _, err = process.stop()
    assert good not in err


@pytest.mark.parametrize('loop', ['uvloop', 'auto'])
def test_serve_on_uvloop_registers_relays_and_stops_cleanly(serve_process, loop):
    """aiosip-ws[fast]: --loop uvloop (and auto, with uvloop installed) runs serve on
    uvloop: a REGISTER, a MESSAGE relayed to it, a clean stop (signal handlers, the spread
    shutdown, no task left)."""
    pytest.importorskip('uvloop', reason='uvloop is not installed (aiosip-ws[fast])')
    process = serve_process('--listen', 'ws://127.0.0.1:0/', '--loop', loop)
    [url] = process.urls
    bob = start_aiosip_ws('register', url, '--aor', 'sip:bob@example.com', '--duration', '3')
    try:
        deadline = time.monotonic() + 10
        sent = None
        while time.monotonic() < deadline:
            sent = run_cli('message', url, '--aor', 'sip:alice@example.com', '--to',
                           'sip:bob@example.com', '--body', 'on uvloop')
            if '-> 200 OK' in sent.stdout:
                break
            time.sleep(0.2)
        assert sent is not None and '-> 200 OK' in sent.stdout, sent
    finally:
        out, _ = bob.communicate(timeout=30)
    assert 'MESSAGE from sip:alice@example.com: on uvloop' in out
    code, out, err = process.stop()
    assert code == 0, err
    assert 'event loop: uvloop' in err and 'stopped cleanly' in out


def test_serve_proxy_protocol_needs_a_trusted_proxy_and_asyncios_loop(tmp_path):
    """--proxy-protocol without --trusted-proxy, or with --loop uvloop, exits 2 saying what
    to add; from a TOML config it is the same option."""
    alone = run_cli('serve', '--proxy-protocol')
    assert alone.returncode == 2 and 'needs trusted_proxies (--trusted-proxy CIDR)' in alone.stderr
    uv = run_cli('serve', '--proxy-protocol', '--trusted-proxy', '127.0.0.1', '--loop', 'uvloop')
    assert uv.returncode == 2 and '--proxy-protocol needs --loop asyncio' in uv.stderr
    config = tmp_path / 'serve.toml'
    config.write_text('proxy-protocol = true\n')
    from_file = run_cli('serve', '--config', str(config))
    assert from_file.returncode == 2 and 'needs trusted_proxies' in from_file.stderr


def test_serve_workers_need_redis():
    """--workers without --redis exits 2 saying why (the workers share bindings there)."""
    alone = run_cli('serve', '--workers', '2')
    assert alone.returncode == 2 and '--workers needs --redis URL' in alone.stderr
