"""Debian's baresip (1.0) as the plain SIP phone of the media tests: UDP, G.711 only, no
ICE, no DTLS (RTP/AVP), as desk phones, PBX trunks and carriers speak.

It runs in the private network namespace of another process (serve's), registers there
through serve's UDP listener, plays a WAV file as its microphone (``aufile``) and records
what it hears (``sndfile``: ``dump-*-dec.wav`` in its home).  The test drives it over
``ctrl_tcp`` (netstring JSON: ``dial``, ``accept``, ``hangup``) from a socket made in that
namespace; its call events (``CALL_INCOMING``, ``CALL_ESTABLISHED``, ``CALL_CLOSED``...)
become this agent's events, named by their type.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import socket
from pathlib import Path
from typing import Any

from tests.support import tail
from tests.support.net import netns_socket
from tests.support.node import AgentError, EventLog

MODULES = ('g711.so', 'aufile.so', 'aubridge.so', 'sndfile.so', 'account.so', 'menu.so',
           'ctrl_tcp.so')


def baresip_binary() -> str:
    found = shutil.which('baresip')
    if not found:
        raise RuntimeError('baresip not found (Debian package baresip)')
    return found


class Baresip(EventLog):
    """One baresip process (see the module)."""

    def __init__(self, home: Path, *, user: str, domain: str, proxy: str, tone: Path,
                 netns_pid: int, sip_port: int = 5070, ctrl_port: int = 4444) -> None:
        super().__init__()
        self.name = 'baresip %s' % user
        self.home = home
        self.aor = 'sip:%s@%s' % (user, domain)
        self.proxy, self.tone, self.netns_pid = proxy, tone, netns_pid
        self.sip_port, self.ctrl_port = sip_port, ctrl_port
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._tokens = itertools.count(1)
        self._answers: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def _configure(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        config = {
            'poll_method': 'epoll', 'sip_listen': '127.0.0.1:%d' % self.sip_port,
            'call_local_timeout': '120', 'audio_player': 'aubridge,nowhere',
            'audio_source': 'aufile,%s' % self.tone, 'audio_alert': 'aubridge,nowhere',
            'ausrc_srate': '8000', 'auplay_srate': '8000', 'ausrc_channels': '1',
            'auplay_channels': '1', 'audio_buffer': '20-160', 'rtcp_mux': 'no',
            'jitter_buffer_delay': '1-5', 'module_path': '/usr/lib/baresip/modules',
            'ctrl_tcp_listen': '127.0.0.1:%d' % self.ctrl_port, 'snd_path': str(self.home),
            'net_interface': '127.0.0.1',
        }
        lines = ['%s\t%s' % item for item in config.items()]
        lines += ['module\t%s' % name for name in MODULES if name not in ('account.so',
                                                                         'menu.so',
                                                                         'ctrl_tcp.so')]
        lines += ['module_tmp\taccount.so', 'module_app\tmenu.so', 'module_app\tctrl_tcp.so']
        (self.home / 'config').write_text('\n'.join(lines) + '\n')
        (self.home / 'accounts').write_text(
            '<%s;transport=udp>;outbound="sip:%s;transport=udp";regint=60;'
            'audio_codecs=PCMU,PCMA;answermode=manual\n' % (self.aor, self.proxy))
        (self.home / 'contacts').write_text('')

    async def start(self, timeout: float = 15) -> Baresip:
        self._configure()
        self._cond = asyncio.Condition()
        self.proc = await asyncio.create_subprocess_exec(
            'nsenter', '--net=/proc/%d/ns/net' % self.netns_pid, '--', baresip_binary(),
            '-f', str(self.home), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        self._tasks.append(asyncio.create_task(self._read_log()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                sock = await asyncio.to_thread(netns_socket, self.netns_pid, socket.SOCK_STREAM,
                                               ('127.0.0.1', self.ctrl_port))
                break
            except OSError:
                if self.proc.returncode is not None or loop.time() > deadline:
                    raise RuntimeError('baresip did not start:\n%s'
                                       % tail('\n'.join(self.log))) from None
                await asyncio.sleep(0.1)
        reader, self._writer = await asyncio.open_connection(sock=sock)
        self._tasks.append(asyncio.create_task(self._read_control(reader)))
        return self

    async def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.log.append(line.decode('utf-8', 'replace').rstrip())
            del self.log[:-400]

    async def _read_control(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                length = await reader.readuntil(b':')
                data = await reader.readexactly(int(length[:-1]) + 1)   # JSON and ','
                message = json.loads(data[:-1])
                if message.get('response'):
                    waiter = self._answers.pop(str(message.get('token')), None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(message)
                elif message.get('event'):
                    await self._event(dict(message, event=message.get('type')))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            await self._ended()

    async def command(self, name: str, params: str = '', timeout: float = 5) -> dict[str, Any]:
        """A ctrl_tcp command (a menu command's long name); its response."""
        assert self._writer is not None
        token = str(next(self._tokens))
        waiter = self._answers[token] = asyncio.get_running_loop().create_future()
        data = json.dumps({'command': name, 'params': params, 'token': token}).encode()
        self._writer.write(b'%d:%s,' % (len(data), data))
        try:
            answer = await asyncio.wait_for(waiter, timeout)
        finally:
            self._answers.pop(token, None)
        if not answer.get('ok', False):
            raise AgentError('%s: %s %s failed: %s' % (self.name, name, params, answer))
        return answer

    async def registered(self, timeout: float = 10) -> None:
        """Wait for its REGISTER's 200 (it may come before the control connection: the
        log says it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not any('200 OK' in line and 'binding' in line for line in self.log):
            if loop.time() > deadline:
                raise TimeoutError('%s did not register\n%s' % (self.name, self._describe()))
            await asyncio.sleep(0.05)

    async def dial(self, uri: str) -> None:
        await self.command('dial', uri)

    async def answer(self) -> None:
        await self.command('accept')

    async def hangup(self) -> None:
        await self.command('hangup')

    def recording(self) -> Path:
        """What baresip heard in its last call (sndfile's decoded dump)."""
        found = sorted(self.home.glob('dump-*-dec.wav'), key=lambda p: p.stat().st_mtime)
        if not found:
            raise AgentError('%s recorded nothing\n%s' % (self.name, self._describe()))
        return found[-1]

    def _details(self) -> list[str]:
        return ['baresip log tail:', *('  ' + line for line in self.log[-30:])]

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None and self._writer is not None:
            with contextlib.suppress(Exception):
                await self.command('quit', timeout=2)
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
        self.proc = None

