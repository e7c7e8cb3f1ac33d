"""Routing in Python (``--app``, aiosip_ws.serve.routing): the hooks in serve's pipeline,
with raw WebSocket clients on the wire: replies, changes to the request, relays to the
app's targets, failure routing (downstream, serve's own 404, the app's no-answer timer),
CANCEL while the app decides, in-dialog refusals, bounded time, exceptions, the
watchdog and reload."""
from __future__ import annotations

import asyncio
import logging
import time

import pytest
from websockets.asyncio.client import connect

from aiosip_ws.errors import RoutingError
from aiosip_ws.serve.relay import RelayServer
from aiosip_ws.serve.routing import App, Registered, Relay, Reply, Request, Target, aor_key
from tests.support import REPO, eventually
from tests.support.sip import SDP, answer, invite, message, quiet, recv, register_raw


def ws(url):
    return connect(url, subprotocols=['sip'], proxy=None)


def cancel_of(caller_host: str, branch: str = 'z9hG4bKinv1') -> str:
    return ('CANCEL sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=%s\r\n'
            'From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n'
            'Call-ID: call-1\r\nCSeq: 10 CANCEL\r\nMax-Forwards: 70\r\n\r\n'
            % (caller_host, branch))


def test_requests_compare_aors_as_rfc_3261_does():
    assert aor_key('"Al" <sip:alice@Example.COM;transport=ws>;tag=1') == 'sip:alice@example.com'
    assert aor_key('sips:Alice@example.com:5061') == 'sip:Alice@example.com'


def test_without_an_app_the_pipeline_is_as_before():
    server = RelayServer()
    assert [name for name, _, _ in server.stages][-2:] == ['identity', 'route']
    assert not any(name.startswith('app') for name, _, _ in server.stages)
    assert server.forker.failure is None


def test_an_app_without_hooks_or_that_cannot_load_is_refused_with_its_reason(tmp_path):
    with pytest.raises(RoutingError, match='defines none of on_request'):
        RelayServer().use_app(object())
    broken = tmp_path / 'broken.py'
    broken.write_text('import nowhere_to_be_found\n')
    with pytest.raises(RoutingError, match="cannot be loaded: ModuleNotFoundError"):
        RelayServer().use_app(str(broken))
    with pytest.raises(RoutingError, match='no such file'):
        RelayServer().use_app(str(tmp_path / 'missing.py'))


async def test_the_app_refuses_relays_and_changes_what_it_may(serve_with):
    """INVITE from a listed caller: 403 with the app's reason and header; a MESSAGE to
    ``sip:desk@...`` relayed to bob's bindings with a header added and its Request-URI
    and body changed by the app; one to anyone else left to serve (default routing)."""
    seen = []

    class Rules(App):
        async def on_request(self, request: Request):
            seen.append((request.method, request.from_aor, request.identity,
                         request.transport))
            if request.method == 'INVITE' and request.from_aor == 'sip:alice@example.com':
                return Reply(403, 'Forbidden (blocked)', headers=[('X-Why', 'listed')])
            if request.uri.user == 'desk':
                request.add_header('X-Routed-By', 'app')
                request.set_body('rewritten', 'text/plain')
                return Relay(Registered('sip:bob@EXAMPLE.com'))
            return None

    server, url = await serve_with(Rules())
    assert [name for name, _, _ in server.stages][-3:] == ['identity', 'app', 'route']
    async with ws(url) as caller, ws(url) as callee:
        caller_host = await register_raw(caller, 'alice')
        await register_raw(callee, 'bob')
        await caller.send(invite(caller_host))
        refused = await recv(caller)             # decided at once: no 100 Trying first
        assert (refused.status, refused.reason, refused.get('X-Why')) == \
            (403, 'Forbidden (blocked)', 'listed')
        assert refused.get('To').count('tag=') == 1

        await caller.send(message(caller_host).replace('sip:bob@example.com SIP',
                                                       'sip:desk@example.com SIP'))
        relayed = await recv(callee)
        assert relayed.uri == 'sip:bob@bob-raw.invalid;transport=ws'
        assert relayed.get('X-Routed-By') == 'app' and relayed.body == b'rewritten'
        assert relayed.get('Content-Type') == 'text/plain' and len(relayed.vias) == 2
        await answer(callee, relayed, 200, 'b1')
        assert (await recv(caller)).status == 200

        await caller.send(message(caller_host).replace('msg-1', 'msg-2'))
        relayed = await recv(callee)
        assert relayed.uri == 'sip:bob@bob-raw.invalid;transport=ws' and \
            relayed.get('X-Routed-By') is None
        await answer(callee, relayed, 200, 'b2')
        assert (await recv(caller)).status == 200
    assert seen[2] == ('INVITE', 'sip:alice@example.com', None, 'ws')
    assert [m for m, *_ in seen] == ['REGISTER', 'REGISTER', 'INVITE', 'MESSAGE', 'MESSAGE']
    server.metrics.flush()
    assert server.metrics.app_hooks.labels('on_request', 'reply')._value.get() == 1
    assert server.metrics.app_hooks.labels('on_request', 'relay')._value.get() == 1


async def test_headers_that_stay_serves_raise_a_clear_error_and_500(serve_with, caplog):
    errors = []

    class Meddler(App):
        async def on_request(self, request):
            if request.method != 'MESSAGE':
                return None
            for name in ('Via', 'v', 'CSeq', 'Call-ID', 'Max-Forwards', 'Record-Route',
                         'Content-Length', 'Route'):
                try:
                    request.set_header(name, 'x')
                except RoutingError as exc:
                    errors.append(str(exc))
            try:
                request.set_header('From', '<sip:mallory@example.com>;tag=other')
            except RoutingError as exc:
                errors.append(str(exc))
            request.set_header('From', '"Alice" <sip:alice@example.com>')   # tag kept
            request.set_header('Via', 'SIP/2.0/WS evil.invalid')              # raises: 500
            return None

    _, url = await serve_with(Meddler())
    async with ws(url) as caller:
        caller_host = await register_raw(caller, 'alice')
        with caplog.at_level(logging.ERROR, 'aiosip_ws.serve.app'):
            await caller.send(message(caller_host))
            failed = await recv(caller)
    assert failed.status == 500 and 'routing app' in failed.reason
    assert len(errors) == 9
    assert errors[0].startswith('the Via header cannot be changed by the app')
    assert errors[1].startswith('the Via header')            # compact form, same rule
    assert 'the From tag cannot be changed' in errors[-1]
    [line] = [r for r in caplog.records if 'raised RoutingError' in r.getMessage()]
    assert 'Traceback' in line.getMessage() and 'set_header' in line.getMessage()


async def test_failure_routing_busy_unregistered_and_no_answer_go_to_voicemail(serve_with):
    """bob busy (486), carol not registered (serve's 404), dave ringing past the app's
    timer (CANCELled; his 487 counts as 408): each call goes to the voicemail's binding,
    which answers; the app saw each failure once."""
    failures = []

    class Voicemail(App):
        async def on_request(self, request):
            if request.method == 'INVITE':
                return Relay(Registered(request.uri.aor, timeout=0.5))
            return None

        async def on_failure(self, request, response):
            failures.append((request.uri.user, response.status, response.by_serve,
                             response.attempt))
            if response.attempt == 1:
                return Relay(Registered('sip:vm@example.com'))
            return None

    _, url = await serve_with(Voicemail())
    async with ws(url) as caller, ws(url) as bob, ws(url) as dave, ws(url) as vm:
        caller_host = await register_raw(caller, 'alice')
        await register_raw(bob, 'bob')
        await register_raw(dave, 'dave')
        await register_raw(vm, 'vm')

        async def voicemail_answers(branch):
            to_vm = await recv(vm)
            assert to_vm.method == 'INVITE' and to_vm.uri == 'sip:vm@vm-raw.invalid;transport=ws'
            await answer(vm, to_vm, 200, 'v' + branch[-1],
                         headers=[('Contact', '<sip:vm@vm-raw.invalid;transport=ws>')])
            ok = await recv(caller)
            assert ok.status == 200 and ok.get('To').endswith('tag=v' + branch[-1])

        await caller.send(invite(caller_host, 'z9hG4bK1'))
        assert (await recv(caller)).status == 100
        to_bob = await recv(bob)
        await answer(bob, to_bob, 486, 'b')
        assert (await recv(bob)).method == 'ACK'
        await voicemail_answers('z9hG4bK1')

        await caller.send(invite(caller_host, 'z9hG4bK2').replace('sip:bob@', 'sip:carol@')
                          .replace('call-1', 'call-2'))
        assert (await recv(caller)).status == 100
        await voicemail_answers('z9hG4bK2')

        await caller.send(invite(caller_host, 'z9hG4bK3').replace('sip:bob@', 'sip:dave@')
                          .replace('call-1', 'call-3'))
        assert (await recv(caller)).status == 100
        to_dave = await recv(dave)
        await answer(dave, to_dave, 180, 'd')
        assert (await recv(caller)).status == 180
        started = time.monotonic()
        cancel = await recv(dave)
        assert cancel.method == 'CANCEL' and 0.2 < time.monotonic() - started < 2
        assert cancel.get('Reason') == 'SIP;cause=408;text="No answer"'
        await answer(dave, cancel, 200, 'd')
        await answer(dave, to_dave, 487, 'd')
        assert (await recv(dave)).method == 'ACK'
        await voicemail_answers('z9hG4bK3')
        await quiet(caller)
    assert failures == [('bob', 486, False, 1), ('carol', 404, True, 1), ('dave', 408, False, 1)]


async def test_the_voicemail_failing_too_reaches_the_caller_and_rounds_are_bounded(serve_with):
    """An app that sends every failure somewhere that fails again: after
    MAX_FAILURE_ROUNDS rounds the caller gets the last failure."""
    from aiosip_ws.serve.app import MAX_FAILURE_ROUNDS
    rounds = []

    class Stubborn(App):
        async def on_failure(self, request, response):
            rounds.append(response.attempt)
            return Relay(Registered('sip:nobody@example.com'))

    _, url = await serve_with(Stubborn())
    async with ws(url) as caller:
        caller_host = await register_raw(caller, 'alice')
        await caller.send(invite(caller_host))
        final = await recv(caller)                  # no binding: at once, no 100 Trying
        assert final.status == 404
        await quiet(caller)
    assert rounds == list(range(1, MAX_FAILURE_ROUNDS + 1))


async def test_sequential_targets_and_a_target_over_websocket(serve_with):
    """Relay(a, b, parallel=False): b only after a failed; a Target URI sent over a
    WebSocket connection serve opens (its Request-URI the target)."""
    async def next_hop(conn):
        async for text in conn:
            request = __import__('aiosip_ws.core.codec', fromlist=['parse']).parse(text)
            hop_seen.append(request)
            from aiosip_ws.core.codec import make_response, serialize
            await conn.send(serialize(make_response(request, 200, to_tag='h')).decode())

    from websockets.asyncio.server import serve as ws_serve
    hop_seen = []
    async with ws_serve(next_hop, '127.0.0.1', 0, subprotocols=['sip']) as hop:
        port = hop.sockets[0].getsockname()[1]

        class Chain(App):
            async def on_request(self, request):
                if request.method == 'MESSAGE':
                    return Relay(Registered('sip:bob@example.com'),
                                 Target('sip:+4930123@127.0.0.1:%d;transport=ws' % port),
                                 parallel=False)
                return None

        _, url = await serve_with(Chain())
        async with ws(url) as caller, ws(url) as bob:
            caller_host = await register_raw(caller, 'alice')
            await register_raw(bob, 'bob')
            await caller.send(message(caller_host))
            to_bob = await recv(bob)
            await answer(bob, to_bob, 480, 'b')
            ok = await recv(caller)
            assert ok.status == 200 and ok.get('To').endswith('tag=h')
    assert [r.uri for r in hop_seen] == ['sip:+4930123@127.0.0.1:%d;transport=ws' % port]


async def test_cancel_while_the_app_decides_and_no_failure_routing_after_cancel(serve_with):
    deciding = asyncio.Event()
    failures = []

    class Slow(App):
        async def on_request(self, request):
            if request.method == 'INVITE' and request.call_id == 'call-1':
                deciding.set()
                await asyncio.sleep(0.5)
            return None

        async def on_failure(self, request, response):
            failures.append(response.status)
            return None

    _, url = await serve_with(Slow())
    async with ws(url) as caller, ws(url) as bob:
        caller_host = await register_raw(caller, 'alice')
        await register_raw(bob, 'bob')
        await caller.send(invite(caller_host))
        assert (await recv(caller)).status == 100
        await asyncio.wait_for(deciding.wait(), 5)
        await caller.send(cancel_of(caller_host))
        assert (await recv(caller)).status == 200           # the CANCEL
        terminated = await recv(caller)
        assert (terminated.status, terminated.cseq) == (487, (10, 'INVITE'))
        await quiet(bob)                                      # the INVITE never left

        # a CANCEL after the INVITE was relayed: 487 straight to the caller
        await caller.send(invite(caller_host, 'z9hG4bK2').replace('call-1', 'call-2'))
        assert (await recv(caller)).status == 100
        to_bob = await recv(bob)
        await answer(bob, to_bob, 180, 'b')
        assert (await recv(caller)).status == 180
        await caller.send(cancel_of(caller_host, 'z9hG4bK2').replace('call-1', 'call-2'))
        assert (await recv(caller)).status == 200
        cancel = await recv(bob)
        await answer(bob, cancel, 200, 'b')
        await answer(bob, to_bob, 487, 'b')
        assert (await recv(caller)).status == 487
    assert failures == []


async def test_a_hook_is_bounded_in_time_and_its_exceptions_answer_500(serve_with, caplog):
    class Faulty(App):
        async def on_request(self, request):
            if request.method == 'MESSAGE':
                if request.body == b'slow':
                    await asyncio.sleep(10)
                raise KeyError('no such route')
            return None

    server, url = await serve_with(Faulty(), timeout=0.3)
    async with ws(url) as caller:
        caller_host = await register_raw(caller, 'alice')
        with caplog.at_level(logging.WARNING, 'aiosip_ws.serve.app'):
            started = time.monotonic()
            await caller.send(message(caller_host, 'slow'))
            assert (await recv(caller)).status == 500
            assert 0.25 < time.monotonic() - started < 2
            for n in range(15):
                await caller.send(message(caller_host, 'x').replace('msg-1', 'msg-x%d' % n))
                assert (await recv(caller)).status == 500
    logged = [r.getMessage() for r in caplog.records]
    assert sum('took longer than --app-timeout 0.3 s' in m for m in logged) == 1
    raised = [m for m in logged if 'raised KeyError' in m]
    assert len(raised) == 10 and "KeyError: 'no such route'" in raised[0]   # rate-limited
    server.metrics.flush()
    assert server.metrics.app_hooks.labels('on_request', 'error')._value.get() == 15


async def test_in_dialog_requests_the_app_may_refuse_and_nothing_more(serve_with):
    class NoRefer(App):
        async def on_in_dialog(self, request):
            return Reply(403, 'Forbidden (no transfers)') if request.method == 'REFER' else None

    _, url = await serve_with(NoRefer())
    async with ws(url) as caller, ws(url) as bob:
        caller_host = await register_raw(caller, 'alice')
        await register_raw(bob, 'bob')
        await caller.send(invite(caller_host))
        assert (await recv(caller)).status == 100
        to_bob = await recv(bob)
        await answer(bob, to_bob, 200, 'b', headers=[('Contact', '<sip:bob@bob-raw.invalid;'
                                                                 'transport=ws>')],
                     body=SDP.encode())
        assert (await recv(caller)).status == 200
        in_dialog = ('%s sip:bob@bob-raw.invalid;transport=ws SIP/2.0\r\nVia: SIP/2.0/WS %s;'
                     'branch=z9hG4bK%s\r\nFrom: <sip:alice@example.com>;tag=a1\r\n'
                     'To: <sip:bob@example.com>;tag=b\r\nCall-ID: call-1\r\nCSeq: %d %s\r\n'
                     'Max-Forwards: 70\r\n%s\r\n')
        await caller.send(in_dialog % ('REFER', caller_host, 'r1', 11, 'REFER',
                                       'Refer-To: <sip:carol@example.com>\r\n'))
        refused = await recv(caller)
        assert (refused.status, refused.reason) == (403, 'Forbidden (no transfers)')
        await caller.send(in_dialog % ('BYE', caller_host, 'b1', 12, 'BYE', ''))
        bye = await recv(bob)
        assert bye.method == 'BYE'
        await answer(bob, bye, 200, 'b')
        assert (await recv(caller)).status == 200


async def test_the_watchdog_names_the_hook_that_blocks_the_loop(serve_with, tmp_path, caplog):
    app_file = tmp_path / 'blocking.py'
    app_file.write_text('import time\n\n\nasync def on_request(request):\n'
                        '    if request.method == "MESSAGE":\n'
                        '        time.sleep(0.4)   # a blocking database call\n'
                        '    return None\n')
    server, url = await serve_with(str(app_file))
    async with ws(url) as caller:
        caller_host = await register_raw(caller, 'alice')
        with caplog.at_level(logging.WARNING, 'aiosip_ws.serve.app'):
            await caller.send(message(caller_host))
            assert (await recv(caller)).status == 404
            await asyncio.sleep(0.2)
    [line] = [r.getMessage() for r in caplog.records if 'blocked the event loop' in r.getMessage()]
    assert 'in on_request (%s:6)' % app_file in line, line
    assert 300 <= int(line.split(' at least ')[1].split(' ms')[0]) < 1500
    assert server.metrics.loop_blocked.labels('app')._value.get() == 1


async def test_reload_new_requests_use_the_new_app_and_a_broken_one_keeps_the_old(
        serve_with, tmp_path, caplog):
    app_file = tmp_path / 'rules.py'
    app_file.write_text('from aiosip_ws.serve.routing import Reply\n\n\n'
                        'async def on_request(request):\n'
                        '    if request.method == "MESSAGE":\n'
                        '        return Reply(403, "old")\n')
    server, url = await serve_with(str(app_file))
    router = server.app_router
    async with ws(url) as caller:
        caller_host = await register_raw(caller, 'alice')
        await caller.send(message(caller_host))
        assert (await recv(caller)).reason == 'old'
        app_file.write_text(app_file.read_text().replace('"old"', '"new"'))
        old = router.current
        assert router.reload('test')
        await eventually(lambda: router.current is not old)
        await caller.send(message(caller_host).replace('msg-1', 'msg-2'))
        assert (await recv(caller)).reason == 'new'
        with caplog.at_level(logging.ERROR, 'aiosip_ws.serve.app'):
            app_file.write_text('def broken(:\n')
            before = router.current
            assert router.reload('test')
            await asyncio.sleep(0.1)
        assert router.current is before
        [line] = [r.getMessage() for r in caplog.records]
        assert line.startswith('test: the app was not reloaded, the old one stays:')
        assert 'SyntaxError' in line
        await caller.send(message(caller_host).replace('msg-1', 'msg-3'))
        assert (await recv(caller)).reason == 'new'


def test_the_dial_plan_example_normalises_numbers_as_its_page_says(monkeypatch):
    from aiosip_ws.serve.app import load_app
    monkeypatch.setenv('GATEWAY_URI', 'sip:gw.example.net:5070')
    monkeypatch.setenv('COUNTRY_CODE', '49')
    normalise = load_app(str(REPO / 'examples/routing/dialplan.py')).target.normalise
    assert normalise('030-123%204567') == '+49301234567'      # separators, one leading 0
    assert normalise('0049(30)1234567') == '+49301234567'      # 00 becomes +
    assert normalise('+49.30.1234567') == '+49301234567'       # + kept
    assert normalise('4930123456') == '4930123456'             # none of these: as it is
    assert normalise('12345') is None and normalise('+1234') is None   # < 6 digits
    assert normalise('alice') is None and normalise('12a4567') is None


async def test_the_dial_plan_example_keeps_user_phone_and_leaves_the_rest(monkeypatch):
    from aiosip_ws.core.codec import parse
    from aiosip_ws.serve.app import load_app
    monkeypatch.setenv('GATEWAY_URI', 'sip:gw.example.net:5070')
    monkeypatch.setenv('COUNTRY_CODE', '49')
    app = load_app(str(REPO / 'examples/routing/dialplan.py'))

    def request(uri):
        return Request(parse(message('x.invalid').replace('sip:bob@example.com SIP', uri + ' SIP')),
                       identity=None, source=None, transport='ws')
    relay = await app.hooks['on_request'](request('sip:030-1234567@example.com;user=phone'))
    assert [t.uri for t in relay.targets] == ['sip:+49301234567@gw.example.net:5070;user=phone']
    assert await app.hooks['on_request'](request('sip:bob@example.com')) is None
    assert await app.hooks['on_request'](request('sip:1234@example.com')) is None


async def test_the_blocklist_example_compares_aors_as_rfc_3261_does(monkeypatch):
    from aiosip_ws.core.codec import parse
    from aiosip_ws.serve.app import load_app
    monkeypatch.setenv('BLOCKED', ' sip:spam@Example.com , sip:robot@example.net')
    app = load_app(str(REPO / 'examples/routing/blocklist.py'))
    text = message('x.invalid').replace('<sip:alice@example.com>;tag=a1',
                                        '"Spam" <sip:spam@EXAMPLE.COM;transport=ws>;tag=z')
    reply = await app.hooks['on_request'](Request(parse(text), identity=None, source=None,
                                                  transport='ws'))
    assert (reply.status, reply.reason) == (403, 'Forbidden (caller blocked)')
    passed = await app.hooks['on_request'](Request(parse(message('x.invalid')), identity=None,
                                                   source=None, transport='ws'))
    assert passed is None


async def test_serve_loads_the_app_reloads_it_on_sighup_and_refuses_a_broken_one(
        serve_process, tmp_path):
    """``aiosip-ws serve --app FILE --app-timeout 2``: the app answers; SIGHUP loads the
    file again (one INFO line); a file that does not load at start is exit status 2 with
    the reason."""
    import signal
    app_file = tmp_path / 'rules.py'
    app_file.write_text('from aiosip_ws.serve.routing import Reply\n\n\n'
                        'async def on_request(request):\n'
                        '    if request.method == "MESSAGE":\n'
                        '        return Reply(480, "first")\n')
    process = serve_process('--listen', 'ws://127.0.0.1:0/', '--app', str(app_file),
                            '--app-timeout', '2')
    url = process.urls[0]
    async with ws(url) as caller:
        caller_host = await register_raw(caller, 'alice')
        await caller.send(message(caller_host))
        assert (await recv(caller)).reason == 'first'
        app_file.write_text(app_file.read_text().replace('"first"', '"second"'))
        process.proc.send_signal(signal.SIGHUP)
        for n in range(50):
            await caller.send(message(caller_host).replace('msg-1', 'msg-%d' % (n + 2)))
            if (await recv(caller)).reason == 'second':
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError('the app was not reloaded')
    code, _, err = process.stop()
    assert code == 0, err
    assert 'SIGHUP: reloaded the app %s' % app_file in err

    app_file.write_text('raise RuntimeError("no database")\n')
    from tests.support.cli import run_aiosip_ws
    done = await asyncio.to_thread(run_aiosip_ws, 'serve', '--listen', 'ws://127.0.0.1:0/',
                                   '--app', str(app_file))
    assert done.returncode == 2
    assert 'cannot be loaded: RuntimeError: no database' in done.stderr, done.stderr


async def test_a_cancel_while_on_failure_decides_ends_the_call_with_487(serve_with):
    deciding = asyncio.Event()

    class SlowVoicemail(App):
        async def on_failure(self, request, response):
            deciding.set()
            await asyncio.sleep(0.5)
            return Relay(Registered('sip:vm@example.com'))

    _, url = await serve_with(SlowVoicemail())
    async with ws(url) as caller, ws(url) as bob, ws(url) as vm:
        caller_host = await register_raw(caller, 'alice')
        await register_raw(bob, 'bob')
        await register_raw(vm, 'vm')
        await caller.send(invite(caller_host))
        assert (await recv(caller)).status == 100
        to_bob = await recv(bob)
        await answer(bob, to_bob, 486, 'b')
        await asyncio.wait_for(deciding.wait(), 5)
        await caller.send(cancel_of(caller_host))
        assert (await recv(caller)).status == 200
        terminated = await recv(caller)
        assert (terminated.status, terminated.cseq) == (487, (10, 'INVITE'))
        await quiet(vm)                                    # the voicemail never rang


def _routing_block(first_line: str) -> str:
    """docs/routing.rst's literal block that holds ``first_line``, dedented."""
    import textwrap

    from tests.support import doc_page
    page = doc_page('routing.rst')
    start = page.index(first_line)
    start = page.rindex('::\n\n', 0, start) + 4
    end = page.find('\n\n', start)
    while end != -1 and page[end + 2:end + 6] == '    ':
        end = page.find('\n\n', end + 2)
    return textwrap.dedent(page[start:end if end != -1 else None])


async def test_the_pages_kamailio_translation_does_what_its_request_route_does(tmp_path):
    from aiosip_ws.core.codec import parse
    from aiosip_ws.serve.app import load_app
    code = _routing_block("if request.from_uri.user == 'spam':")
    (tmp_path / 'translated.py').write_text(
        'import re\nfrom aiosip_ws.serve.routing import Registered, Relay, Reply, Target\n\n'
        + code)
    app = load_app(str(tmp_path / 'translated.py'))

    def request(uri='sip:bob@example.com', sender='alice', method='INVITE'):
        text = invite('x.invalid').replace('INVITE sip:bob@example.com', '%s %s' % (method, uri))
        text = text.replace('CSeq: 10 INVITE', 'CSeq: 10 %s' % method)
        return Request(parse(text.replace('sip:alice@', 'sip:%s@' % sender)), identity=None,
                       source=None, transport='ws')
    refused = await app.hooks['on_request'](request(sender='spam'))
    assert (refused.status, refused.reason) == (403, 'Blocked')
    national = await app.hooks['on_request'](request('sip:0301234567@example.com'))
    assert [t.uri for t in national.targets] == ['sip:+49301234567@10.0.0.5:5060']
    call = await app.hooks['on_request'](request())
    assert call.targets == (Registered('sip:bob@example.com', timeout=20),)
    assert await app.hooks['on_request'](request(method='MESSAGE')) is None
    from aiosip_ws.core.codec import make_response
    from aiosip_ws.serve.routing import Response
    busy = Response(make_response(parse(invite('x.invalid')), 486), by_serve=False, attempt=1)
    assert (await app.hooks['on_failure'](request(), busy)).targets == \
        (Registered('sip:voicemail@example.com'),)


def test_the_pages_app_skeleton_loads_with_every_hook(tmp_path):
    from aiosip_ws.serve.app import load_app
    (tmp_path / 'skeleton.py').write_text(_routing_block('class MyApp(App):'))
    loaded = load_app(str(tmp_path / 'skeleton.py'))
    assert set(loaded.hooks) == {'startup', 'shutdown', 'on_request', 'on_failure',
                                 'on_in_dialog', 'credentials', 'token_identity', 'on_event'}
    assert loaded.startup_takes_serve


async def test_the_app_sees_the_verified_identity_and_never_an_unauthenticated_request():
    """With --users: a MESSAGE without credentials is challenged before the app sees it;
    with them, the app's Request carries Identity(user, aor, 'digest')."""
    import hashlib

    from aiosip_ws.serve.auth import DigestAuthenticator, UserFile
    from aiosip_ws.serve.routing import Identity
    from tests.support.digest import digest_authorization
    seen = []

    class Who(App):
        async def on_request(self, request):
            seen.append((request.method, request.identity))
            return Reply(202 if request.method == 'MESSAGE' else 403)

    ha1 = hashlib.md5(b'alice:example.com:wonderland').hexdigest()
    auth = DigestAuthenticator(UserFile.parse('alice:example.com:%s' % ha1), 'example.com',
                               domains=['example.com'])
    server = RelayServer(auth=auth)
    server.use_app(Who())
    [listener] = await server.start('ws://127.0.0.1:0/')
    try:
        async with ws(listener.bound_url) as alice:
            text = message('alice.invalid')
            await alice.send(text)
            challenge = await recv(alice)
            assert challenge.status == 407 and seen == []
            credentials = digest_authorization(
                challenge.get('Proxy-Authenticate'), method='MESSAGE',
                uri='sip:bob@example.com', username='alice', password='wonderland',
                header='Proxy-Authorization')
            await alice.send(text.replace('CSeq: 1 MESSAGE', 'CSeq: 2 MESSAGE').replace(
                'Max-Forwards: 70\r\n', 'Max-Forwards: 70\r\n%s\r\n' % credentials))
            assert (await recv(alice)).status == 202
    finally:
        await server.close()
    assert seen == [('MESSAGE', Identity('alice', 'sip:alice@example.com', 'digest'))]


async def test_requests_in_progress_finish_with_the_old_app_after_a_reload(serve_with,
                                                                           tmp_path):
    app_file = tmp_path / 'slow.py'
    app_file.write_text('import asyncio\nfrom aiosip_ws.serve.routing import Reply\n\n\n'
                        'async def on_request(request):\n'
                        '    if request.method == "MESSAGE":\n'
                        '        await asyncio.sleep(float(request.body or 0))\n'
                        '        return Reply(480, "old")\n')
    server, url = await serve_with(str(app_file))
    router = server.app_router
    async with ws(url) as caller:
        caller_host = await register_raw(caller, 'alice')
        await caller.send(message(caller_host, '0.6'))         # in progress at the reload
        await asyncio.sleep(0.1)
        old = router.current
        app_file.write_text(app_file.read_text().replace('"old"', '"new"'))
        router.reload('test')
        await eventually(lambda: router.current is not old)
        await caller.send(message(caller_host, '0').replace('msg-1', 'msg-2'))
        first, second = await recv(caller), await recv(caller)
        assert (first.get('Call-ID'), first.reason) == ('msg-2', 'new')
        assert (second.get('Call-ID'), second.reason) == ('msg-1', 'old')
    await eventually(lambda: old.module_name not in __import__('sys').modules)


def test_the_app_options_from_toml_and_their_checks():
    from aiosip_ws.errors import ConfigurationError
    from aiosip_ws.serve.config import ServeConfig
    assert ServeConfig.from_mapping({'app': 'routing.py', 'app-timeout': 2}) == \
        {'app': 'routing.py', 'app_timeout': 2.0}
    with pytest.raises(ConfigurationError, match='--app-timeout 0'):
        ServeConfig(app_timeout=0).validate()
    with pytest.raises(ConfigurationError, match='each worker loads it'):
        ServeConfig(app=App(), workers=2, redis='redis://127.0.0.1:6379/0').validate()


async def test_hook_calls_that_wait_are_bounded_by_max_pending():
    from aiosip_ws.options import RelayLimits
    release = asyncio.Event()

    class Slow(App):
        async def on_request(self, request):
            if request.method == 'MESSAGE':
                await release.wait()
            return None

    server = RelayServer(limits=RelayLimits(max_pending=2))
    router = server.use_app(Slow(), timeout=5)
    [listener] = await server.start('ws://127.0.0.1:0/')
    try:
        async with ws(listener.bound_url) as caller:
            caller_host = await register_raw(caller, 'alice')
            for n in range(3):
                await caller.send(message(caller_host).replace('msg-1', 'msg-%d' % n))
            busy = await recv(caller)
            assert (busy.status, busy.get('Call-ID')) == (503, 'msg-2')
            assert 'wait for the routing app' in busy.reason and busy.get('Retry-After')
            assert router.waiting == 2
            release.set()
            assert {(await recv(caller)).status for _ in range(2)} == {404}
            assert router.waiting == 0
    finally:
        await server.close()


async def test_the_watchdog_leaves_a_sigalrm_handler_alone_and_restores_the_default(caplog):
    import signal

    from aiosip_ws.serve.app import LoopWatchdog

    def mine(signum, frame):
        pass
    previous = signal.signal(signal.SIGALRM, mine)
    try:
        watchdog = LoopWatchdog(lambda: frozenset())
        with caplog.at_level(logging.INFO, 'aiosip_ws.serve.app'):
            watchdog.start()
        assert 'SIGALRM has a handler already' in caplog.text
        assert signal.getsignal(signal.SIGALRM) is mine
        watchdog.stop()
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        watchdog = LoopWatchdog(lambda: frozenset())
        watchdog.start()
        assert signal.getsignal(signal.SIGALRM) == watchdog._alarm
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0
        watchdog.stop()
        assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.signal(signal.SIGALRM, previous)
