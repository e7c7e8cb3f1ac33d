"""docs/routing.rst's examples (examples/routing/), each started exactly as the page shows
it, in a network namespace of its own (where 8080, 5060 and 5070 are free and media stays
on loopback), with real clients on the wire: ``aiosip-ws message`` and ``aiosip-ws call``
refused by the blocklist; ``aiosip-ws call`` playing 440 Hz to a user who is not
registered, one who does not answer (``aiosip-ws answer --ring``) and one who is busy (an
aiosip-ws Application answering 486), each ending at the voicemail ``aiosip-ws answer
--record``, whose recordings hold the tone; SIPp calling numbers through the dial plan to a
SIPp gateway that checks the number it gets with a regexp, and SIPp without credentials
refused with 407 before the gateway."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.interop.test_media import AGENTS, assert_tone, media_available
from tests.support import REPO, doc_page
from tests.support.cli import PRIVATE_NETWORK, interrupt
from tests.support.media import CommandAgent

pytestmark = pytest.mark.interop

ROUTING = doc_page('routing.rst')
PEER = Path(__file__).parent / 'routing' / 'peer.py'
SIPP = Path(__file__).parent / 'sipp'
URL = 'ws://127.0.0.1:8080/'


def documented(prefix: str) -> str:
    """The command of docs/routing.rst that starts with ``prefix``."""
    [line] = [text.strip() for text in ROUTING.splitlines() if text.strip().startswith(prefix)]
    return line


class Documented:
    """The page's ``ENV=... aiosip-ws serve --app ...`` line as written (its variables in
    the environment, as a shell would), in a network namespace of its own, from a folder
    where ``examples/`` is the project's."""

    def __init__(self, line: str, cwd: Path) -> None:
        assert ' aiosip-ws serve --app examples/routing/' in line, line
        if not (cwd / 'examples').exists():
            (cwd / 'examples').symlink_to(REPO / 'examples')
        script_dir = str(Path(sys.executable).parent)
        env = dict(os.environ, PATH=script_dir + os.pathsep + os.environ.get('PATH', ''),
                   PYTHONUNBUFFERED='1', AIOSIP_WS_LOOP='asyncio')
        words = shlex.split(line)                  # NAME=VALUE ... aiosip-ws serve ...
        while '=' in words[0]:
            name, _, value = words.pop(0).partition('=')
            env[name] = value
        assert words[:2] == ['aiosip-ws', 'serve'], words
        self.proc = subprocess.Popen([*PRIVATE_NETWORK, *words], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.cwd = cwd
        assert self.proc.stdout is not None
        listens = max(1, line.count('--listen '))
        lines = [self.proc.stdout.readline().strip() for _ in range(listens)]
        assert lines[0] == 'aiosip-ws serve: listening on %s' % URL, \
            lines + [self.proc.stderr.read() if self.proc.stderr else '']
        #: run a command in serve's namespace
        self.inside = ('nsenter', '--net=/proc/%d/ns/net' % self.proc.pid, '--')

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.inside, *args], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO,
                              env=dict(os.environ, AIOSIP_WS_LOOP='asyncio'))

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.inside, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=REPO,
                                env=dict(os.environ, PYTHONUNBUFFERED='1'))

    def stop(self) -> str:
        code, err = interrupt(self.proc)
        assert code == 0 and 'Traceback' not in err, err
        return err


def aiosip_ws(*args: str) -> list[str]:
    return [sys.executable, '-W', 'error::DeprecationWarning', '-m', 'aiosip_ws', *args]


def peer(serve: Documented, aor: str, status: int) -> subprocess.Popen[str]:
    """An aiosip-ws Application registered as ``aor``: MESSAGE 200, INVITE ``status``."""
    process = serve.start(sys.executable, str(PEER), URL, aor, str(status))
    assert process.stdout is not None
    assert process.stdout.readline().strip() == 'registered', process.stderr.read()
    return process


def ended(process: subprocess.Popen[str]) -> str:
    """Stop a peer; what it printed."""
    process.terminate()
    out, err = process.communicate(timeout=15)
    assert 'Traceback' not in err, err
    return out


def test_the_blocklist_refuses_listed_callers_and_lets_the_others_through(tmp_path):
    serve = Documented(documented('BLOCKED='), tmp_path)
    try:
        bob = peer(serve, 'sip:bob@example.com', 486)
        try:
            blocked = serve.run(*aiosip_ws('message', URL, '--aor', 'sip:spam@EXAMPLE.com',
                                           '--to', 'sip:bob@example.com', '--body', 'buy'))
            assert blocked.returncode == 1, blocked.stdout + blocked.stderr
            assert '403 Forbidden (caller blocked)' in blocked.stdout + blocked.stderr
            allowed = serve.run(*aiosip_ws('message', URL, '--aor', 'sip:alice@example.com',
                                           '--to', 'sip:bob@example.com', '--body', 'hello'))
            assert allowed.returncode == 0, allowed.stdout + allowed.stderr
            robot = serve.run(*aiosip_ws('call', URL, '--aor', 'sip:robot@example.net',
                                         '--to', 'sip:bob@example.com', '--timeout', '10'))
            assert robot.returncode == 1 and '403' in robot.stderr, robot.stderr
            alice = serve.run(*aiosip_ws('call', URL, '--aor', 'sip:alice@example.com',
                                         '--to', 'sip:bob@example.com', '--timeout', '10'))
            assert alice.returncode == 1 and '486' in alice.stderr, alice.stderr
            scraped = serve.run(sys.executable, '-c', 'import urllib.request; print(urllib.'
                                'request.urlopen("http://127.0.0.1:8080/metrics").read()'
                                '.decode())')
            assert 'aiosip_ws_app_hooks_total{hook="on_request",outcome="reply"} 2.0' in \
                scraped.stdout, scraped.stdout + scraped.stderr
        finally:
            printed = ended(bob)
        # bob got alice's MESSAGE and INVITE, nothing from the listed callers
        assert [line.split()[0] + ' ' + line.split()[-1] for line in printed.splitlines()] == \
            ['MESSAGE hello', 'INVITE 486'], printed
        assert 'spam' not in printed and 'robot' not in printed
    finally:
        serve.stop()


async def test_calls_nobody_takes_reach_the_voicemail_and_leave_their_tone(tmp_path):
    """Three calls playing 440 Hz: to carol (not registered), to bob (rings, never answers:
    CANCELled after NO_ANSWER_SECONDS) and to dave (486): each recorded by the voicemail."""
    media_available()
    line = documented('VOICEMAIL_URI=')
    assert 'NO_ANSWER_SECONDS=4' in line
    serve = Documented(line, tmp_path)
    pid = serve.proc.pid
    voicemail_line = documented("aiosip-ws answer ws://127.0.0.1:8080/ --aor sip:voicemail@")
    args = shlex.split(voicemail_line)[2:]
    args[args.index('--record') + 1] = str(tmp_path / 'message-{n}.wav')
    voicemail = await CommandAgent('answer', *args, netns_pid=pid, name='voicemail').start()
    AGENTS.append(voicemail)
    bob = await CommandAgent('answer', URL, '--aor', 'sip:bob@example.com', '--ring', '30',
                             netns_pid=pid, name='bob').start()
    AGENTS.append(bob)
    dave = None
    try:
        await voicemail.wait_event('registered', timeout=15)
        await bob.wait_event('registered', timeout=15)
        dave = peer(serve, 'sip:dave@example.com', 486)
        for callee, rings in (('carol', False), ('bob', True), ('dave', False)):
            caller = CommandAgent('call', URL, '--aor', 'sip:alice@example.com', '--to',
                                  'sip:%s@example.com' % callee, '--tone', '440',
                                  '--duration', '2', netns_pid=pid, name='call %s' % callee)
            AGENTS.append(caller)
            started = time.monotonic()
            async with caller:
                await caller.wait_event('answered', timeout=25)
                waited = time.monotonic() - started
                assert await caller.wait(20) == 0, caller._describe()
            incoming = await voicemail.wait_event('incoming', timeout=5)
            assert incoming['from'] == 'sip:alice@example.com'
            if rings:                     # bob rang NO_ANSWER_SECONDS, then was CANCELled
                assert (await bob.wait_event('ended', timeout=5))['cause'] == 'cancelled'
                assert 3.8 <= waited < 15, waited
            else:
                assert waited < 3.8, waited
            await voicemail.wait_event('ended', timeout=10)
    finally:
        if dave is not None:
            assert 'INVITE' in ended(dave)
        assert await voicemail.stop() == 0, voicemail._describe()
        assert await bob.stop() == 0, bob._describe()
        serve.stop()
    for n in (1, 2, 3):
        assert_tone(tmp_path / ('message-%d.wav' % n), 440, 2.0)


def sipp(serve: Documented, tmp_path: Path, scenario: str, *args: str,
         name: str) -> subprocess.Popen[str]:
    binary = shutil.which('sipp')
    if binary is None:
        from tests.interop.conftest import _unavailable
        _unavailable('SIPp', RuntimeError('sipp not found (Debian package sip-tester)'))
    return serve.start(binary, *args, '-sf', str(SIPP / scenario), '-i', '127.0.0.1',
                       '-timeout', '20s', '-timeout_error', '-nostdin', '-trace_msg',
                       '-message_file', str(tmp_path / ('%s.log' % name)),
                       '-trace_err', '-error_file', str(tmp_path / ('%s-errors.log' % name)))


def sipp_done(process: subprocess.Popen[str], tmp_path: Path, name: str) -> str:
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    log = tmp_path / ('%s.log' % name)
    text = log.read_text(errors='replace') if log.exists() else ''
    errors = tmp_path / ('%s-errors.log' % name)
    assert process.returncode == 0, 'SIPp %s failed (%s): %s\n%s\n%s' % (
        name, process.returncode, err[-2000:], text[-4000:],
        errors.read_text(errors='replace')[-2000:] if errors.exists() else '')
    return text


def test_the_dial_plan_sends_numbers_to_the_gateway_normalised(tmp_path):
    """Unauthenticated, ``+49.30.1234567`` gets 407 and never reaches the gateway; with
    Digest credentials ``030-123 4567`` and ``0049(30)1234567`` both reach the SIPp
    gateway as sip:+49301234567@...;user=phone (its regexp fails the call otherwise)."""
    line = documented('GATEWAY_URI=')
    assert '--users users.htdigest --realm example.com' in line
    ha1 = hashlib.md5(b'sipp:example.com:secret').hexdigest()
    (tmp_path / 'users.htdigest').write_text('sipp:example.com:%s\n' % ha1)
    serve = Documented(line, tmp_path)
    try:
        gateway = sipp(serve, tmp_path, 'uas_gateway.xml', '-p', '5070', '-m', '2',
                       name='gateway')
        refused = sipp(serve, tmp_path, 'uac_number_refused.xml', '127.0.0.1:5060', '-m', '1',
                       '-s', '+49.30.1234567', name='refused')
        text = sipp_done(refused, tmp_path, 'refused')
        assert 'SIP/2.0 407 ' in text
        for n, dialled in enumerate(('030-123%204567', '0049(30)1234567')):
            caller = sipp(serve, tmp_path, 'uac_number_auth.xml', '127.0.0.1:5060', '-m', '1',
                          '-s', dialled, '-au', 'sipp', '-ap', 'secret', '-auth_uri',
                          '%s@example.com;user=phone' % dialled, name='caller%d' % n)
            text = sipp_done(caller, tmp_path, 'caller%d' % n)
            assert 'SIP/2.0 200 OK' in text
        received = sipp_done(gateway, tmp_path, 'gateway')
    finally:
        serve.stop()
    invites = [line for line in received.splitlines() if line.startswith('INVITE ')]
    assert len(invites) == 2 and all(i.startswith('INVITE sip:+49301234567@127.0.0.1:5070;'
                                                  'user=phone ') for i in invites), invites
    assert 'Proxy-Authorization' not in received       # serve's credentials end at serve


# -- the second half: call records, users from SQLite, a chatbot ------------------------------

def browsers_available() -> None:
    """Chromium and the JsSIP bundles, or the test is unavailable."""
    from tests.interop.conftest import _unavailable
    from tests.support.browser import chromium_binary, ensure_bundles
    try:
        chromium_binary()
        ensure_bundles()
    except RuntimeError as exc:
        _unavailable('browser agents', exc)


@contextlib.asynccontextmanager
async def chromium_beside(line: str, tmp_path: Path):
    """The page's serve line started as written, and a headless Chromium in its network
    namespace; both stopped at the end (serve cleanly)."""
    from tests.interop.conftest import _unavailable
    from tests.support.browser import Browser
    browsers_available()
    serve = Documented(line, tmp_path)
    try:
        browser = Browser(tmp_path / 'chromium', netns_pid=serve.proc.pid)
        try:
            await browser.start()
        except RuntimeError as exc:
            await browser.close()
            _unavailable('chromium', exc)
        try:
            yield browser
        finally:
            await browser.close()
    finally:
        serve.stop()


async def test_call_records_say_who_ended_each_call_and_how_long_it_lasted(tmp_path):
    """Four calls with ``aiosip-ws call`` and ``answer``: bob hangs up after 1 s, the
    caller hangs up after 1 s, nobody is there (404), carol rings while the caller gives
    up (487): four lines in CDR_FILE, each as the page says."""
    import json
    media_available()
    line = documented('CDR_FILE=')
    serve = Documented(line, tmp_path)
    pid = serve.proc.pid
    cdr_file = tmp_path / line.split('CDR_FILE=', 1)[1].split()[0]
    bob = await CommandAgent('answer', URL, '--aor', 'sip:bob@example.com', '--tone', '440',
                             netns_pid=pid, name='bob').start()
    carol = await CommandAgent('answer', URL, '--aor', 'sip:carol@example.com', '--ring', '20',
                               netns_pid=pid, name='carol').start()
    AGENTS.extend([bob, carol])
    try:
        await bob.wait_event('registered', timeout=15)
        await carol.wait_event('registered', timeout=15)
        for to, args, code in (('bob', ('--duration', '1'), 0),
                               ('nobody', (), 1),
                               ('carol', ('--ring-timeout', '1'), 1)):
            caller = CommandAgent('call', URL, '--aor', 'sip:alice@example.com', '--to',
                                  'sip:%s@example.com' % to, *args, netns_pid=pid,
                                  name='call %s' % to)
            AGENTS.append(caller)
            async with caller:
                assert await caller.wait(30) == code, caller._describe()
        # bob hangs up this one (his own --duration)
        await bob.stop()
        bob = await CommandAgent('answer', URL, '--aor', 'sip:bob@example.com', '--duration',
                                 '1', netns_pid=pid, name='bob hangs up').start()
        AGENTS.append(bob)
        await bob.wait_event('registered', timeout=15)
        caller = CommandAgent('call', URL, '--aor', 'sip:alice@example.com', '--to',
                              'sip:bob@example.com', netns_pid=pid, name='call bob again')
        AGENTS.append(caller)
        async with caller:
            assert await caller.wait(30) == 0, caller._describe()
    finally:
        await bob.stop()
        await carol.stop()
        serve.stop()
    records = [json.loads(text) for text in cdr_file.read_text().splitlines()]
    assert [(r['to'], r['status'], r['ended_by']) for r in records] == [
        ('sip:bob@example.com', 200, 'caller'), ('sip:nobody@example.com', 404, 'serve'),
        ('sip:carol@example.com', 487, 'caller'), ('sip:bob@example.com', 200, 'callee')]
    for record in records:
        assert record['from'] == 'sip:alice@example.com' and record['call_id']
        assert record['start'] <= record['end'] and record['start'].endswith('Z')
    for answered in (records[0], records[3]):
        assert 0.8 <= answered['duration'] <= 5 and answered['answer'] is not None
    assert records[1]['answer'] is None and records[1]['duration'] == 0


async def test_users_from_sqlite_register_and_call_in_chromium(tmp_path):
    """JsSIP in Chromium registers and calls with users of USERS_DB; a wrong password
    fails as with --users; a user added while serve runs registers once the documented
    cache TTL has passed (not before)."""
    import sqlite3

    from tests.interop.conftest import answered_jssip_call
    browsers_available()
    line = documented('USERS_DB=')
    ttl = float(line.split('--credentials-ttl ', 1)[1].split()[0])
    database = tmp_path / line.split('USERS_DB=', 1)[1].split()[0]

    def add(user, password):
        with sqlite3.connect(database) as connection:
            connection.execute('INSERT INTO users VALUES (?, ?, ?)', (user, 'example.com',
                               hashlib.md5(('%s:example.com:%s' % (user, password)).encode())
                               .hexdigest()))
    with sqlite3.connect(database) as connection:
        connection.execute('CREATE TABLE users(username TEXT, realm TEXT, ha1 TEXT)')
    add('alice', 'secret')
    add('bob', 'secret')
    async with chromium_beside(line, tmp_path) as browser:
        alice, bob = await answered_jssip_call(browser, URL)
        await alice.hangup()
        await bob.wait_event('ended', timeout=10)
        wrong = await browser.agent('jssip', url=URL, aor='sip:alice@example.com',
                                    password='guess', name='wrong password')
        await wrong.wait_event('connected', timeout=10)
        await wrong.run('register')
        failed = await wrong.wait_event('registrationFailed', timeout=10)
        assert failed['status'] in (401, 403), failed
        dave = await browser.agent('jssip', url=URL, aor='sip:dave@example.com',
                                   password='secret', name='dave')
        await dave.wait_event('connected', timeout=10)
        await dave.run('register')
        assert (await dave.wait_event('registrationFailed', timeout=10))['status'] == 401
        add('dave', 'secret')
        missed = time.monotonic()
        await dave.run('register')                        # the miss is cached: not yet
        assert (await dave.wait_event('registrationFailed', timeout=10))['status'] == 401
        await asyncio.sleep(max(0.0, ttl - (time.monotonic() - missed)) + 0.5)
        assert (await dave.register())['status'] == 200


async def test_the_chatbot_echoes_a_message_sent_from_chromium(tmp_path):
    async with chromium_beside(documented('ECHO_USER='), tmp_path) as browser:
        alice = await browser.agent('jssip', url=URL, aor='sip:alice@example.com',
                                    name='alice')
        assert (await alice.register())['status'] == 200
        await alice.message('sip:echo@example.com', 'hello, bot')
        assert (await alice.wait_event('messageSent', timeout=10))['status'] == 200
        echoed = await alice.wait_event('message', timeout=10)
        assert (echoed['from'], echoed['body']) == ('sip:echo@example.com', 'hello, bot')
