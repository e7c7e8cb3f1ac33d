"""The aiosip 0.2.0 compatibility shim (aiosip_ws.adapter.compat): one module, stdlib left as found."""
from __future__ import annotations

import asyncio
import collections
import subprocess
import sys

import aiosip_ws
from aiosip_ws.adapter.compat import import_aiosip, legacy_coroutine, patched_stdlib


def test_import_works_with_deprecation_warnings_as_errors():
    """`import aiosip_ws` under -W error::DeprecationWarning, in a fresh interpreter."""
    code = ('import asyncio, collections, aiosip_ws, aiosip; '
            'assert aiosip is aiosip_ws.aiosip; '
            'assert "MutableMapping" not in vars(collections); '
            'assert getattr(asyncio, "coroutine", None) is None or sys.version_info < (3, 11)')
    result = subprocess.run([sys.executable, '-W', 'error::DeprecationWarning', '-c',
                             'import sys; ' + code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_stdlib_is_left_as_it_was_found():
    assert 'MutableMapping' not in vars(collections)
    if sys.version_info >= (3, 11):
        assert not hasattr(asyncio, 'coroutine')
    with patched_stdlib():
        assert asyncio.coroutine is legacy_coroutine
        assert collections.MutableMapping is collections.abc.MutableMapping
    assert 'MutableMapping' not in vars(collections)


def test_import_aiosip_returns_the_same_module():
    assert import_aiosip() is aiosip_ws.aiosip


async def test_decorated_aiosip_methods_are_native_coroutines():
    """On 3.12+ generator-based coroutines are refused by create_task; the shim's are native."""
    app = aiosip_ws.aiosip.Application(loop=asyncio.get_running_loop())
    coro = app.finish()
    assert asyncio.iscoroutine(coro)
    await asyncio.create_task(coro)


async def test_legacy_coroutine_awaits_what_a_plain_function_returns():
    loop = asyncio.get_running_loop()

    def plain():
        future = loop.create_future()
        future.set_result(42)
        return future

    def generator():
        value = yield from asyncio.sleep(0, result=7)
        return value

    assert await legacy_coroutine(plain)() == 42
    assert await legacy_coroutine(generator)() == 7
