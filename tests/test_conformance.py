"""docs/conformance.rst and docs/aiosip-0.2.0.rst stay true, and the project stands alone.

* every pytest node ID the two documents cite names a test that exists (the test
  files are read with :mod:`ast`; a parametrised test is cited by its function name);
* every ``module::attribute`` they cite can be imported and looked up;
* every row of the conformance table has a well-formed, unique ID and an allowed status;
* every defect number (D1-D21) cited in the code and tests has a section in the defect
  register, and every conformance ID cited there has a row in the table;
* every private aiosip attribute the adapter touches is listed in the defect register;
* no file cites the identifiers or paths of documents outside the repository.

Fast and without network: nothing here opens a socket.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import io
import re
import tokenize
from functools import cache
from pathlib import Path

import pytest

from aiosip_ws.errors import MediaError

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / 'docs'
CONFORMANCE = DOCS / 'conformance.rst'
DEFECTS = DOCS / 'aiosip-0.2.0.rst'

STATUS = re.compile(r'(met|partial|not applicable|deviation: \S.*)')
ROW_ID = re.compile(r'(RFC\d{4}-(?:\d+(?:\.\d+)*|[A-Z](?:\.\d+)*)-[a-z]|PRACTICE-[a-z0-9]+(?:-[a-z0-9]+)*)')
#: a conformance ID cited in code or prose
CITED_ROW_ID = re.compile(r'\b%s\b' % ROW_ID.pattern)
LITERAL = re.compile(r'``([^`\s]+)``')
TEST_NODE = re.compile(r'(tests/[\w/]+\.py)((?:::\w+)+)')
ATTRIBUTE = re.compile(r'(aiosip_ws(?:\.\w+)*)::([A-Za-z_][\w.]*)')
DEFECT_NUMBER = re.compile(r'\bD([1-9]|1[0-9]|2[01])\b')
DEFECT_HEADING = re.compile(r'^D(\d+): \S.*\n=+$', re.MULTILINE)

# Identifiers and paths of documents that are not part of the repository.  Built from
# pieces so that this file does not contain them itself.
FOREIGN_PATTERNS = [
    re.compile(r'\bR-[0-9A-Z]+\.[0-9]'),                  # requirement IDs
    re.compile(r'\bX-[0-9]{4}-[0-9]+'),                   # imported-requirement IDs
    re.compile(r'\bT-[0-9]+\.[0-9x]'),                    # test-guidance IDs
    re.compile(re.escape('aiosip-0.2.0' + '.md')),
    re.compile(re.escape('rfc7118-' + 'checklist')),
    re.compile(re.escape('/work/' + 'shared')),
]
SKIP_PARTS = {'node_modules', '__pycache__', 'rfc4475', '.pytest_cache'}


# ---------------------------------------------------------------------------- parsing
def list_table_rows(text: str) -> list[list[str]]:
    """The rows of the first ``list-table`` of ``text``, each a list of cell texts."""
    start = text.index('.. list-table::')
    rows: list[list[str]] = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith('   * - '):
            rows.append([line[len('   * - '):].strip()])
        elif line.startswith('     - ') and rows:
            rows[-1].append(line[len('     - '):].strip())
        elif line.startswith('       ') and rows:
            rows[-1][-1] = (rows[-1][-1] + ' ' + line.strip()).strip()
        elif line.strip() and not line.startswith('   :') and rows:
            break                                 # the table has ended
    return rows


@cache
def conformance_rows() -> tuple[tuple[str, ...], ...]:
    rows = list_table_rows(CONFORMANCE.read_text(encoding='utf-8'))
    assert rows and rows[0] == ['ID', 'requirement', 'implementation', 'test', 'status', 'notes']
    return tuple(tuple(row) for row in rows[1:])


def cited_literals() -> list[tuple[str, str]]:
    """(document name, literal) for every inline literal of the two documents."""
    return [(path.name, literal) for path in (CONFORMANCE, DEFECTS)
            for literal in LITERAL.findall(path.read_text(encoding='utf-8'))]


@cache
def definitions(path: str) -> frozenset[str]:
    """Qualified names (``f``, ``Class``, ``Class::method``) defined in a test file."""
    tree = ast.parse((REPO / path).read_text(encoding='utf-8'))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            names.update('%s::%s' % (node.name, item.name) for item in node.body
                         if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return frozenset(names)


def source_files(*roots: str, suffixes: tuple[str, ...] = ('.py',)) -> list[Path]:
    files = []
    for root in roots:
        base = REPO / root
        candidates = [base] if base.is_file() else sorted(base.rglob('*'))
        for path in candidates:
            if path.is_file() and path.suffix in suffixes and not SKIP_PARTS & set(path.parts):
                files.append(path)
    return files


def comments_and_strings(path: Path) -> str:
    """The comments and string literals (docstrings included) of a Python file."""
    text = path.read_text(encoding='utf-8')
    if path.suffix != '.py':
        return text
    pieces = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in (tokenize.COMMENT, tokenize.STRING, getattr(tokenize, 'FSTRING_MIDDLE', -1)):
            pieces.append(token.string)
    return '\n'.join(pieces)


# ---------------------------------------------------------------------------- the tests
def test_every_cited_test_exists():
    missing = []
    for document, literal in cited_literals():
        match = TEST_NODE.fullmatch(literal)
        if match is None:
            assert not literal.startswith('tests/') or '::' not in literal, (
                '%s cites %r, which is not a pytest node ID' % (document, literal))
            continue
        path, qualname = match.group(1), match.group(2)[2:]
        if not (REPO / path).is_file():
            missing.append('%s: %s (no such file)' % (document, literal))
        elif qualname not in definitions(path):
            missing.append('%s: %s' % (document, literal))
    assert not missing, 'cited tests that do not exist:\n' + '\n'.join(missing)


def test_every_cited_attribute_exists():
    missing = []
    for document, literal in cited_literals():
        match = ATTRIBUTE.fullmatch(literal)
        if match is None:
            continue
        module_name, dotted = match.groups()
        try:
            target = importlib.import_module(module_name)
        except ImportError as exc:
            missing.append('%s: %s (cannot import %s: %s)' % (document, literal, module_name, exc))
            continue
        except MediaError:
            # a module of the [media] extra without aiortc installed: read its definitions
            path = module_name.replace('.', '/') + '.py'
            if '.'.join(dotted.split('.')[:2]).replace('.', '::') not in definitions(path):
                missing.append('%s: %s (not defined in %s)' % (document, literal, path))
            continue
        for part in dotted.split('.'):
            if not hasattr(target, part):
                missing.append('%s: %s (no %r)' % (document, literal, part))
                break
            target = getattr(target, part)
    assert not missing, 'cited attributes that do not exist:\n' + '\n'.join(missing)


def test_conformance_rows_are_well_formed():
    seen: set[str] = set()
    problems = []
    for row in conformance_rows():
        if len(row) != 6:
            problems.append('%s: %d cells instead of 6' % (row[0], len(row)))
            continue
        row_id, requirement, implementation, tests, status, _ = row
        if not ROW_ID.fullmatch(row_id):
            problems.append('%r is not an ID of the documented form' % row_id)
        if row_id in seen:
            problems.append('%s appears twice' % row_id)
        seen.add(row_id)
        if not STATUS.fullmatch(status):
            problems.append('%s: status %r is not met, partial, not applicable or '
                            '"deviation: <reason>"' % (row_id, status))
        if not re.search(r'\bRFC \d{4}\b', requirement):
            problems.append('%s: the requirement names no RFC' % row_id)
        cited = LITERAL.findall(implementation)
        if not cited or not all(ATTRIBUTE.fullmatch(item) for item in cited):
            problems.append('%s: the implementation must be module::attribute literals' % row_id)
        if tests != '-':
            cited = LITERAL.findall(tests)
            if not cited or not all(TEST_NODE.fullmatch(item) for item in cited):
                problems.append('%s: the test cell must be node IDs or "-"' % row_id)
    assert len(seen) > 50, 'the conformance table looks truncated (%d rows)' % len(seen)
    assert not problems, '\n'.join(problems)


def test_every_defect_has_one_section():
    numbers = [int(n) for n in DEFECT_HEADING.findall(DEFECTS.read_text(encoding='utf-8'))]
    assert sorted(numbers) == list(range(1, 22)), numbers


def test_every_cited_defect_and_conformance_id_resolves():
    text = DEFECTS.read_text(encoding='utf-8')
    sections = set(int(n) for n in DEFECT_HEADING.findall(text))
    row_ids = {row[0] for row in conformance_rows()}
    unresolved = []
    for path in source_files('aiosip_ws', 'tests', 'benchmarks', 'README.rst', 'docs',
                             suffixes=('.py', '.js', '.rst', '.md')):
        prose = comments_and_strings(path)
        relative = path.relative_to(REPO)
        for number in sorted(set(int(n) for n in DEFECT_NUMBER.findall(prose)) - sections):
            unresolved.append('%s: D%d' % (relative, number))
        for row_id in sorted(set(CITED_ROW_ID.findall(prose)) - row_ids):
            unresolved.append('%s: %s' % (relative, row_id))
    assert not unresolved, ('citations with no section in docs/aiosip-0.2.0.rst or row in '
                            'docs/conformance.rst:\n' + '\n'.join(unresolved))


def test_private_aiosip_attributes_are_documented():
    """Every ``_name`` aiosip 0.2.0 assigns on its objects and the adapter uses is listed."""
    spec = importlib.util.find_spec('aiosip')
    assert spec is not None and spec.origin is not None
    aiosip_private = set()
    for path in Path(spec.origin).parent.glob('*.py'):
        aiosip_private.update(re.findall(r'\bself\.(_[a-z]\w*)\s*=(?!=)',
                                         path.read_text(encoding='utf-8')))
    assert '_dialogs' in aiosip_private and '_msgs' in aiosip_private
    register = DEFECTS.read_text(encoding='utf-8')
    section = register[register.index('\nPrivate aiosip attributes'):]
    used = set()
    for path in source_files('aiosip_ws/adapter'):
        used.update(set(re.findall(r'\.(_[a-z]\w*)\b', path.read_text(encoding='utf-8'))))
    undocumented = sorted(name for name in used & aiosip_private
                          if '.%s``' % name not in section)
    assert not undocumented, ('private aiosip attributes used in aiosip_ws/adapter but not '
                              'listed in docs/aiosip-0.2.0.rst: %s' % undocumented)


@pytest.mark.parametrize('root', ['aiosip_ws', 'tests', 'benchmarks', 'README.rst', 'docs'])
def test_no_citation_of_documents_outside_the_repository(root):
    found = []
    for path in source_files(root, suffixes=('.py', '.js', '.rst', '.md', '.txt', '.cfg',
                                             '.sh', '.toml', '.json', '.ini', '')):
        try:
            text = path.read_text(encoding='utf-8')
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if any(pattern.search(line) for pattern in FOREIGN_PATTERNS):
                found.append('%s:%d: %s' % (path.relative_to(REPO), number, line.strip()))
    assert not found, ('cite the RFC and section (and docs/conformance.rst IDs) or '
                       'docs/aiosip-0.2.0.rst instead:\n' + '\n'.join(found))
