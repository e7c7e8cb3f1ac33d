"""``aiosip-ws answer`` and ``aiosip-ws call`` as agents of the media tests: each runs as a
process in the network namespace of another (serve's, so that ICE sees loopback only),
with ``--json``; its JSON lines are its events (an :class:`EventLog`)."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal

from tests.support import REPO
from tests.support.cli import _env, aiosip_ws_command
from tests.support.node import EventLog

#: what every address in an SDP of the media tests must look like
LOOPBACK = '127.'


class CommandAgent(EventLog):
    """``aiosip-ws COMMAND ... --json`` inside the network namespace of process ``netns_pid``."""

    def __init__(self, command: str, *args: str, netns_pid: int, name: str | None = None) -> None:
        super().__init__()
        self.name = name or command
        self.argv = ['nsenter', '--net=/proc/%d/ns/net' % netns_pid, '--',
                     *aiosip_ws_command(command, *args, '--json')]
        self.stderr: collections.deque[str] = collections.deque(maxlen=200)
        self.proc: asyncio.subprocess.Process | None = None
        self.returncode: int | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> CommandAgent:
        self._cond = asyncio.Condition()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, cwd=str(REPO), env=_env(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self._tasks = [asyncio.create_task(self._read_stdout()),
                       asyncio.create_task(self._read_stderr())]
        return self

    async def __aenter__(self) -> CommandAgent:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            async for line in self.proc.stdout:
                text = line.decode('utf-8', 'replace').strip()
                if text:
                    try:
                        event = json.loads(text)
                    except ValueError:
                        event = {'event': '_nonjson', 'line': text}
                    await self._event(event)
        finally:
            await self._ended()

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr.append(line.decode('utf-8', 'replace').rstrip())

    async def wait(self, timeout: float = 30) -> int:
        """Wait for the command to exit by itself; its exit status."""
        assert self.proc is not None
        try:
            self.returncode = await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError('%s did not exit within %s s\n%s' % (self.name, timeout,
                                                                  self._describe())) from None
        for task in self._tasks:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(task, 5)
        return self.returncode

    async def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM (if still running), then its exit status."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                return await self.wait(timeout)
            except TimeoutError:
                self.proc.kill()
        return await self.wait(5)

    def _details(self) -> list[str]:
        lines = ['stderr tail:'] + ['  ' + line for line in list(self.stderr)[-25:]]
        if self.proc is not None and self.proc.returncode is not None:
            lines.append('exit status %s' % self.proc.returncode)
        return lines

    def assert_clean(self) -> None:
        """Nothing on stderr says a task, a connection or a coroutine was left behind."""
        text = '\n'.join(self.stderr)
        for sign in ('Traceback', 'was destroyed but it is pending', 'Unclosed', 'never awaited',
                     'Exception in callback', 'ERROR'):
            assert sign not in text, '%s: %r on stderr\n%s' % (self.name, sign, self._describe())

    def kinds(self) -> list[str]:
        return [event['event'] for event in self.events]


def addresses(event: dict) -> list[str]:
    """The candidate addresses an ``answered`` event lists (both SDPs)."""
    return [item.rpartition(':')[0] for item in event.get('candidates', '').split()]
