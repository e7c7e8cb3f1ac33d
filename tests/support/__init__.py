"""Helpers shared by the test suite, each written once: free ports, certificates, a raw
WebSocket client, the RFC 4475 vectors and launchers for real peers (dnsmasq, Kamailio,
aiosip-ws serve, the Node agents)."""
from __future__ import annotations

import asyncio
import re
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

#: the repository's top folder
REPO = Path(__file__).resolve().parent.parent.parent
#: the manual's pages (README.rst is the first, the rest are here)
DOCS = REPO / 'docs'
#: RFC 4475's torture messages, one per file (tests/rfc4475/{valid,invalid})
RFC4475_DIR = REPO / 'tests' / 'rfc4475'


def doc_page(name: str) -> str:
    """The text of ``docs/<name>``, for the tests that run a page's examples as written."""
    return (DOCS / name).read_text()


def code_block(first_line: str, text: str, name: str) -> str:
    """The ``.. code-block:: python`` of ``text`` (the page ``name``) whose first line is
    ``first_line``, dedented: a page's example, to run as written."""
    for match in re.finditer(r'\.\. code-block:: python\n\n((?:    .*\n|\n)+)', text):
        code = textwrap.dedent(match.group(1))
        if code.startswith(first_line):
            return code
    raise AssertionError('%s has no python block starting with %r' % (name, first_line))


def tail(text: str, lines: int = 40) -> str:
    """The last ``lines`` lines of ``text`` (a peer's log, for error messages)."""
    return '\n'.join(text.splitlines()[-lines:])


def debian_binary(name: str, package: str) -> str:
    """The path of program ``name`` (on PATH, else /usr/bin), which Debian's ``package``
    installs; RuntimeError saying so when it is missing."""
    found = shutil.which(name) or '/usr/bin/' + name
    if not Path(found).exists():
        raise RuntimeError('%s not found (Debian package %s)' % (name, package))
    return found


async def eventually(check: Callable[[], bool], timeout: float = 5.0,
                     step: float = 0.01) -> None:
    """Wait until ``check()`` is true, looking every ``step`` seconds; TimeoutError after
    ``timeout`` (Python 3.10 has no asyncio.timeout)."""
    async def poll() -> None:
        while not check():
            await asyncio.sleep(step)
    await asyncio.wait_for(poll(), timeout)
