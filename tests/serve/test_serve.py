"""`aiosip-ws serve`: the WebSocket registrar and relay, in-process and as a real process."""
from __future__ import annotations

import asyncio
import signal

from websockets.asyncio.client import connect

from aiosip_ws import Application
from aiosip_ws.core.codec import parse


class UA:
    """A user agent: one aiosip-ws Application (so one WebSocket connection) per user."""

    def __init__(self, user: str, url: str) -> None:
        self.user, self.url = user, url
        self.aor = 'sip:%s@example.com' % user
        self.app = Application()
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.app.router.add_route('MESSAGE', self._on_message)
        self.app.router.add_route('OPTIONS', self._on_message)

    async def _on_message(self, dialog, msg):
        await self.inbox.put(msg)
        dialog.reply(msg, 200)

    async def register(self, expires: int = 60):
        self.reg = await self.app.start_dialog(self.aor, self.aor, remote_addr=self.url)
        return await asyncio.wait_for(self.reg.register(expires=expires), 5)

    async def send(self, method: str, to: str, body: str | None = None):
        dialog = await self.app.start_dialog(self.aor, to, remote_addr=self.url)
        return await asyncio.wait_for(dialog.send_message(
            method, content_type='text/plain' if body is not None else None, payload=body), 5)

    @property
    def connection(self):
        [conn] = self.app.connections
        return conn

    async def close(self):
        await self.app.close()


async def test_relay_message_between_two_registered_clients(relay):
    """RFC 7118 B.1, RFC 3261 §18.2.2: MESSAGE relayed over the callee's own connection, response back."""
    server, url = relay
    alice, bob = UA('alice', url), UA('bob', url)
    try:
        assert (await alice.register()).status_code == 200
        assert (await bob.register()).status_code == 200
        response = await alice.send('MESSAGE', 'sip:bob@example.com', 'hello bob\r\nline 2')
        assert response.status_code == 200
        got = await bob.inbox.get()
        assert got.payload == 'hello bob\r\nline 2'
        assert got.request_uri == server.registrar.lookup('sip:bob@example.com')[0].contact.uri.__str__()
        vias = got.raw.vias
        assert [v.transport for v in vias] == ['WS', 'WS'] and vias[1].host.endswith('.invalid')
        assert int(got.headers['Max-Forwards']) == 69
        # and the other way round
        response = await bob.send('MESSAGE', 'sip:alice@example.com', 'hi alice')
        assert response.status_code == 200 and (await alice.inbox.get()).payload == 'hi alice'
        assert response.raw.vias[0].host == bob.connection.via_host      # our Via was removed
        assert len(response.raw.vias) == 1
    finally:
        await alice.close()
        await bob.close()


async def test_unknown_aor_gets_404_and_options_to_the_server_200(relay):
    _, url = relay
    alice = UA('alice', url)
    try:
        assert (await alice.send('MESSAGE', 'sip:nobody@example.com', 'x')).status_code == 404
        response = await alice.send('OPTIONS', 'sip:example.com')
        assert response.status_code == 200 and 'MESSAGE' in response.headers['Allow']
    finally:
        await alice.close()


async def test_register_lists_bindings_and_expires_zero_removes(relay):
    """RFC 3261 10.3: 200 OK lists the current Contacts; Expires: 0 removes the binding."""
    server, url = relay
    alice = UA('alice', url)
    try:
        response = await alice.register(expires=120)
        [contact] = response.headers.getall('Contact')
        assert contact.startswith('<sip:alice@') and 'transport=ws' in contact
        assert contact.endswith(';expires=120')
        assert server.registrar.lookup('sip:alice@example.com')
        dialog = await alice.app.start_dialog(alice.aor, alice.aor, remote_addr=url)
        response = await asyncio.wait_for(dialog.register(expires=0), 5)
        assert response.status_code == 200 and 'Contact' not in response.headers
        assert not server.registrar.lookup('sip:alice@example.com')
    finally:
        await alice.close()


async def test_bindings_go_when_the_connection_closes(relay):
    """RFC 5626 §5.3 (RFC5626-5.3-a): a closed WebSocket connection takes its bindings with it."""
    server, url = relay
    alice, bob = UA('alice', url), UA('bob', url)
    try:
        await alice.register()
        await bob.register()
        await bob.close()
        for _ in range(50):
            if not server.registrar.lookup('sip:bob@example.com'):
                break
            await asyncio.sleep(0.02)
        assert not server.registrar.lookup('sip:bob@example.com')
        assert (await alice.send('MESSAGE', 'sip:bob@example.com', 'x')).status_code == 404
    finally:
        await alice.close()


async def test_serve_process_relays_and_shuts_down_with_1001(serve_process):
    """The real `python -m aiosip_ws serve`: relay between two clients, 404, then SIGTERM:
    every client sees close code 1001, the process exits 0 with no task left behind."""
    process = serve_process('--listen', 'ws://127.0.0.1:0/', '--log-level', 'INFO')
    [url] = process.urls
    alice, bob = UA('alice', url), UA('bob', url)
    try:
        await alice.register()
        await bob.register()
        assert (await alice.send('MESSAGE', 'sip:bob@example.com', 'via a process')).status_code == 200
        assert (await bob.inbox.get()).payload == 'via a process'
        assert (await bob.send('MESSAGE', 'sip:carol@example.com', 'x')).status_code == 404
        async with connect(url, subprotocols=['sip'], proxy=None) as raw:
            process.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(raw.wait_closed(), 10)
            assert raw.close_code == 1001
        for ua in (alice, bob):
            await asyncio.wait_for(ua.connection.closed, 10) if ua.app.connections else None
        code, out, err = await asyncio.get_running_loop().run_in_executor(
            None, lambda: process.stop(terminate=False))
        assert code == 0, err
        assert 'stopped cleanly' in out and 'left behind' not in err
    finally:
        await alice.close()
        await bob.close()


async def test_serve_process_client_close_codes(serve_process):
    """Each connected client observes 1001 (going away) on shutdown (RFC 6455 §7.4.1)."""
    process = serve_process('--listen', 'ws://127.0.0.1:0/')
    [url] = process.urls
    sockets = [await connect(url, subprotocols=['sip'], proxy=None) for _ in range(3)]
    try:
        process.proc.send_signal(signal.SIGINT)
        for ws in sockets:
            await asyncio.wait_for(ws.wait_closed(), 10)
        assert [ws.close_code for ws in sockets] == [1001, 1001, 1001]
    finally:
        for ws in sockets:
            await ws.close()
    code, out, _ = await asyncio.get_running_loop().run_in_executor(
        None, lambda: process.stop(terminate=False))
    assert code == 0 and 'stopped cleanly' in out


async def test_serve_process_over_wss(serve_process, certs):
    process = serve_process('--listen', 'wss://127.0.0.1:0/', '--tls-cert', str(certs.cert),
                            '--tls-key', str(certs.key))
    [url] = process.urls
    assert url.startswith('wss://')
    async with connect(url, subprotocols=['sip'], proxy=None, ssl=certs.client_context()) as ws:
        await ws.send('OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WSS t.invalid;branch=z9hG4bKt\r\n'
                      'From: <sip:t@example.com>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: t1\r\n'
                      'CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\r\n')
        assert parse(await asyncio.wait_for(ws.recv(), 5)).status == 200


async def test_serve_process_connection_cap(serve_process):
    """`--max-connections-per-ip`: a further handshake from the same address gets HTTP 503."""
    from websockets.exceptions import InvalidStatus
    process = serve_process('--listen', 'ws://127.0.0.1:0/', '--max-connections-per-ip', '1')
    [url] = process.urls
    async with connect(url, subprotocols=['sip'], proxy=None):
        try:
            await connect(url, subprotocols=['sip'], proxy=None)
        except InvalidStatus as exc:
            assert exc.response.status_code == 503
        else:
            raise AssertionError('the second connection was accepted')


def test_serve_logs_the_bound_address_not_port_0(serve_process):
    """With ``--listen ws://127.0.0.1:0/`` the log names the port the kernel chose, the one
    stdout shows."""
    process = serve_process('--listen', 'ws://127.0.0.1:0/', '--log-level', 'INFO')
    [url] = process.urls
    assert not url.endswith(':0/')
    code, _, err = process.stop()
    assert code == 0, err
    assert 'listening for SIP over WebSocket on %s' % url in err
    assert ':0/' not in err


def test_serve_collects_young_objects_less_often():
    """serve raises the young generation's threshold (its transactions live 32 s), keeps a
    higher one and leaves a disabled collector (threshold 0) alone."""
    import gc

    from aiosip_ws.serve.run import GC_YOUNG_THRESHOLD, _collect_less
    saved = gc.get_threshold()
    try:
        for before, after in (((700, 10, 10), (GC_YOUNG_THRESHOLD, 10, 10)),
                              ((50_000, 5, 7), (50_000, 5, 7)), ((0, 10, 10), (0, 10, 10))):
            gc.set_threshold(*before)
            _collect_less()
            assert gc.get_threshold() == after
    finally:
        gc.set_threshold(*saved)
