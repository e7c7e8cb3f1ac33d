"""JsSIP 3.13 and SIP.js 0.21 user agents in Node: ``NodeAgent`` drives
``tests/interop/node/jssip_agent.js`` or ``sipjs_agent.js`` over a JSON line protocol;
``ensure_node_modules()`` installs them (``npm ci``) unless present."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

from tests.support import REPO, tail

NODE_DIR = REPO / "tests" / "interop" / "node"
NODE_PACKAGES = ("jssip", "sip.js", "ws", "esbuild", "hep-js")

AGENT_SCRIPTS = {
    "jssip": NODE_DIR / "jssip_agent.js",
    "sipjs": NODE_DIR / "sipjs_agent.js",
}


def node_binary() -> str:
    node = os.environ.get("NODE_BIN") or shutil.which("node")
    if not node:
        raise RuntimeError("node not found (Node.js 18+ is needed; set NODE_BIN)")
    return node


def ensure_node_modules(*, timeout: float = 600) -> None:
    """Install tests/interop/node dependencies (``npm ci``) unless present."""
    node = node_binary()
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    m = re.match(r"v(\d+)", out.stdout.strip())
    if not m or int(m.group(1)) < 18:
        raise RuntimeError(f"Node.js 18+ needed, found {out.stdout.strip() or out.stderr.strip()}")
    mods = NODE_DIR / "node_modules"
    if all((mods / pkg / "package.json").exists() for pkg in NODE_PACKAGES):
        return
    npm = shutil.which("npm")
    if not npm:
        raise RuntimeError(f"node_modules missing in {NODE_DIR} and npm not found")
    sub = "ci" if (NODE_DIR / "package-lock.json").exists() else "install"
    cmd = [npm, sub, "--no-audit", "--no-fund"]
    try:
        res = subprocess.run(cmd, cwd=NODE_DIR, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"`{' '.join(cmd)}` in {NODE_DIR} timed out after {timeout}s") from exc
    if res.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` in {NODE_DIR} failed ({res.returncode}):\n"
            f"{tail(res.stdout)}\n{tail(res.stderr)}")
    missing = [p for p in NODE_PACKAGES if not (mods / p / "package.json").exists()]
    if missing:
        raise RuntimeError(f"npm {sub} succeeded but {missing} are still missing in {mods}")


def _summarize(ev: dict) -> str:
    name = ev.get("event")
    if name == "raw":
        first = ev.get("data", "").split("\r\n", 1)[0]
        return f"raw[{ev.get('dir')}] {first!r}"
    rest = {k: v for k, v in ev.items() if k not in ("event", "stack", "headers")}
    return f"{name} {json.dumps(rest)[:200]}" if rest else str(name)


class AgentError(RuntimeError):
    pass


class EventLog:
    """The events an agent reports, and waiting for them (NodeAgent, BrowserAgent)."""

    name = "agent"

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._returned: set[int] = set()
        self._cond: asyncio.Condition | None = None
        self._eof = False

    async def _event(self, ev: dict) -> None:
        assert self._cond is not None
        async with self._cond:
            self.events.append(ev)
            self._cond.notify_all()

    async def _ended(self) -> None:
        """No more events will come."""
        assert self._cond is not None
        async with self._cond:
            self._eof = True
            self._cond.notify_all()

    def event_names(self) -> list[str]:
        return [e.get("event") for e in self.events]

    def _details(self) -> list[str]:
        """More lines for a failure report (a log tail, an exit status)."""
        return []

    async def _settle(self) -> None:
        """Before reporting that the agent ended: let it finish."""

    def _describe(self) -> str:
        lines = [f"events seen by {self.name} ({len(self.events)}):"]
        lines += ["  " + _summarize(e) for e in self.events[-60:]]
        return "\n".join(lines + self._details())

    async def wait_event(
        self,
        name: str,
        timeout: float = 10,
        predicate: Callable[[dict], bool] | None = None,
        *,
        consume: bool = True,
    ) -> dict:
        """Wait for an event called ``name`` (and matching ``predicate``).

        Raises TimeoutError listing the events seen so far, or AgentError
        if the agent exits (or reports {"event":"error"}) first."""
        assert self._cond is not None, f"{self.name} is not started"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._cond:
            while True:
                for i, ev in enumerate(self.events):
                    if i in self._returned or ev.get("event") != name:
                        continue
                    if predicate is not None and not predicate(ev):
                        continue
                    if consume:
                        self._returned.add(i)
                    return ev
                if name != "error":
                    errors = [e for e in self.events if e.get("event") == "error"]
                    if errors:
                        raise AgentError(
                            f"{self.name} reported an error while waiting for "
                            f"{name!r}: {errors[0].get('message')}\n{self._describe()}")
                if self._eof:
                    await self._settle()
                    raise AgentError(
                        f"{self.name} exited before event {name!r}\n{self._describe()}")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no {name!r} event from {self.name} within {timeout}s\n"
                        f"{self._describe()}")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._cond.wait(), remaining)


class NodeAgent(EventLog):
    """One JsSIP or SIP.js user agent in a Node subprocess.

    ::

        async with NodeAgent("jssip", url=peer.ws_url, aor="sip:alice@example.com",
                             password="secret") as alice:
            await alice.send({"cmd": "register"})
            await alice.wait_event("registered")

    ``wait_event`` returns the first matching event that no earlier
    ``wait_event`` call returned, so waiting twice for "registered" after
    two registrations works. ``events`` holds everything received.
    """

    def __init__(
        self,
        kind: str,
        *,
        url: str,
        aor: str,
        user: str | None = None,
        password: str | None = None,
        display: str | None = None,
        expires: int | None = None,
        keepalive: int | None = None,
        user_agent: str | None = None,
        debug: bool = False,
        env: dict | None = None,
        name: str | None = None,
        stderr_lines: int = 200,
    ):
        kind = {"sip.js": "sipjs", "JsSIP": "jssip"}.get(kind, kind)
        if kind not in AGENT_SCRIPTS:
            raise ValueError(f"kind must be one of {sorted(AGENT_SCRIPTS)}")
        self.kind = kind
        self.name = name or f"{kind}:{aor}"
        self.args = [str(AGENT_SCRIPTS[kind]), "--url", url, "--aor", aor]
        for flag, value in (("--user", user), ("--password", password),
                            ("--display", display), ("--expires", expires),
                            ("--keepalive", keepalive), ("--user-agent", user_agent)):
            if value is not None:
                self.args += [flag, str(value)]
        if debug:
            self.args.append("--debug")
        self.env = dict(os.environ)
        if env:
            self.env.update({k: str(v) for k, v in env.items()})
        super().__init__()
        self.stderr: collections.deque = collections.deque(maxlen=stderr_lines)
        self.proc: asyncio.subprocess.Process | None = None
        self.returncode: int | None = None
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> NodeAgent:
        self._cond = asyncio.Condition()
        self.proc = await asyncio.create_subprocess_exec(
            node_binary(), *self.args, cwd=str(NODE_DIR), env=self.env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=16 * 1024 * 1024)
        self._tasks = [asyncio.create_task(self._read_stdout()),
                       asyncio.create_task(self._read_stderr())]
        return self

    async def __aenter__(self) -> NodeAgent:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self, timeout: float = 8.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.send({"cmd": "quit"})
            with contextlib.suppress(Exception):
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.wait_for(proc.wait(), 5)
        for t in self._tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(t, 2)
        self.returncode = proc.returncode
        return self.returncode

    # -- I/O --------------------------------------------------------------

    async def _read_stdout(self) -> None:
        assert self.proc and self.proc.stdout
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                text = line.decode("utf-8", "replace").strip()
                if not text:
                    continue
                try:
                    ev = json.loads(text)
                    if not isinstance(ev, dict):
                        raise ValueError
                except ValueError:
                    ev = {"event": "_nonjson", "line": text}
                await self._event(ev)
        finally:
            await self._ended()

    async def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                break
            self.stderr.append(line.decode("utf-8", "replace").rstrip("\n"))

    async def send(self, command: dict | None = None, **fields: Any) -> None:
        """Send one command, e.g. ``send({"cmd": "register"})`` or
        ``send(cmd="message", to="sip:bob@example.com", body="hi")``."""
        cmd = dict(command or {}, **fields)
        if self.proc is None or self.proc.returncode is not None:
            raise AgentError(f"{self.name} is not running (events: {self.event_names()})")
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()

    async def register(self, timeout: float = 10) -> dict:
        await self.send(cmd="register")
        return await self.wait_event("registered", timeout=timeout)

    async def unregister(self, timeout: float = 10, *, all: bool = False) -> dict:
        """Un-REGISTER; ``all=True`` asks JsSIP for ``Contact: *`` (every binding)."""
        await self.send(cmd="unregister", all=all)
        return await self.wait_event("unregistered", timeout=timeout)

    async def message(self, to: str, body: str, *, content_type: str | None = None) -> None:
        cmd = {"cmd": "message", "to": to, "body": body}
        if content_type:
            cmd["contentType"] = content_type
        await self.send(cmd)

    # -- events -----------------------------------------------------------

    def raw(self, dir: str | None = None) -> list[str]:
        """Texts of the WebSocket data frames seen so far (``dir`` "in"/"out")."""
        return [e.get("data", "") for e in self.events
                if e.get("event") == "raw" and (dir is None or e.get("dir") == dir)]

    def sip(self, dir: str | None = None, start: str | None = None) -> list[str]:
        """Raw SIP messages (frames that are not just CRLF keep-alives),
        optionally only those whose first line starts with ``start``
        (e.g. "REGISTER", "MESSAGE", "SIP/2.0 401")."""
        out = []
        for data in self.raw(dir):
            if not data.strip("\r\n"):
                continue
            if start is None or data.startswith(start):
                out.append(data)
        return out

    def _details(self) -> list[str]:
        lines = []
        if self.stderr:
            lines.append("stderr tail:")
            lines += ["  " + s for s in list(self.stderr)[-20:]]
        if self.proc is not None and self.proc.returncode is not None:
            lines.append(f"process exited with code {self.proc.returncode}")
        return lines

    async def _settle(self) -> None:
        if self.proc is not None:        # let the process finish so the exit code is known
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), 1)
