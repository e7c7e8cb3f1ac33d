"""README.rst and the docs/ pages stay true: their examples run exactly as written, and
README's commands are CI's."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support import REPO, doc_page
from tests.support import code_block as support_code_block
from tests.support.cli import interrupt
from tests.support.net import closed_port

README = (REPO / 'README.rst').read_text()
#: the pages whose examples run here: the voice bot, the Authentication and bridging commands
MEDIA = doc_page('media.rst')
SERVE = doc_page('serve.rst')


def code_block(first_line: str, text: str = README, name: str = 'README.rst') -> str:
    """README.rst's python block starting with ``first_line`` (or another page's)."""
    return support_code_block(first_line, text, name)


def python(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-W', 'error::DeprecationWarning', *args],
                          capture_output=True, text=True, timeout=60, **kwargs)


def aiosip_ws_command() -> str:
    """The ``aiosip-ws`` script of the interpreter running the tests."""
    script = Path(sys.executable).with_name('aiosip-ws')
    assert script.exists(), 'aiosip-ws is not installed next to %s' % sys.executable
    return str(script)


def stop(process: subprocess.Popen) -> tuple[int, str]:
    return interrupt(process)


def test_the_examples_work_as_written_next_to_the_main_job(tmp_path):
    """The set-up section's ``aiosip-ws serve`` (port 8080), then client.py unchanged
    against it; then server.py unchanged (port 8081) beside it, and client.py pointed at
    it the way the README shows."""
    (tmp_path / 'server.py').write_text(code_block('# server.py'))
    (tmp_path / 'client.py').write_text(code_block('# client.py'))
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env.pop('SERVER_URL', None)
    env.pop('LISTEN_URL', None)
    serve = subprocess.Popen([aiosip_ws_command(), 'serve'], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert serve.stdout is not None
        first = serve.stdout.readline().strip()
        assert first == 'aiosip-ws serve: listening on ws://127.0.0.1:8080/', (
            first or serve.stderr.read())               # e.g. port 8080 already taken
        client = python('client.py', cwd=tmp_path, env=env)
        assert client.returncode == 0, client.stderr
        assert client.stdout.splitlines() == ['REGISTER: 200 OK', 'MESSAGE: 200 OK',
                                              'received: hello']

        server = subprocess.Popen([sys.executable, '-W', 'error::DeprecationWarning', 'server.py'],
                                  cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            assert server.stdout.readline().strip() == 'listening on ws://127.0.0.1:8081/'
            assert '\n    SERVER_URL=ws://127.0.0.1:8081/ python client.py\n' in README
            client = python('client.py', cwd=tmp_path,
                            env=dict(env, SERVER_URL='ws://127.0.0.1:8081/'))
            assert client.returncode == 0, client.stderr
            assert client.stdout.splitlines() == ['REGISTER: 200 OK', 'MESSAGE: 200 OK',
                                                  'received: echo: hello']
        finally:
            code, err = stop(server)
        assert code == 0, err
    finally:
        code, err = stop(serve)
    assert code == 0, err


def test_the_client_example_reports_a_refusal_and_an_unreachable_server(tmp_path):
    """A non-2xx answer prints the status and exits 1; no server: one line, exit 1; never
    a traceback."""
    (tmp_path / 'client.py').write_text(code_block('# client.py'))
    from websockets.sync.server import serve as sync_serve

    from aiosip_ws.core.codec import make_response, parse, serialize

    def refuse(websocket) -> None:
        for data in websocket:
            request = parse(data if isinstance(data, bytes) else data.encode())
            websocket.send(serialize(make_response(request, 403, to_tag='x1')).decode())

    with sync_serve(refuse, '127.0.0.1', 0, subprotocols=['sip']) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = 'ws://127.0.0.1:%d/' % server.socket.getsockname()[1]
            refused = python('client.py', cwd=tmp_path, env=dict(os.environ, SERVER_URL=url))
        finally:
            server.shutdown()
            thread.join(10)
    assert refused.returncode == 1, refused.stderr
    assert refused.stdout.splitlines() == ['REGISTER: 403 Forbidden']
    assert 'Traceback' not in refused.stderr

    gone = python('client.py', cwd=tmp_path,
                  env=dict(os.environ, SERVER_URL='ws://127.0.0.1:%d/' % closed_port()))
    assert gone.returncode == 1
    assert gone.stderr.startswith('failed: ') and 'Traceback' not in gone.stderr


def test_readme_test_command_is_what_ci_runs():
    """The README's test command is the one `.ci/run` calls."""
    command = 'bash tests/run-all.sh'
    assert '\n    %s\n' % command in README
    assert command in (REPO / '.ci' / 'run').read_text()
    assert '\n    pip install . && aiosip-ws serve\n' in README


def test_the_authentication_commands_work_as_written(tmp_path):
    """The three commands of docs/serve.rst's Authentication section, as written, in a new directory:
    passwd writes users.txt, serve challenges on port 8090, register answers and gets 200."""
    block = SERVE.split('The three commands a newcomer needs::\n\n', 1)[1].split('\n\n', 1)[0]
    passwd, serve, register = [line.strip() for line in block.splitlines()]
    script_dir = str(Path(aiosip_ws_command()).parent)
    env = dict(os.environ, PATH=script_dir + os.pathsep + os.environ.get('PATH', ''),
               PYTHONUNBUFFERED='1')
    made = subprocess.run(passwd, shell=True, cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / 'users.txt').read_text().startswith('alice:example.com:')
    server = subprocess.Popen(serve.split(), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        first = server.stdout.readline().strip()
        assert first == 'aiosip-ws serve: listening on ws://127.0.0.1:8090/', (
            first or server.stderr.read())
        client = subprocess.run(register.split(), cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=60)
        assert client.returncode == 0, client.stderr
        assert 'REGISTER sip:example.com -> 200 OK' in client.stdout, client.stdout
    finally:
        code, err = stop(server)
    assert code == 0, err
    assert 'digest authentication: 1 user(s), realm example.com' in err


@pytest.mark.interop
def test_the_voice_bot_example_answers_a_call_as_written(tmp_path):
    """docs/media.rst: ``aiosip-ws serve`` on port 8080 (in a private network namespace,
    where 8080 is free and ICE sees loopback only), bot.py as written beside a greeting,
    and the page's ``aiosip-ws call`` line: the bot answers, gets DTMF ``#`` and hangs
    up; the bot recorded the caller's 440 Hz and the caller heard the 880 Hz greeting."""
    import importlib.util
    if importlib.util.find_spec('aiortc') is None:
        from tests.interop.conftest import _unavailable
        _unavailable('aiortc', RuntimeError('pip install "aiosip-ws[media]"'))
    from tests.support import audio
    from tests.support.cli import PRIVATE_NETWORK
    (tmp_path / 'bot.py').write_text(code_block('# bot.py', MEDIA, 'docs/media.rst'))
    audio.write_tone(tmp_path / 'greeting.wav', 880, 4.0)
    [line] = [text.strip() for text in MEDIA.splitlines()
              if text.strip().startswith('aiosip-ws call ws://127.0.0.1:8080/')]
    script_dir = str(Path(aiosip_ws_command()).parent)
    env = dict(os.environ, PATH=script_dir + os.pathsep + os.environ.get('PATH', ''),
               PYTHONUNBUFFERED='1')
    env.pop('SERVER_URL', None)
    serve = subprocess.Popen([*PRIVATE_NETWORK, aiosip_ws_command(), 'serve'], cwd=tmp_path,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    inside = ['nsenter', '--net=/proc/%d/ns/net' % serve.pid, '--']
    try:
        assert serve.stdout is not None
        first = serve.stdout.readline().strip()
        assert first == 'aiosip-ws serve: listening on ws://127.0.0.1:8080/', serve.stderr.read()
        bot = subprocess.Popen([*inside, sys.executable, '-W', 'error::DeprecationWarning',
                                'bot.py'], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        try:
            assert bot.stdout is not None
            assert bot.stdout.readline().strip() == 'registered', bot.stderr.read()
            caller = subprocess.run([*inside, 'sh', '-c', line], cwd=tmp_path, env=env,
                                    capture_output=True, text=True, timeout=60)
            assert caller.returncode == 0, caller.stdout + caller.stderr
            printed = [bot.stdout.readline().strip() for _ in range(3)]
        finally:
            code, err = stop(bot)
        assert printed == ['answered', 'DTMF #', 'ended: bye by local'], err
        assert code == 0 and 'Traceback' not in err, err
    finally:
        code, err = stop(serve)
    assert code == 0, err
    assert abs(audio.read(tmp_path / 'caller.wav').dominant() - 440) <= 10
    heard = audio.read(tmp_path / 'heard.wav')
    assert abs(heard.dominant() - 880) <= 10 and heard.seconds > 1.5


@pytest.mark.interop
def test_the_bridging_command_starts_as_written():
    """docs/serve.rst's bridging section's first command, as written (in a private network namespace,
    where 8080 and 5060 are free): serve listens on both, and answers OPTIONS over UDP."""
    from tests.support.cli import PRIVATE_NETWORK
    block = SERVE.split('Browsers and a PBX, desk phones registering over UDP or TCP::\n\n', 1)[1]
    command = block.split('\n\n', 1)[0].replace('\\\n', ' ').split()
    assert command[:2] == ['aiosip-ws', 'serve']
    script_dir = str(Path(aiosip_ws_command()).parent)
    env = dict(os.environ, PATH=script_dir + os.pathsep + os.environ.get('PATH', ''),
               PYTHONUNBUFFERED='1')
    server = subprocess.Popen([*PRIVATE_NETWORK, aiosip_ws_command(), *command[1:]], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline().strip() for _ in range(2)]
        assert lines == ['aiosip-ws serve: listening on ws://0.0.0.0:8080/',
                         'aiosip-ws serve: listening on udp://0.0.0.0:5060'], server.stderr.read()
        probe = subprocess.run(['nsenter', '--net=/proc/%d/ns/net' % server.pid, '--',
                                aiosip_ws_command(), 'options', 'udp://127.0.0.1:5060',
                                '--timeout', '5'], capture_output=True, text=True, timeout=30,
                               env=env)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert 'OPTIONS sip:127.0.0.1:5060 -> 200 OK' in probe.stdout
        assert 'Via: SIP/2.0/UDP 127.0.0.1:' in probe.stdout
    finally:
        code, err = stop(server)
    assert code == 0, err
