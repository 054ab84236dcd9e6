"""Detection benchmark: how fast each engine finds each planted bug.

For every planted bug of tests/mutants (the zoo) and every engine, the fuzz
loop runs from seeds 0..N-1 until it finds the bug's expected check on its
target strategy (or a budget of programs / seconds runs out).  Reported per
bug and engine: the median programs-to-find and time-to-find over the seeds
(a miss counts as infinite, so a median of ``>N`` means more than half the
seeds missed), the number of seeds that found it, then the size of the
minimised reproducer (fuzz.minimize) of the first random-engine finding, and
the ratio of the guided engines' medians to random's and PCT's (below 1:
the guided engine needs fewer programs).

Engines: ``random`` and ``pct`` (fuzz.engine), ``hypothesis`` (fuzz.drivers:
targeted on behaviour events, in-process), ``atheris`` (libFuzzer, coverage
of impls/ and oracle/ plus behaviour counters; one child process per search
through fuzz.session) when atheris is installed.

    .venv/bin/python bench/detection.py --jobs 2         # every bug, every engine, 5 seeds
    .venv/bin/python bench/detection.py --engines random,pct --seeds 7
    .venv/bin/python bench/detection.py --bugs mm_users_shortcut --format json

The searches run as work units of the execution layer (fuzz.work,
fuzz.execution), ``--jobs`` local workers or ``--cluster``: time-to-find is
in worker-seconds (the units before the hit, and the share of the unit that
found it up to the finding), program generation and the oracle included; for
atheris it also includes starting libFuzzer's child process (a tenth of a
second), and its programs-to-find is the input count when it found the bug
(libFuzzer's initial empty and seed inputs included).  Programs-to-find of
the seeded engines does not depend on --jobs.
Hypothesis shrinks a finding before reporting it; its time-to-find includes a
shrink of at most 1 s.  A finding counts when it is any violation on the
mutant (``--strict``: of the bug's expected check), since the mutant is the
only broken part of the run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import mutants  # noqa: E402

from fuzz.engine import ENGINES, Finding, Stats, fuzz_iter  # noqa: E402
from fuzz.envs import ENVIRONMENTS  # noqa: E402
from fuzz.execution import drive, executor  # noqa: E402
from fuzz.session import DEFAULT_LENGTH, HYPOTHESIS_CHUNK  # noqa: E402
from fuzz.work import Cell, FuzzResult, FuzzUnit, make_cell  # noqa: E402

#: program length (operations); --length, default the fuzz command's
LENGTH = DEFAULT_LENGTH
#: a search ends on its time cap (the issue's target: median time-to-find <= 60 s on one core)
MAX_PROGRAMS = 1_000_000
MAX_SECONDS = 60.0


@dataclass
class Search:
    engine: str
    seed: int
    programs: int | None       # None: not found within the budget
    seconds: float | None
    spent_programs: int = 0
    spent_seconds: float = 0.0


@dataclass
class Row:
    bug: str
    env: str
    check: str
    searches: dict[str, list[Search]] = field(default_factory=dict)
    raw_size: dict[str, int] = field(default_factory=dict)
    min_size: dict[str, int] = field(default_factory=dict)
    minimize_seconds: float = 0.0

    def median(self, engine: str, what: str) -> float:
        xs = [getattr(s, what) for s in self.searches.get(engine, [])]
        if not xs:
            return math.nan
        return statistics.median(math.inf if x is None else x for x in xs)

    def found(self, engine: str) -> int:
        return sum(1 for s in self.searches.get(engine, []) if s.programs is not None)


STRICT = False


def _hit(su: mutants.Setup, f: Finding, check: str) -> bool:
    """The planted bug is found: a violation on the mutant (with ``--strict``:
    of its expected check).  Every violation counts, because the mutant is the
    only broken part of the run; a shrinking engine (Hypothesis) reports the
    violation it shrank towards, not necessarily the expected one."""
    if check == "divergence":
        return any(v.check == "divergence" for v in f.violations)
    if f.strategy != su.target:
        return False
    return any(v.check == check for v in f.violations) if STRICT else bool(f.violations)


@dataclass
class _Job:
    """One search (bug, engine, seed) as a source of work units: positions of
    its cell, until the first hit or the budget (programs, worker-seconds)."""

    m: mutants.Mutant
    engine: str
    seed: int
    su: mutants.Setup
    cell: Cell
    blobs: dict
    next_pos: int = 0
    used: float = 0.0
    inflight: int = 0
    size: int = 8
    done_units: list = field(default_factory=list)   # (start, stop, FuzzResult)
    hit: tuple | None = None                         # (position, programs, Finding, unit start, FuzzResult)
    closed: bool = False
    error: str | None = None


def _job(m: mutants.Mutant, engine: str, seed: int) -> _Job:
    su = mutants.setup(m)
    strategies = [s.source if str(s.source).endswith(".py") else s.name for s in su.strategies]
    platform = str(m.path) if m.kind == "platform" else su.env.platform
    blobs: dict = {}
    return _Job(m, engine, seed, su, make_cell(strategies, platform, m.env, blobs), blobs)


class _Searches:
    """Every search as one campaign on the execution layer (fuzz.execution)."""

    def __init__(self, jobs: list[_Job], max_programs: int, max_seconds: float, record) -> None:
        self.jobs = jobs
        self.max_programs = max_programs
        self.max_seconds = max_seconds
        self.record = record
        self.capacity = 1

    def _over(self, j: _Job) -> bool:
        return (j.next_pos >= self._limit(j) or j.used >= self.max_seconds
                or (j.hit is not None and j.next_pos > j.hit[0]) or j.error is not None)

    def _limit(self, j: _Job) -> int:
        if j.engine == "hypothesis":
            return -(-self.max_programs // HYPOTHESIS_CHUNK)
        if j.engine == "atheris":
            return 1
        return self.max_programs

    def next_unit(self):
        open_jobs = [j for j in self.jobs if not j.closed]
        cap = max(1, -(-self.capacity // max(1, len(open_jobs))))
        for j in open_jobs:
            if j.inflight >= cap:
                continue
            if self._over(j):
                if j.inflight == 0:
                    self._close(j)
                continue
            a = j.next_pos
            b = min(a + j.size, self._limit(j)) if j.engine in ("random", "pct") else a + 1
            if j.hit is not None:
                b = min(b, j.hit[0])
            j.next_pos = b
            j.inflight += 1
            left = max(0.1, self.max_seconds - j.used)
            if j.engine in ("random", "pct"):
                unit = FuzzUnit(j.cell, j.seed, LENGTH, a, b, (j.engine,))
            elif j.engine == "hypothesis":
                unit = FuzzUnit(j.cell, j.seed, LENGTH, a, b, ("hypothesis",), first_only=True, seconds=left,
                                max_programs=min(HYPOTHESIS_CHUNK, self.max_programs - a * HYPOTHESIS_CHUNK),
                                options=(("shrink_budget", 1.0),))
            else:
                unit = FuzzUnit(j.cell, j.seed, LENGTH, 0, 1, ("atheris",), first_only=True, seconds=left,
                                max_programs=self.max_programs)
            return unit, {k: j.blobs[k] for k in unit.blobs()}, (j, unit)
        return None

    def absorb(self, tag, res: FuzzResult) -> None:
        j, unit = tag
        j.inflight -= 1
        j.used += res.seconds
        if res.error or res.crash or res.watchdog:
            j.error = res.error or res.crash or str(res.watchdog)
        j.done_units.append((unit.start, unit.stop, res))
        if j.engine in ("random", "pct") and res.done and res.seconds > 0:
            j.size = max(1, min(1024, int(res.done / res.seconds)))
        for pos, f in res.findings:
            if _hit(j.su, f, j.m.check) and (j.hit is None or pos < j.hit[0]):
                j.hit = (pos, res.programs_at.get(f.signature, 0), f, unit.start, res)
        if j.inflight == 0 and self._over(j):
            self._close(j)

    def failed(self, tag, error: str) -> None:
        j, _ = tag
        j.inflight -= 1
        j.error = error
        if j.inflight == 0:
            self._close(j)

    def _close(self, j: _Job) -> None:
        if j.closed:
            return
        j.closed = True
        self.record(j.m, j.engine, _outcome(j))

    def finished(self) -> bool:
        for j in self.jobs:
            if not j.closed and j.inflight == 0 and self._over(j):
                self._close(j)
        return all(j.closed for j in self.jobs)


def _outcome(j: _Job) -> Search:
    """Programs and worker-seconds to the hit: the units before it whole, the
    unit that found it prorated to the finding."""
    spent_p = sum(r.stats.programs for _, _, r in j.done_units)
    spent_s = sum(r.seconds for _, _, r in j.done_units)
    if j.error is not None:
        print(f"  {j.m.name} {j.engine} seed {j.seed}: {j.error.strip().splitlines()[-1]}", file=sys.stderr)
    if j.hit is None:
        return Search(j.engine, j.seed, None, None, spent_p, spent_s)
    pos, at, f, start, res = j.hit
    before = [r for a, _, r in j.done_units if a < start]
    programs = sum(r.stats.programs for r in before) + at
    share = at / res.stats.programs if res.stats.programs else 1.0
    seconds = sum(r.seconds for r in before) + res.seconds * share
    if j.engine in ("random", "pct"):
        programs = pos + 1
    elif j.engine == "atheris":
        programs = at
    return Search(j.engine, j.seed, programs, seconds, spent_p, spent_s)


def minimised_size(m: mutants.Mutant, attempts: int) -> tuple[dict[str, int], dict[str, int], float]:
    """Raw and minimised size of the first random-engine finding (seed 0)."""
    from fuzz.minimize import minimize, size_of
    su = mutants.setup(m)
    stats = Stats()
    t_search = time.perf_counter()
    for f in fuzz_iter(su.strategies, su.platform, su.env, "random", seed=0, length=LENGTH,
                       stop=lambda i: i >= MAX_PROGRAMS or time.perf_counter() - t_search >= MAX_SECONDS,
                       stats=stats):
        if not _hit(su, f, m.check):
            continue
        raw = size_of(f.program)
        target = next(s for s in su.strategies if s.name == su.target)
        div = m.check == "divergence"
        v = next((v for v in f.violations if v.check == m.check), f.violations[0])
        sig = f.signature if div else v.signature()
        t0 = time.perf_counter()
        try:
            res = minimize(f.program, target, su.platform, sig, None, biases=su.env.choice_biases(),
                           lockstep=su.strategies if div else None, attempts=attempts)
        except ValueError:
            return raw, {}, time.perf_counter() - t0
        return raw, res.after, res.seconds
    return {}, {}, 0.0


def run(bugs: list[mutants.Mutant], engines: list[str], seeds: int, max_programs: int, max_seconds: float,
        minimize_attempts: int, progress, jobs: int = 1, cluster: str | None = None) -> list[Row]:
    """Every (bug, engine, seed) search as work units of the execution layer
    (fuzz.execution: ``jobs`` local workers, or a Dask cluster)."""
    rows = {m.name: Row(m.name, m.env, m.check) for m in bugs}
    done: dict[tuple[str, str], list[Search]] = {}

    def record(m: mutants.Mutant, engine: str, s: Search) -> None:
        out = done.setdefault((m.name, engine), [])
        out.append(s)
        if len(out) == seeds:
            row = rows[m.name]
            row.searches[engine] = sorted(out, key=lambda x: x.seed)
            progress(f"{m.name:34} {engine:10} programs {_fmt(row.median(engine, 'programs'), max_programs)} "
                     f"time {_fmt_s(row.median(engine, 'seconds'))} found {row.found(engine)}/{seeds}")

    source = _Searches([_job(m, e, seed) for m in bugs for e in engines for seed in range(seeds)
                        if e != "atheris" or m.env in ENVIRONMENTS], max_programs, max_seconds, record)
    ex = executor(jobs, cluster)
    source.capacity = ex.capacity()
    try:
        drive(ex, source)
    finally:
        ex.close()
    for m in bugs:
        if minimize_attempts > 0:
            row = rows[m.name]
            row.raw_size, row.min_size, row.minimize_seconds = minimised_size(m, minimize_attempts)
    return [rows[m.name] for m in bugs]


def _fmt(x: float, cap: int) -> str:
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return f">{cap}"
    return f"{x:g}"


def _fmt_s(x: float) -> str:
    if math.isnan(x):
        return "-"
    return "miss" if math.isinf(x) else f"{x:.2f}s"


def _ratio(a: float, b: float) -> str:
    if any(math.isnan(x) for x in (a, b)) or math.isinf(a) and math.isinf(b):
        return "-"
    if math.isinf(a):
        return "inf"
    if math.isinf(b):
        return "0"
    return f"{a / b:.2f}"


def table(rows: list[Row], engines: list[str], seeds: int, max_programs: int) -> str:
    guided = [e for e in engines if e in ("hypothesis", "atheris")]
    head = ["bug", "env", "check"]
    for e in engines:
        head += [f"{e} progs", f"{e} time", f"{e} found"]
    head += ["repro ops raw->min", "preempt raw->min"]
    for g in guided:
        for base in ("random", "pct"):
            if base in engines:
                head.append(f"{g}/{base}")
    out = [f"Detection benchmark: median of {seeds} seeds, budget {max_programs} programs or "
           f"{MAX_SECONDS:g} s per search, programs of {LENGTH} ops", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r.bug}`", r.env, r.check]
        for e in engines:
            cells += [_fmt(r.median(e, "programs"), max_programs), _fmt_s(r.median(e, "seconds")),
                      f"{r.found(e)}/{seeds}"]
        if r.min_size:
            cells += [f"{r.raw_size['ops']}->{r.min_size['ops']}",
                      f"{r.raw_size['preemptions']}->{r.min_size['preemptions']}"]
        elif r.raw_size:
            cells += [f"{r.raw_size['ops']}->?", f"{r.raw_size['preemptions']}->?"]
        else:
            cells += ["-", "-"]
        for g in guided:
            for base in ("random", "pct"):
                if base in engines:
                    cells.append(_ratio(r.median(g, "programs"), r.median(base, "programs")))
        out.append("| " + " | ".join(cells) + " |")
    # geometric means of the ratios over the bugs every engine found
    if guided:
        out.append("")
        for g in guided:
            for base in ("random", "pct"):
                if base not in engines:
                    continue
                rs = [r.median(g, "programs") / r.median(base, "programs") for r in rows
                      if all(math.isfinite(r.median(e, "programs")) for e in (g, base))]
                if rs:
                    gm = math.exp(sum(math.log(max(x, 1e-9)) for x in rs) / len(rs))
                    out.append(f"{g}/{base}: geometric mean of the programs-to-find ratio over the "
                               f"{len(rs)} bugs both found: {gm:.2f}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    global MAX_SECONDS, STRICT, LENGTH
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bugs", help="comma-separated planted bug names (default: all)")
    ap.add_argument("--engines", help=f"comma-separated engines (default: all of {', '.join(ENGINES)} available)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--max-programs", type=int, default=MAX_PROGRAMS)
    ap.add_argument("--max-seconds", type=float, default=MAX_SECONDS)
    ap.add_argument("--minimize-attempts", type=int, default=3000,
                    help="runs to minimise the first finding of each bug (0: skip)")
    ap.add_argument("--length", type=int, default=LENGTH,
                    help=f"operations per generated program (default {LENGTH}, the fuzz command's)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="local worker processes (default 1; searches are cut into work units)")
    ap.add_argument("--cluster", metavar="ADDRESS", help="run the searches on a Dask cluster (tcp://host:8786)")
    ap.add_argument("--strict", action="store_true", help="count only findings of the expected check")
    ap.add_argument("--format", choices=("markdown", "json"), default="markdown")
    args = ap.parse_args(argv)
    MAX_SECONDS = args.max_seconds
    STRICT = args.strict
    LENGTH = args.length
    bugs = mutants.discover()
    if args.bugs:
        want = args.bugs.split(",")
        bugs = [m for m in bugs if m.name in want]
    engines = args.engines.split(",") if args.engines else list(ENGINES)
    if "atheris" in engines:
        try:
            import atheris  # noqa: F401
        except ImportError:
            engines.remove("atheris")
    rows = run(bugs, engines, args.seeds, args.max_programs, args.max_seconds, args.minimize_attempts,
               lambda s: print(s, file=sys.stderr, flush=True), jobs=args.jobs, cluster=args.cluster)
    if args.format == "json":
        print(json.dumps([{"bug": r.bug, "env": r.env, "check": r.check,
                           "searches": {e: [s.__dict__ for s in ss] for e, ss in r.searches.items()},
                           "raw_size": r.raw_size, "min_size": r.min_size,
                           "minimize_seconds": r.minimize_seconds} for r in rows], indent=2))
    else:
        print(table(rows, engines, args.seeds, args.max_programs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
