"""The one place that makes aiosip 0.2.0 importable on Python 3.10-3.13.

aiosip 0.2.0 (2017, the only release on the package index) fails at import on
modern Python for exactly two reasons:

* ``@asyncio.coroutine`` decorates ten functions in ``application.py``,
  ``dialog.py`` and ``call.py``; the decorator was removed in Python 3.11;
* ``application.py`` does ``from collections import MutableMapping``, which
  was removed in Python 3.10.

Both names are needed only while aiosip's modules execute.  :func:`import_aiosip`
puts stand-ins in place, imports aiosip, and takes them away again, so the rest
of the process sees ``asyncio`` and ``collections`` exactly as it found them.
Nothing else in aiosip-ws patches aiosip or the standard library.

The stand-in decorator wraps every decorated function in a *native* coroutine
function.  ``types.coroutine`` alone is not enough: on Python 3.12+
``asyncio.iscoroutine()`` is False for generator objects, so ``create_task()``
and ``asyncio.run()`` would refuse them.  Like the removed decorator, it also
awaits an awaitable returned by a decorated plain function (``Dialog.invite``
returns a Future, so ``await dialog.invite()`` waits for the final response).

``import aiosip_ws`` calls :func:`install_import_hook`: a finder on
``sys.meta_path`` that applies :func:`patched_stdlib` while aiosip's package
executes, whoever imports it first and whenever.  So a bare ``import aiosip``
after ``import aiosip_ws`` works, and ``import aiosip_ws`` alone does not load
aiosip at all (``aiosip_ws.core`` and ``aiosip_ws.transport`` never need it).
"""
from __future__ import annotations

import asyncio
import collections
import collections.abc
import contextlib
import functools
import importlib
import importlib.abc
import importlib.machinery
import inspect
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ['legacy_coroutine', 'patched_stdlib', 'install_import_hook', 'import_aiosip']

_MISSING = object()


def legacy_coroutine(func: Callable[..., Any]) -> Callable[..., Any]:
    """Stand-in for the removed ``asyncio.coroutine`` decorator."""
    if inspect.iscoroutinefunction(func):
        return func
    if inspect.isgeneratorfunction(func):
        # types.coroutine lets the generator body ``yield from`` futures and
        # native coroutines; the async wrapper makes the result a real coroutine.
        generator_function = types.coroutine(func)

        @functools.wraps(func)
        async def run_generator(*args: Any, **kwargs: Any) -> Any:
            return await generator_function(*args, **kwargs)

        wrapper = run_generator
    else:
        @functools.wraps(func)
        async def run_plain(*args: Any, **kwargs: Any) -> Any:
            result = func(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

        wrapper = run_plain
    wrapper._is_coroutine = True  # type: ignore[attr-defined]  # what the old decorator set
    return wrapper


@contextlib.contextmanager
def patched_stdlib() -> Iterator[None]:
    """Provide ``asyncio.coroutine`` and ``collections.MutableMapping`` for a moment.

    The stand-in decorator is used on every Python, 3.10 included (whose own
    deprecated decorator is set aside meanwhile), so aiosip behaves the same on
    every version and its import emits no DeprecationWarning.
    """
    saved_coroutine = vars(asyncio).get('coroutine', _MISSING)
    had_mutable_mapping = 'MutableMapping' in vars(collections)
    asyncio.coroutine = legacy_coroutine  # type: ignore[attr-defined]
    if not had_mutable_mapping:
        collections.MutableMapping = collections.abc.MutableMapping  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if saved_coroutine is _MISSING:
            del asyncio.coroutine  # type: ignore[attr-defined]
        else:
            asyncio.coroutine = saved_coroutine  # type: ignore[attr-defined]
        if not had_mutable_mapping:
            del collections.MutableMapping  # type: ignore[attr-defined]


class _ShimLoader(importlib.abc.Loader):
    """Runs aiosip's own loader inside :func:`patched_stdlib`."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        with patched_stdlib():
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:      # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class AiosipFinder(importlib.abc.MetaPathFinder):
    """Finds the ``aiosip`` package with the other finders and wraps its loader."""

    def find_spec(self, fullname: str, path: Any = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != 'aiosip':
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ShimLoader(spec.loader)
                return spec
        return None


def install_import_hook() -> None:
    """Make every later ``import aiosip`` work on Python 3.10-3.13 (idempotent)."""
    if not any(isinstance(finder, AiosipFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, AiosipFinder())


def import_aiosip() -> types.ModuleType:
    """Import aiosip 0.2.0 (or return it if it is already imported)."""
    module = sys.modules.get('aiosip')
    if module is not None:
        return module
    install_import_hook()
    return importlib.import_module('aiosip')
