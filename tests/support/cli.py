"""``aiosip-ws`` commands as real processes, run from the repository's top folder with
unbuffered output and DeprecationWarnings as errors; ``ServeProcess`` is ``aiosip-ws
serve`` (the ``serve_process`` fixture starts them)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.support import REPO


def aiosip_ws_command(*args: str) -> list[str]:
    """``python -W error::DeprecationWarning -m aiosip_ws ARGS``."""
    return [sys.executable, '-W', 'error::DeprecationWarning', '-m', 'aiosip_ws', *args]


def _env() -> dict[str, str]:
    # the standard loop unless a test asks for another (--loop, or its own environment)
    env = {'AIOSIP_WS_LOOP': 'asyncio'}
    env.update(os.environ, PYTHONUNBUFFERED='1')
    return env


def run_aiosip_ws(*args: str, timeout: float = 60,
                  stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ``aiosip-ws ARGS`` to its end, its output captured (text)."""
    return subprocess.run(aiosip_ws_command(*args), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=_env(), input=stdin)


#: runs a command in a network namespace of its own, with only loopback, up; 127.0.0.2 is
#: added to it because aioice (aiortc's ICE) never offers 127.0.0.1 as a candidate
PRIVATE_NETWORK = ('unshare', '--net', '--', 'sh', '-c',
                   'ip link set lo up && ip addr add 127.0.0.2/8 dev lo && exec "$@"', '_')


def start_aiosip_ws(*args: str, prefix: tuple[str, ...] = (),
                    env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``aiosip-ws ARGS`` (after ``prefix``, e.g. ``PRIVATE_NETWORK``; ``env``: more
    environment variables), its stdout and stderr piped (text)."""
    return subprocess.Popen([*prefix, *aiosip_ws_command(*args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**_env(), **(env or {})})


class ServeProcess:
    """``python -m aiosip_ws serve`` as a real process, its listening URLs read from stdout."""

    def __init__(self, *args: str, prefix: tuple[str, ...] = ()) -> None:
        self.proc = start_aiosip_ws('serve', *args, prefix=prefix)
        self.urls: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if 'listening on' in line:
                self.urls.append(line.split('listening on', 1)[1].strip())
                if len(self.urls) == max(1, sum(1 for a in args if a == '--listen')):
                    break
        if not self.urls:
            self.proc.kill()
            raise RuntimeError('aiosip-ws serve did not start: %s' % self.proc.stderr.read())

    def stop(self, timeout: float = 15, *, terminate: bool = True) -> tuple[int, str, str]:
        """Wait for the process to end (sending SIGTERM first unless ``terminate`` is False)."""
        if terminate and self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out, err


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM,
                 timeout: float = 10.0) -> None:
    """Send ``sig`` to a helper program (a peer, a capture) and wait for it to end; killed
    after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def interrupt(process: subprocess.Popen) -> tuple[int, str]:
    """SIGINT to a program run by a test (as Ctrl-C would); its exit status and stderr,
    within 15 s (then it is killed and the test fails)."""
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, err
