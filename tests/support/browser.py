"""JsSIP and SIP.js in Debian's Chromium, with real WebRTC: ``Browser`` runs one headless
Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no
port, so the browser may live in another network namespace than the test), and each
``BrowserAgent`` is one page (``tests/interop/browser/jssip.html`` or ``sipjs.html``)
reporting the same events as the Node agents (``NodeAgent``), plus calls.

The pages load JsSIP and SIP.js from npm, bundled for the browser by esbuild
(``ensure_bundles``, into ``tests/interop/node/build/``).  The microphone is Chromium's
fake device (a beep); ICE uses loopback host candidates only
(``--allow-loopback-in-peer-connection``, no mDNS names), which, with serve and the
browser in one private network namespace (``PRIVATE_NETWORK``), keeps media on loopback.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.support import REPO, tail
from tests.support.node import NODE_DIR, AgentError, EventLog, ensure_node_modules

PAGES = REPO / 'tests' / 'interop' / 'browser'
BUILD = NODE_DIR / 'build'
#: bundle -> (entry module in node_modules, the global it defines)
BUNDLES = {'jssip': ('jssip/lib/JsSIP.js', 'JsSIP'), 'sipjs': ('sip.js/lib/index.js', 'SIP')}

CHROMIUM_FLAGS = (
    '--headless=new', '--no-sandbox', '--remote-debugging-pipe', '--no-first-run',
    '--disable-gpu', '--disable-dev-shm-usage', '--mute-audio', '--disable-extensions',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
    '--allow-file-access-from-files', '--allow-loopback-in-peer-connection',
    '--autoplay-policy=no-user-gesture-required',
    # every page runs as if in front: a page in the background would get its timers
    # throttled to one a second (a WebAudio measurement of 20 x 50 ms would take 20 s)
    '--disable-background-timer-throttling', '--disable-backgrounding-occluded-windows',
    '--disable-renderer-backgrounding',
    '--disable-features=WebRtcHideLocalIpsWithMdns,MediaRouter,OptimizationHints',
)


def chromium_binary() -> str:
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError('Chromium not found (Debian package chromium)')


def ensure_bundles(*, timeout: float = 120) -> None:
    """Bundle JsSIP and SIP.js for the pages (esbuild from the npm packages) unless the
    bundles are newer than ``package-lock.json``."""
    ensure_node_modules()
    esbuild = NODE_DIR / 'node_modules' / '.bin' / 'esbuild'
    if not esbuild.exists():
        raise RuntimeError('esbuild missing in %s/node_modules (npm ci)' % NODE_DIR)
    lock = (NODE_DIR / 'package-lock.json').stat().st_mtime
    BUILD.mkdir(exist_ok=True)
    for name, (entry, global_name) in BUNDLES.items():
        out = BUILD / ('%s.js' % name)
        if out.exists() and out.stat().st_mtime >= lock:
            continue
        result = subprocess.run(
            [str(esbuild), '--bundle', '--format=iife', '--platform=browser',
             '--global-name=%s' % global_name, '--log-level=warning',
             str(NODE_DIR / 'node_modules' / entry), '--outfile=%s' % out],
            capture_output=True, text=True, timeout=timeout, cwd=NODE_DIR)
        if result.returncode != 0:
            raise RuntimeError('esbuild %s failed: %s' % (name, tail(result.stderr)))


class Browser:
    """One headless Chromium; ``netns_pid``: run it in that process's network namespace."""

    def __init__(self, profile: Path, *, netns_pid: int | None = None,
                 microphone: Path | None = None) -> None:
        self.profile = profile
        self.netns_pid = netns_pid
        #: a WAV file the fake microphone plays (looped) instead of Chromium's beep
        self.microphone = microphone
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=200)
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict]] = {}
        self._agents: dict[str, BrowserAgent] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._writer: asyncio.WriteTransport | None = None

    async def __aenter__(self) -> Browser:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        to_browser_r, to_browser_w = os.pipe()        # Chromium reads commands on its fd 3
        from_browser_r, from_browser_w = os.pipe()    # and writes answers on its fd 4
        command = [chromium_binary(), *CHROMIUM_FLAGS, '--user-data-dir=%s' % self.profile,
                   'about:blank']
        if self.microphone is not None:
            command.insert(-1, '--use-file-for-fake-audio-capture=%s' % self.microphone)
        if self.netns_pid is not None:
            command = ['nsenter', '--net=/proc/%d/ns/net' % self.netns_pid, '--', *command]
        shell = 'exec "$@" 3<&%d 4>&%d' % (to_browser_r, from_browser_w)
        self.proc = subprocess.Popen(['bash', '-c', shell, '_', *command],   # dash: fds < 10
                                     pass_fds=(to_browser_r, from_browser_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_browser_r)
        os.close(from_browser_w)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 26)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(from_browser_r, 'rb', 0))
        self._writer, _ = await loop.connect_write_pipe(asyncio.Protocol,
                                                         os.fdopen(to_browser_w, 'wb', 0))
        self._tasks = [asyncio.create_task(self._read(reader)),
                       asyncio.create_task(asyncio.to_thread(self._read_log))]
        try:
            await self.command('Browser.getVersion', timeout=30)
        except Exception as exc:
            await self.close()
            raise RuntimeError('Chromium did not start: %s\n%s' % (exc, '\n'.join(self.log))) from exc

    def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.decode('utf-8', 'replace').rstrip())

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = json.loads((await reader.readuntil(b'\0'))[:-1])
                waiter = self._waiting.pop(message.get('id', -1), None)
                if waiter is not None:
                    if not waiter.done():
                        waiter.set_result(message)
                    continue
                agent = self._agents.get(message.get('sessionId', ''))
                if agent is not None:
                    await agent._devtools_event(message.get('method', ''), message.get('params', {}))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(AgentError('Chromium went away'))
            for agent in self._agents.values():
                await agent._ended()

    async def command(self, method: str, params: dict | None = None, *, session: str | None = None,
                      timeout: float = 15) -> dict:
        """One DevTools command; its ``result`` (AgentError on an ``error``)."""
        assert self._writer is not None
        self._next_id += 1
        message: dict[str, Any] = {'id': self._next_id, 'method': method, 'params': params or {}}
        if session is not None:
            message['sessionId'] = session
        waiter = self._waiting[self._next_id] = asyncio.get_running_loop().create_future()
        self._writer.write(json.dumps(message).encode() + b'\0')
        answer = await asyncio.wait_for(waiter, timeout)
        if 'error' in answer:
            raise AgentError('%s: %s' % (method, answer['error']))
        return answer.get('result', {})

    async def agent(self, kind: str, *, url: str, aor: str, user: str | None = None,
                    password: str | None = None, name: str | None = None) -> BrowserAgent:
        """A new page running ``kind`` (jssip, sipjs), started (its UA connecting)."""
        target = (await self.command('Target.createTarget', {'url': 'about:blank'}))['targetId']
        session = (await self.command('Target.attachToTarget',
                                      {'targetId': target, 'flatten': True}))['sessionId']
        agent = BrowserAgent(self, kind, target, session, name or '%s:%s' % (kind, aor))
        self._agents[session] = agent
        await agent._open({'url': url, 'aor': aor, 'user': user, 'password': password})
        return agent

    async def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None and self._writer is not None:
            with contextlib.suppress(Exception):
                await self.command('Browser.close', timeout=5)
        try:
            await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 10)
        except asyncio.TimeoutError:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)
        if self._writer is not None:
            self._writer.close()
        for task in self._tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, AgentError):
                await asyncio.wait_for(task, 5)
        self.proc = None


class BrowserAgent(EventLog):
    """One page of a :class:`Browser`: JsSIP or SIP.js as a browser runs it."""

    def __init__(self, browser: Browser, kind: str, target: str, session: str, name: str) -> None:
        super().__init__()
        if kind not in BUNDLES:
            raise ValueError('kind must be one of %s' % sorted(BUNDLES))
        self.browser = browser
        self.kind = kind
        self.target = target
        self.session = session
        self.name = name
        self.console: collections.deque[str] = collections.deque(maxlen=100)
        self._cond = asyncio.Condition()

    async def _open(self, options: dict) -> None:
        for method, params in (('Runtime.enable', {}), ('Runtime.addBinding', {'name': 'report'}),
                               ('Page.enable', {})):
            await self.browser.command(method, params, session=self.session)
        page = (PAGES / ('%s.html' % self.kind)).as_uri()
        await self.browser.command('Page.navigate', {'url': page}, session=self.session)
        for _ in range(200):
            if await self.evaluate("typeof window.agent === 'object'"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AgentError('%s did not load %s\n%s' % (self.name, page, self._describe()))
        await self.run('start', options)
        await self.wait_event('started')

    async def _devtools_event(self, method: str, params: dict) -> None:
        if method == 'Runtime.bindingCalled' and params.get('name') == 'report':
            await self._event(json.loads(params['payload']))
        elif method == 'Runtime.consoleAPICalled':
            self.console.append('%s: %s' % (params.get('type'), ' '.join(
                str(arg.get('value', arg.get('description', ''))) for arg in params.get('args', []))))
        elif method == 'Runtime.exceptionThrown':
            details = params.get('exceptionDetails', {})
            await self._event({'event': 'error', 'message': details.get('exception', {}).get(
                'description', details.get('text'))})

    async def evaluate(self, expression: str) -> Any:
        result = await self.browser.command('Runtime.evaluate', {
            'expression': expression, 'awaitPromise': True, 'returnByValue': True},
            session=self.session)
        if 'exceptionDetails' in result:
            raise AgentError('%s: %s failed: %s' % (self.name, expression, result['exceptionDetails']))
        return result.get('result', {}).get('value')

    async def run(self, command: str, *args: Any) -> Any:
        """``window.agent.COMMAND(ARGS...)`` in the page."""
        return await self.evaluate('window.agent.%s(%s)' % (
            command, ', '.join(json.dumps(arg) for arg in args)))

    # the commands of the Node agents, and calls
    async def register(self, timeout: float = 10) -> dict:
        await self.run('register')
        return await self.wait_event('registered', timeout=timeout)

    async def message(self, to: str, body: str) -> None:
        await self.run('message', to, body)

    async def call(self, target: str) -> None:
        await self.run('call', target)

    async def answer(self) -> None:
        await self.run('answer')

    async def hangup(self) -> None:
        await self.run('hangup')

    def _details(self) -> list[str]:
        lines = ['console tail:', *('  ' + line for line in list(self.console)[-20:])]
        return lines + ['browser log tail:', *('  ' + line for line in list(self.browser.log)[-10:])]
