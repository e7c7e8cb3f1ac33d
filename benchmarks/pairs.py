#!/usr/bin/env python3
"""Serve's CPU per operation, BEFORE against AFTER, in alternating pairs (run by hand).

    python benchmarks/pairs.py --before /tmp/bench-base --after . --pairs 7
    python benchmarks/pairs.py --before A --after B --bench-args '--duration 5' --full

``--before`` and ``--after`` are two checkouts of the project (a clone or ``git worktree``
of the old commit, and the working tree). Each run is that checkout's own
``benchmarks/bench.py`` with ``PYTHONPATH`` set to the checkout, so that ``aiosip_ws`` is
imported from it and not from an editable install (checked once per side before the
first run, and again by every quick run).

The figures the project's rule judges (a refactor must not make serve slower):

* (b') serve's CPU per MESSAGE: ``results["b'"]["cpu"]["serve"] * 1e6 / results["b'"]["rate"]``
  (serve's busiest second of user+sys CPU from /proc, over the closed-loop rate, as
  bench.py's table computes it);
* (c) serve's CPU per REGISTER at its closed-loop capacity:
  ``results["c_serve"]["estimate_cpu"]["serve"] * 1e6 / results["c_serve"]["capacity_closed_loop"]``;
* (e) serve's SIP work per REGISTER in process: ``results["e"]["serve's SIP path per REGISTER,
  in process (1,000 clients)"]``.

The throughputs of (b') and (c) are reported, not judged.

By default a run measures only these three (about 30 s): bench.py is imported, and its
``Bench`` is given a subclass whose ``part_b`` runs only (b') and whose ``part_c`` runs only
the closed-loop estimate of (c) (the same ``_register_run`` call as ``Bench._search``);
``main()``, the measurements and ``--json`` are bench.py's own. ``--full`` runs the
unmodified ``bench.py --only b,c,e --no-kamailio`` instead: the same figures, but (b), (b''),
the raw echo, the sustained-rate search and the p99 run come with them (about 2 minutes).

Pairs alternate the order (BEFORE first, then AFTER first, ...) to cancel drift; the ratio
AFTER/BEFORE is taken pair by pair. The script reports and always exits 0 once it has run
(2 for a usage or set-up error); the last lines say, per judged figure, whether the median
pair ratio is within 1.05.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LIMIT = 1.05
E_KEY = "serve's SIP path per REGISTER, in process (1,000 clients)"

#: run in each checkout with ``python -c``: bench.py's main() with (b') and (c)'s estimate only
QUICK_DRIVER = r'''
import importlib.util
import sys

bench_path, argv = sys.argv[1], sys.argv[2:]
spec = importlib.util.spec_from_file_location('bench', bench_path)
bench = importlib.util.module_from_spec(spec)
sys.modules['bench'] = bench
spec.loader.exec_module(bench)


class Quick(bench.Bench):
    def part_b(self, fast, profile=False, key=None, lean=False, via_kamailio=False):
        if fast and not (profile or key or lean or via_kamailio):
            return super().part_b(fast=True)          # (b') only
        return {}

    def part_c(self):                                 # the closed-loop estimate of _search only
        a = self.args
        server = bench.serve(self.tmp, 'serve-c')
        try:
            self.log('(c) REGISTER against serve: closed-loop estimate (%d clients x 2) ...'
                     % a.register_clients)
            estimate = self._register_run(bench.url_of(server), 0, {'serve': server.pid}, {},
                                          'c-serve-closed', duration=4, source='127.0.0.2')
        finally:
            server.stop()
        self.log('    capacity ~%.0f/s (peak CPU: %s)' % (estimate['achieved_rate'] or 0,
                                                        bench.cpu_text(estimate['server_cpu'])))
        self.results['c_serve'] = {'capacity_closed_loop': estimate['achieved_rate'] or 1.0,
                                   'estimate_cpu': estimate['server_cpu'],
                                   'estimate_errors': estimate['errors'],
                                   'foreign_cpu': estimate.get('foreign_cpu')}


bench.Bench = Quick
sys.argv = [bench_path] + argv
code = bench.main()
import aiosip_ws
print('PAIRS-IMPORTED %s' % aiosip_ws.__file__, flush=True)
sys.exit(code)
'''

PROBE = 'import aiosip_ws; print(aiosip_ws.__file__)'


def cpu_per_message(r: dict[str, Any]) -> float | None:
    part = r.get("b'") or {}
    return part['cpu']['serve'] * 1e6 / part['rate'] if part.get('rate') else None


def cpu_per_register(r: dict[str, Any]) -> float | None:
    part = r.get('c_serve') or {}
    capacity, cpu = part.get('capacity_closed_loop'), (part.get('estimate_cpu') or {}).get('serve')
    return cpu * 1e6 / capacity if capacity and cpu is not None else None


def in_process_register(r: dict[str, Any]) -> float | None:
    e = r.get('e') or {}
    if E_KEY in e:
        return e[E_KEY]
    for key, value in e.items():       # a reworded key: the same row, found by its start
        if key.startswith("serve's SIP path per REGISTER, in process"):
            return value
    return None


#: (name, label, function of bench.py's JSON, judged)
FIGURES = (
    ("b'", "(b') serve CPU per MESSAGE (us)", cpu_per_message, True),
    ('c', '(c) serve CPU per REGISTER, closed loop (us)', cpu_per_register, True),
    ('e', '(e) SIP work per REGISTER, in process (us)', in_process_register, True),
    ("b' rate", "(b') MESSAGE tx/s (reported only)", lambda r: (r.get("b'") or {}).get('rate'), False),
    ('c rate', '(c) REGISTER/s, closed loop (reported only)',
     lambda r: (r.get('c_serve') or {}).get('capacity_closed_loop'), False),
)


def environment(checkout: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env['PYTHONPATH'] = os.pathsep.join([str(checkout)] + ([env['PYTHONPATH']]
                                                          if env.get('PYTHONPATH') else []))
    return env


def probe(python: str, checkout: Path) -> str:
    """Where ``aiosip_ws`` comes from with the side's environment, run from / (no cwd help)."""
    out = subprocess.run([python, '-c', PROBE], env=environment(checkout), cwd='/',
                         capture_output=True, text=True, timeout=60)
    if out.returncode:
        raise SystemExit('cannot import aiosip_ws from %s: %s' % (checkout, out.stderr[-2000:]))
    return out.stdout.split('\n')[0].strip()


def run_once(python: str, checkout: Path, side: str, index: int, args: argparse.Namespace,
             workdir: Path) -> tuple[dict[str, Any] | None, float, str]:
    """One bench.py run in ``checkout``: (its JSON or None, seconds, a note)."""
    bench_py = checkout / 'benchmarks' / 'bench.py'
    out = workdir / ('pair%02d-%s.json' % (index, side))
    log = workdir / ('pair%02d-%s.log' % (index, side))
    forced = ['--only', 'b,c,e', '--no-kamailio', '--json', str(out)]
    extra = shlex.split(args.bench_args)
    if args.full:
        cmd = [python, str(bench_py), *forced, *extra]
    else:
        cmd = [python, '-c', QUICK_DRIVER, str(bench_py), *forced, *extra]
    started = time.monotonic()
    with open(log, 'wb') as log_file:
        try:
            proc = subprocess.run(cmd, env=environment(checkout), cwd=str(checkout), stdin=subprocess.DEVNULL,
                                  stdout=log_file, stderr=subprocess.STDOUT, timeout=args.timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = 'timeout'
    took = time.monotonic() - started
    text = log.read_text(errors='replace')
    if code != 0 or not out.exists():
        return None, took, 'FAILED (exit %s), see %s' % (code, log)
    note = ''
    for line in text.splitlines():
        if line.startswith('PAIRS-IMPORTED '):
            imported = line.split(' ', 1)[1]
            if not Path(imported).resolve().is_relative_to(checkout):
                return None, took, 'aiosip_ws came from %s, not %s' % (imported, checkout)
    retries = text.count('disturbed (')
    if retries:
        note = '%d measurement(s) repeated (disturbed)' % retries
    return json.loads(out.read_text()), took, note


def foreign(cpu: dict[str, float] | None) -> float | None:
    """CPU (fraction of a core) of processes not the run's during a measurement, at least
    (bench.py's ``others``: the machine's busiest second less each of ours)."""
    if not cpu or 'machine' not in cpu:
        return None
    ours = sum(v for k, v in cpu.items() if k != 'machine' and not k.endswith(' avg'))
    return max(0.0, cpu['machine'] - ours)


def fmt(value: float | None, spec: str = '%.1f') -> str:
    return '-' if value is None else spec % value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--before', required=True, type=Path, help='checkout of the old code')
    parser.add_argument('--after', required=True, type=Path, help='checkout of the new code')
    parser.add_argument('--pairs', type=int, default=7, help='pairs of runs (default 7)')
    parser.add_argument('--python', default=sys.executable,
                        help='interpreter with the dependencies (default: this one)')
    parser.add_argument('--bench-args', default='',
                        help="more bench.py arguments, e.g. '--duration 5 --loop asyncio'")
    parser.add_argument('--full', action='store_true',
                        help='run the unmodified bench.py --only b,c,e (about 4 x longer)')
    parser.add_argument('--workdir', type=Path, help='where the JSON and logs go (default: a new '
                        'temporary directory, kept)')
    parser.add_argument('--timeout', type=float, default=1200, help='seconds per run (default 1200)')
    args = parser.parse_args()
    sides = {'before': args.before.resolve(), 'after': args.after.resolve()}
    for side, checkout in sides.items():
        if not (checkout / 'benchmarks' / 'bench.py').is_file() or not (checkout / 'aiosip_ws').is_dir():
            parser.error('--%s %s: not a checkout with benchmarks/bench.py and aiosip_ws/' % (side, checkout))
    for side, checkout in sides.items():
        imported = probe(args.python, checkout)
        print('%-6s aiosip_ws imported from %s' % (side, imported))
        if not Path(imported).resolve().is_relative_to(checkout):
            print('error: the %s side does not import its own checkout (%s)' % (side, checkout))
            return 2
    texts = {side: (checkout / 'benchmarks' / 'bench.py').read_bytes() for side, checkout in sides.items()}
    if texts['before'] != texts['after']:
        print('note: the two checkouts have different benchmarks/bench.py; each side runs its own')
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix='aiosip-ws-pairs-'))
    workdir.mkdir(parents=True, exist_ok=True)
    print('mode %s, %d pairs, bench args %r, python %s, logs and JSON in %s' % (
        'full' if args.full else 'quick', args.pairs, args.bench_args, args.python, workdir))
    values: dict[str, dict[str, list[float | None]]] = {
        name: {'before': [], 'after': []} for name, *_ in FIGURES}
    orders = []
    pair_times = []
    for index in range(1, args.pairs + 1):
        order = ('before', 'after') if index % 2 else ('after', 'before')
        orders.append(order)
        pair_started = time.monotonic()
        for side in order:
            result, took, note = run_once(args.python, sides[side], side, index, args, workdir)
            figures = {name: (fn(result) if result else None) for name, _, fn, _ in FIGURES}
            for name in figures:
                values[name][side].append(figures[name])
            others = [foreign(((result or {}).get("b'") or {}).get('cpu')),
                      foreign(((result or {}).get('c_serve') or {}).get('estimate_cpu'))]
            print('pair %d %-6s %4.0f s  b\' %s us/MESSAGE (%s tx/s), c %s us/REGISTER (%s/s), e %s us; '
                  'foreign CPU b\'/c %s/%s %%%s' % (
                      index, side, took, fmt(figures["b'"]), fmt(figures["b' rate"], '%.0f'),
                      fmt(figures['c']), fmt(figures['c rate'], '%.0f'), fmt(figures['e']),
                      *(fmt(x * 100 if x is not None else None, '%.0f') for x in others),
                      '  [%s]' % note if note else ''), flush=True)
        pair_times.append(time.monotonic() - pair_started)
    print()
    print('pairs took %s s (median %.0f s)' % (', '.join('%.0f' % t for t in pair_times),
                                             statistics.median(pair_times)))
    verdicts = []
    for name, label, _, judged in FIGURES:
        before, after = values[name]['before'], values[name]['after']
        print()
        print(label)
        print('  %4s  %-13s  %10s  %10s  %7s' % ('pair', 'order', 'before', 'after', 'ratio'))
        ratios = []
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            ratio = a / b if a is not None and b else None
            if ratio is not None:
                ratios.append(ratio)
            print('  %4d  %-13s  %10s  %10s  %7s' % (i + 1, '%s first' % orders[i][0], fmt(b), fmt(a),
                                                     fmt(ratio, '%.3f')))
        if not ratios:
            print('  no complete pair')
            verdicts.append((label, judged, None))
            continue
        median = statistics.median(ratios)
        print('  median pair ratio %.3f (min %.3f, max %.3f, %d pairs); median before %s, after %s'
              % (median, min(ratios), max(ratios), len(ratios),
                 fmt(statistics.median([b for b in before if b is not None])),
                 fmt(statistics.median([a for a in after if a is not None]))))
        verdicts.append((label, judged, median))
    print()
    for label, judged, median in verdicts:
        if not judged:
            continue
        if median is None:
            print('%s: no median pair ratio (runs failed)' % label)
        else:
            print('%s: median pair ratio %.3f (%s)' % (
                label, median, '<= %.2f: ok' % LIMIT if median <= LIMIT else '> %.2f: SLOWER' % LIMIT))
    return 0


if __name__ == '__main__':
    sys.exit(main())
