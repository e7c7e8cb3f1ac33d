"""The package's layers: core < transport < adapter < media < serve < tools, nothing
imported upward.

``errors``, ``options`` and ``_version`` sit at the top and import no layer (only each
other: ``options`` raises ``errors.ConfigurationError``); ``__init__`` (the lazy public
API) and ``__main__`` are the package's faces and may name any layer.  ``media/`` (the
``[media]`` extra: calls on aiortc, loaded only when ``aiosip_ws.media`` is imported) is a
layer of its own: it uses the application through protocols, not by importing the
adapter.  aiosip is imported by ``adapter/`` only, every exception class lives in
``errors.py``, and every name the 0.1 API exported from ``aiosip_ws`` still imports.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

PACKAGE = REPO / 'aiosip_ws'
LAYERS = ('core', 'transport', 'adapter', 'media', 'serve', 'tools')
LEAVES = ('errors', 'options', '_version')
FACES = ('__init__', '__main__')

#: what ``aiosip_ws.__all__`` held in 0.1: each must stay importable from ``aiosip_ws``
PUBLIC_0_1 = (
    '__version__', 'aiosip', 'Application', 'Dialog', 'to_aiosip', 'to_wire', 'SIPMessage', 'Via',
    'AiosipWSError', 'ConfigurationError', 'ConnectionLost', 'DiscoveryError', 'HandshakeError',
    'SIPParseError', 'TransactionTimeout', 'TransportError', 'UnknownTransportError',
    'ClientOptions', 'ServerOptions', 'Registration', 'RegistrationError', 'WS', 'WSS',
    'get_transport', 'register_transport', 'transport_names', 'unregister_transport', 'NameAddr',
    'SipURI', 'WSConnection', 'WSListener',
)


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def imports_of(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path, root)
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ''
            found.append((node.lineno, target))
            # ``from . import codec`` imports the submodule aiosip_ws.<pkg>.codec
            found += [(node.lineno, '%s.%s' % (target, alias.name)) for alias in node.names]
    return found


def rank(module: str) -> tuple[str, int] | None:
    """The layer of an ``aiosip_ws`` module: (name, order); None outside the package."""
    parts = module.split('.')
    if parts[0] != 'aiosip_ws' or len(parts) == 1:
        return None
    head = parts[1]
    if head in LAYERS:
        return head, LAYERS.index(head)
    if head in LEAVES:
        return head, -1
    return head, 99


def sources(package: Path = PACKAGE) -> list[Path]:
    return sorted(package.rglob('*.py'))


def upward_imports(package: Path = PACKAGE) -> list[str]:
    """Every import in ``package`` (an ``aiosip_ws`` tree) that breaks the layer rule."""
    root = package.parent
    problems = []
    for path in sources(package):
        top = path.parent == package
        if top and path.stem in FACES:
            continue
        own = None if top else rank(module_name(path, root))
        reported: set[int] = set()
        for line, target in imports_of(path, root):
            other = rank(target)
            if other is None or line in reported:
                continue
            if top and other[1] >= 0:                         # errors, options, _version
                reported.add(line)
                problems.append('%s:%d imports %s (a leaf imports no layer)'
                                % (path.relative_to(root), line, target))
            elif own is not None and other[1] > own[1]:
                reported.add(line)
                problems.append('%s:%d imports %s from a higher layer'
                                % (path.relative_to(root), line, target))
    return problems


def import_cycles(package: Path = PACKAGE) -> list[list[str]]:
    """The import cycles among ``package``'s modules (imports under ``if TYPE_CHECKING``
    count too: a cycle there is a dependency that goes both ways all the same)."""
    root = package.parent
    modules = {module_name(path, root): path for path in sources(package)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for _, target in imports_of(path, root):
            while target and target not in modules:
                target = target.rpartition('.')[0]       # ``from . import x``: the package
            if target and target != name and modules[target].name != '__init__.py':
                targets.add(target)
        graph[name] = targets
    cycles: list[list[str]] = []
    state: dict[str, int] = {}                    # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycle():
    """No module imports, directly or through others, one that imports it back, inside a
    layer as across layers (the package faces, ``__init__`` modules, are left out)."""
    cycles = import_cycles()
    assert not cycles, '\n'.join(' -> '.join(cycle) for cycle in cycles)


def test_the_checker_sees_an_import_cycle(tmp_path):
    package = tmp_path / 'aiosip_ws'
    (package / 'serve').mkdir(parents=True)
    (package / 'serve' / '__init__.py').write_text('')
    (package / 'serve' / 'a.py').write_text('from .b import x\n')
    (package / 'serve' / 'b.py').write_text('from typing import TYPE_CHECKING\n'
                                            'if TYPE_CHECKING:\n    from .c import y\n')
    (package / 'serve' / 'c.py').write_text('from . import a\n')
    (package / 'serve' / 'd.py').write_text('from . import a, b\n')
    assert import_cycles(package) == [['aiosip_ws.serve.a', 'aiosip_ws.serve.b',
                                       'aiosip_ws.serve.c', 'aiosip_ws.serve.a']]


def test_every_module_sits_in_a_layer():
    for path in sources():
        parts = path.relative_to(PACKAGE).with_suffix('').parts
        assert parts[0] in LAYERS or (len(parts) == 1 and parts[0] in LEAVES + FACES), path


def test_nothing_imports_upward():
    problems = upward_imports()
    assert not problems, '\n'.join(problems)


def test_only_the_adapter_imports_aiosip():
    problems = []
    for path in sources():
        inside = path.relative_to(PACKAGE).parts[0] == 'adapter'
        for line, target in imports_of(path):
            if (target == 'aiosip' or target.startswith('aiosip.')) and not inside:
                problems.append('%s:%d imports %s' % (path.relative_to(REPO), line, target))
    assert not problems, '\n'.join(problems)


def test_media_does_not_import_the_adapter():
    """``media/`` types what it uses of the application as protocols instead."""
    problems = ['%s:%d imports %s' % (path.relative_to(REPO), line, target)
                for path in sources(PACKAGE / 'media') for line, target in imports_of(path)
                if target == 'aiosip_ws.adapter' or target.startswith('aiosip_ws.adapter.')]
    assert not problems, '\n'.join(problems)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule is not vacuous: upward and leaf imports in a scratch tree are caught."""
    package = tmp_path / 'aiosip_ws'
    for folder in ('core', 'serve', 'adapter'):
        (package / folder).mkdir(parents=True)
        (package / folder / '__init__.py').write_text('')
    (package / 'core' / 'bad.py').write_text('from ..serve import relay\n')
    (package / 'adapter' / 'fine.py').write_text('from ..core.codec import parse\nfrom .. import errors\n')
    (package / 'options.py').write_text('from .core import codec\n')
    problems = upward_imports(package)
    assert len(problems) == 2, problems
    assert 'core/bad.py:1 imports aiosip_ws.serve' in problems[0]
    assert 'options.py:1 imports aiosip_ws.core' in problems[1]


def test_every_exception_class_lives_in_errors():
    problems = []
    for path in sources():
        if path == PACKAGE / 'errors.py':
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for base in node.bases:
                    name = ast.unparse(base)
                    if name.endswith(('Error', 'Exception', 'Exit', 'Lost', 'Timeout', 'Failed')):
                        problems.append('%s: class %s(%s)' % (path.relative_to(REPO), node.name, name))
    assert not problems, '\n'.join(problems)


def test_invalid_uri_error_is_both_kinds():
    from aiosip_ws import ConfigurationError, InvalidURIError, SIPParseError
    error = InvalidURIError('not a SIP URI: "x"')
    assert isinstance(error, ConfigurationError) and isinstance(error, SIPParseError)
    assert error.status == 400 and str(error) == 'not a SIP URI: "x"'


@pytest.mark.parametrize('name', PUBLIC_0_1)
def test_public_names_of_0_1_still_import(name):
    import aiosip_ws
    assert getattr(aiosip_ws, name) is not None
    assert name in aiosip_ws.__all__


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, '-W', 'error::DeprecationWarning', '-c', code],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def test_core_and_transport_do_not_load_aiosip():
    result = run_python('import sys, aiosip_ws.core.codec, aiosip_ws.core.framing, '
                        'aiosip_ws.core.digest, aiosip_ws.transport.websocket, '
                        'aiosip_ws.transport.listener, '
                        'aiosip_ws.transport.discovery, aiosip_ws.transport.connect, '
                        'aiosip_ws.serve.registrar; '
                        'print(sorted(m for m in sys.modules if m.split(".")[0] == "aiosip"))')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'


def test_a_bare_import_aiosip_works_after_import_aiosip_ws():
    result = run_python('import aiosip_ws, sys; assert "aiosip" not in sys.modules; '
                        'import aiosip; assert aiosip is aiosip_ws.aiosip; '
                        'import asyncio, collections; '
                        'assert not hasattr(asyncio, "coroutine") or sys.version_info < (3, 11); '
                        'assert not hasattr(collections, "MutableMapping"); print(aiosip.__name__)')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'aiosip'


def test_serve_and_tools_are_not_imported_by_the_package():
    result = run_python('import sys, aiosip_ws; aiosip_ws.Application; '
                        'print(sorted(m for m in sys.modules '
                        'if m.startswith(("aiosip_ws.serve", "aiosip_ws.tools"))))')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'
