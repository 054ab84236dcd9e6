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

Time-to-find includes program generation and the oracle; for atheris it also
includes starting its child process and libFuzzer (a tenth of a second), and its
programs-to-find is the worker's input count when it found the bug (libFuzzer's
initial empty and seed inputs included).
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
from fuzz.session import DEFAULT_LENGTH  # noqa: E402

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


def search_seeded(m: mutants.Mutant, engine: str, seed: int, max_programs: int, max_seconds: float) -> Search:
    su = mutants.setup(m)
    stats = Stats()
    t0 = time.perf_counter()
    stop = lambda i: i >= max_programs or time.perf_counter() - t0 >= max_seconds  # noqa: E731
    for f in fuzz_iter(su.strategies, su.platform, su.env, engine, seed=seed, length=LENGTH, stop=stop,
                       stats=stats):
        if _hit(su, f, m.check):
            dt = time.perf_counter() - t0
            return Search(engine, seed, stats.programs, dt, stats.programs, dt)
    return Search(engine, seed, None, None, stats.programs, time.perf_counter() - t0)


def search_hypothesis(m: mutants.Mutant, seed: int, max_programs: int, max_seconds: float) -> Search:
    from fuzz.drivers.hypothesis_driver import hypothesis_iter
    su = mutants.setup(m)
    stats = Stats()
    t0 = time.perf_counter()

    def should_stop() -> bool:
        return stats.programs >= max_programs or time.perf_counter() - t0 >= max_seconds

    for f in hypothesis_iter(su.strategies, su.platform, su.env, seed, LENGTH, should_stop=should_stop,
                             stats=stats, shrink_budget=1.0):
        if _hit(su, f, m.check):
            dt = time.perf_counter() - t0
            return Search("hypothesis", seed, stats.programs, dt, stats.programs, dt)
    return Search("hypothesis", seed, None, None, stats.programs, time.perf_counter() - t0)


def search_atheris(m: mutants.Mutant, seed: int, max_programs: int, max_seconds: float) -> Search:
    """Through fuzz.session (libFuzzer runs in a child process)."""
    from fuzz.envs import ENVIRONMENTS
    from fuzz.session import CellSpec, Plan, Session
    if m.env not in ENVIRONMENTS:
        return Search("atheris", seed, None, None)  # an environment fuzz.session does not know
    su = mutants.setup(m)
    specs = tuple(s.source if str(s.source).endswith(".py") else s.name for s in su.strategies)
    platform = str(m.path) if m.kind == "platform" else su.env.platform
    hit: list = []
    session: Session

    def on_finding(rep) -> None:
        if hit:
            return
        if (m.check == "divergence" and rep.signature.startswith("divergence|")) or \
                (rep.strategy == su.target and (m.check in rep.checks or not STRICT)):
            hit.append(rep)
            session.stop.set()

    plan = Plan([CellSpec(specs, platform, m.env)], engine="atheris", seed=seed, length=LENGTH, jobs=1,
                runs=max_programs, budget=max_seconds, write=False, minimize_budget=0.01,
                command="bench/detection.py")
    session = Session(plan, on_finding=on_finding)
    summary = session.run() if hasattr(session, "run") else None
    cell = summary.cells[0] if summary is not None and summary.cells else None
    spent = cell.stats.programs if cell is not None else 0
    secs = cell.fuzz_seconds if cell is not None else 0.0
    if hit:
        # one worker: found_after_programs is its exact input count
        return Search("atheris", seed, hit[0].found_after_programs, hit[0].found_after, spent, secs)
    return Search("atheris", seed, None, None, spent, secs)


def minimised_size(m: mutants.Mutant, budget: float) -> tuple[dict[str, int], dict[str, int], float]:
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
            res = minimize(f.program, target, su.platform, sig, budget, biases=su.env.choice_biases(),
                           lockstep=su.strategies if div else None)
        except ValueError:
            return raw, {}, time.perf_counter() - t0
        return raw, res.after, res.seconds
    return {}, {}, 0.0


def search(m: mutants.Mutant, engine: str, seed: int, max_programs: int, max_seconds: float) -> Search:
    if engine in ("random", "pct"):
        return search_seeded(m, engine, seed, max_programs, max_seconds)
    if engine == "hypothesis":
        return search_hypothesis(m, seed, max_programs, max_seconds)
    return search_atheris(m, seed, max_programs, max_seconds)


def _search_task(name: str, engine: str, seed: int, max_programs: int, max_seconds: float,
                 length: int, strict: bool) -> Search:
    """One search in a worker process (--jobs): the module settings travel as arguments."""
    global LENGTH, STRICT
    LENGTH, STRICT = length, strict
    m = next(b for b in mutants.discover() if b.name == name)
    return search(m, engine, seed, max_programs, max_seconds)


def run(bugs: list[mutants.Mutant], engines: list[str], seeds: int, max_programs: int, max_seconds: float,
        minimize_budget: float, progress, jobs: int = 1) -> list[Row]:
    """Every (bug, engine, seed) search, ``jobs`` at a time in worker processes
    (each search is single-threaded: one search per core)."""
    rows = {m.name: Row(m.name, m.env, m.check) for m in bugs}
    todo = [(m, e) for m in bugs for e in engines]
    done: dict[tuple[str, str], list[Search]] = {}

    def record(m: mutants.Mutant, engine: str, s: Search) -> None:
        out = done.setdefault((m.name, engine), [])
        out.append(s)
        if len(out) == seeds:
            row = rows[m.name]
            row.searches[engine] = sorted(out, key=lambda x: x.seed)
            progress(f"{m.name:34} {engine:10} programs {_fmt(row.median(engine, 'programs'), max_programs)} "
                     f"time {_fmt_s(row.median(engine, 'seconds'))} found {row.found(engine)}/{seeds}")

    if jobs <= 1:
        for m, engine in todo:
            for seed in range(seeds):
                record(m, engine, search(m, engine, seed, max_programs, max_seconds))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futs = {pool.submit(_search_task, m.name, e, seed, max_programs, max_seconds, LENGTH, STRICT):
                    (m, e) for m, e in todo for seed in range(seeds)}
            from concurrent.futures import as_completed
            for fut in as_completed(futs):
                m, engine = futs[fut]
                record(m, engine, fut.result())
    for m in bugs:
        if minimize_budget > 0:
            row = rows[m.name]
            row.raw_size, row.min_size, row.minimize_seconds = minimised_size(m, minimize_budget)
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
    ap.add_argument("--minimize-budget", type=float, default=10.0)
    ap.add_argument("--length", type=int, default=LENGTH,
                    help=f"operations per generated program (default {LENGTH}, the fuzz command's)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="searches run at once, one process each (default 1; at most the cores)")
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
    rows = run(bugs, engines, args.seeds, args.max_programs, args.max_seconds, args.minimize_budget,
               lambda s: print(s, file=sys.stderr, flush=True), jobs=args.jobs)
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
