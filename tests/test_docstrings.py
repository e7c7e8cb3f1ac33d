"""The package's docstrings stay true to its code: every ``:mod:``, ``:class:``,
``:func:``, ``:meth:``, ``:attr:`` and ``:exc:`` reference in them names something that
exists (as Sphinx would resolve it: from the module it is written in, else absolutely,
else a name defined in exactly one module of the package), and every logger is named
after its module, or is one of the deliberate names below."""
from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support import REPO

PACKAGE = REPO / 'aiosip_ws'
ROLE = re.compile(r':(mod|class|func|meth|attr|exc):`([^`]+)`')

#: loggers named for what they carry, not for a module: documented where they are made
DELIBERATE_LOGGERS = {
    'aiosip_ws.wire': 'every SIP message sent and received (docs/tools.rst: --trace)',
    'websockets.server': "websockets' own handshake logger, given to it filtered",
}


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob('*.py')):
        if path.name == '__main__.py':
            continue                                     # importing it runs the program
        parts = list(path.relative_to(REPO).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts.pop()
        out.append(('.'.join(parts), path))
    return out


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - an optional extra (aiortc, redis) that is missing
        return None


def _optional(name: str) -> bool:
    """A module of the package that exists but cannot be imported here (its extra, such
    as aiortc for aiosip_ws.media, is not installed)."""
    if not name.startswith('aiosip_ws.') or _load(name) is not None:
        return False
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _chain(obj: Any, names: list[str]) -> bool:
    for name in names:
        if isinstance(obj, type) and name in getattr(obj, '__slots__', ()):
            obj = None                      # an instance attribute: it exists
            continue
        if obj is None:
            return False
        try:
            obj = getattr(obj, name)
        except AttributeError:
            annotations = getattr(obj, '__annotations__', {}) if isinstance(obj, type) else {}
            if name not in annotations and not _assigned_in_init(obj, name):
                return False
            obj = None
    return True


def _assigned_in_init(cls: Any, name: str) -> bool:
    """``self.name = ...`` somewhere in the class's source (an instance attribute)."""
    if not isinstance(cls, type):
        return False
    module = __import__('sys').modules.get(cls.__module__)
    path = getattr(module, '__file__', None)
    if path is None:
        return False
    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            for inner in ast.walk(node):
                if (isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name)
                        and inner.value.id == 'self' and inner.attr == name
                        and isinstance(inner.ctx, ast.Store)):
                    return True
    return False


def resolves(target: str, role: str, context: Any, module: ModuleType,
             everything: dict[str, ModuleType]) -> bool:
    """Whether ``target`` names something, seen from ``context`` (a class for a method's
    or a class's docstring, else ``module``)."""
    target = ''.join(target.split())                     # folded over two lines
    if '<' in target:
        target = target.rsplit('<', 1)[1].rstrip('>')
    target = target.lstrip('~!').rstrip('()')
    if target.startswith('.'):                           # relative to the module's package
        package = module.__name__ if hasattr(module, '__path__') else \
            module.__name__.rpartition('.')[0]
        target = package + target
    parts = target.split('.')
    if role == 'mod':
        return _load(target) is not None or _optional(target)
    if context is not module and _chain(context, parts):
        return True
    if _chain(module, parts) or hasattr(builtins, target):
        return True
    for cut in range(len(parts) - 1, 0, -1):             # absolute: a module, then names
        found = _load('.'.join(parts[:cut]))
        if found is not None:
            return _chain(found, parts[cut:])
        if _optional('.'.join(parts[:cut])):
            return True                  # a module of an extra not installed: checked where it is
    holders = [m for m in everything.values()          # defined in one module of the package
               if getattr(vars(m).get(parts[0]), '__module__', None) == m.__name__]
    return len(holders) == 1 and _chain(holders[0], parts)


def docstrings(tree: ast.Module, module: ModuleType) -> list[tuple[int, str, Any]]:
    """(line, docstring, the class it is seen from or the module) of every module, class,
    function and method docstring."""
    out: list[tuple[int, str, Any]] = [(1, ast.get_docstring(tree, clean=False) or '', module)]

    def visit(body: list[ast.stmt], owner: Any) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                cls = getattr(owner, node.name, None) if owner is not None else None
                out.append((node.lineno, ast.get_docstring(node, clean=False) or '',
                            cls if cls is not None else module))
                visit(node.body, cls)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((node.lineno, ast.get_docstring(node, clean=False) or '',
                            owner if isinstance(owner, type) else module))
    visit(tree.body, module)
    return out


def test_every_docstring_reference_resolves():
    loaded = {name: _load(name) for name, _ in modules()}
    everything = {name: module for name, module in loaded.items() if module is not None}
    broken = []
    for name, path in modules():
        module = loaded[name]
        if module is None:
            continue                         # its extra is not installed here
        for line, doc, context in docstrings(ast.parse(path.read_text()), module):
            for role, target in ROLE.findall(doc):
                if not resolves(target, role, context, module, everything):
                    broken.append('%s:%d :%s:`%s`' % (path.relative_to(REPO), line, role,
                                                      ' '.join(target.split())))
    assert not broken, 'docstring references that name nothing:\n' + '\n'.join(broken)


def test_loggers_are_named_after_their_modules():
    odd = []
    for name, path in modules():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            # what a module logs through (a logger it configures is not one)
            for logger in re.findall(r"(?:=\s*|logger=\w*\(?)logging\.getLogger\('([^']*)'\)",
                                     line):
                if logger not in DELIBERATE_LOGGERS:
                    odd.append('%s:%d getLogger(%r) (module %s: use __name__)'
                               % (path.relative_to(REPO), number, logger, name))
    assert not odd, '\n'.join(odd)


@pytest.mark.parametrize('logger', sorted(DELIBERATE_LOGGERS))
def test_each_deliberate_logger_is_in_use(logger):
    assert any("getLogger('%s')" % logger in path.read_text() for _, path in modules())
