"""README.rst stays true: its examples run exactly as written, its commands are CI's."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap

from tests.support import REPO
from tests.support.net import free_port

README = (REPO / 'README.rst').read_text()


def code_block(first_line: str) -> str:
    """The ``.. code-block:: python`` whose first line is ``first_line``, dedented."""
    for match in re.finditer(r'\.\. code-block:: python\n\n((?:    .*\n|\n)+)', README):
        code = textwrap.dedent(match.group(1))
        if code.startswith(first_line):
            return code
    raise AssertionError('README.rst has no python block starting with %r' % first_line)


def test_client_and_server_examples_work_as_written(tmp_path):
    (tmp_path / 'server.py').write_text(code_block('# server.py'))
    (tmp_path / 'client.py').write_text(code_block('# client.py'))
    url = 'ws://127.0.0.1:%d/' % free_port()
    env = dict(os.environ, LISTEN_URL=url, SERVER_URL=url, PYTHONUNBUFFERED='1')
    server = subprocess.Popen([sys.executable, '-W', 'error::DeprecationWarning', 'server.py'],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == 'listening on %s' % url
        client = subprocess.run([sys.executable, '-W', 'error::DeprecationWarning', 'client.py'],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stderr
        assert client.stdout.splitlines() == ['REGISTER: 200 OK', 'MESSAGE: 200 OK',
                                              'received: echo: hello']
    finally:
        server.send_signal(signal.SIGINT)
        try:
            _, err = server.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, err


def test_readme_test_command_is_what_ci_runs():
    """The README's test command is the one `.ci/run` calls."""
    command = 'bash tests/run-all.sh'
    assert '\n    %s\n' % command in README
    assert command in (REPO / '.ci' / 'run').read_text()
    assert '\n    pip install . && aiosip-ws serve\n' in README
