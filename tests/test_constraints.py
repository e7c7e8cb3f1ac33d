"""tests/constraints-minimum.txt pins each of setup.cfg's install_requires at its floor
(tests/run-all.sh runs the suite with it on Python 3.10).  Fast, no network."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQUIREMENT = re.compile(r'([A-Za-z0-9][A-Za-z0-9._-]*)\s*(==|>=)\s*([0-9]+(?:\.[0-9]+)*)')


def release(version: str) -> tuple[int, ...]:
    """``6.0`` and ``6.0.0`` alike (PEP 440 pads a release with zeros)."""
    numbers = [int(part) for part in version.split('.')]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def pins(lines: list[str]) -> dict[str, tuple[int, ...]]:
    found = {}
    for line in lines:
        line = line.split('#', 1)[0].split(';', 1)[0].strip()      # no environment marker
        if line:
            m = REQUIREMENT.fullmatch(line)
            assert m, 'not "name == X" or "name >= X": %r' % line
            found[m.group(1).lower()] = release(m.group(3))
    return found


def test_the_minimum_constraints_are_setup_cfg_floors():
    setup = configparser.ConfigParser()
    setup.read(REPO / 'setup.cfg')
    floors = pins(setup['options']['install_requires'].splitlines())
    constraints = (REPO / 'tests' / 'constraints-minimum.txt').read_text().splitlines()
    assert all('==' in line for line in constraints if line.strip() and not line.startswith('#'))
    assert pins(constraints) == floors
    assert set(floors) == {'aiosip', 'websockets', 'multidict', 'dnspython', 'prometheus_client',
                           'tomli'}
