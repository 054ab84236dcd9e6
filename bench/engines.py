"""Which engine, which program length: the benchmark behind fuzz.session's
DEFAULT_ENGINE and DEFAULT_LENGTH.

    .venv/bin/python bench/engines.py                     # everything (long: see --help)
    .venv/bin/python bench/engines.py --quick             # 3 bugs, fewer seeds: minutes
    .venv/bin/python bench/engines.py --engines random,pct --lengths 32,128 --seeds 5 --jobs 2

Prints, as text or JSON:

1. throughput: programs/s of the random engine, one strategy and the three
   built-ins in lockstep, at length 32 and 128 (CPU time);
2. atheris feeding: programs/s when the fuzz target decodes the bytes itself
   (BytesDraw + a decision tape) vs. drives the Hypothesis test through
   ``fuzz_one_input``, on the same random inputs;
3. time-to-find and programs-to-find of every planted bug, per engine and
   program length: the median over ``--seeds`` seeds of the CPU seconds and
   programs until the target strategy first shows the expected violation (a
   miss counts as infinite: a median of ``>cap`` means most seeds missed);
   atheris is run with behaviour coverage (the default) and, on ``--variant-bugs``,
   with line coverage and with Hypothesis decoding, for comparison;
4. the minimised reproducer of each bug (random engine, length 128): median
   and worst number of operations (ops + setup) over the seeds.

Planted bugs: direct on xen-pv, direct on broadcast, direct on
native+pt-reclaim, semi-rcu on native+pt-reclaim+batch-fail (built-in
strategies outside their SAFE_ON), and every tests/mutants/*.py declaring
``PLANTED = {"env": ..., "kind": "strategy"|"platform", "check": ...}``.
A bug counts as found when its target strategy shows one of the expected
checks (any check for the built-in pairs).

Times are CPU seconds of the process doing the search (``time.process_time``),
so other load on the machine does not inflate them; every search runs in its
own forked process (``--jobs`` at a time).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import mutants  # noqa: E402  (tests/mutants: the planted-bug zoo)

from fuzz.engine import Stats, fuzz_iter  # noqa: E402
from fuzz.envs import ENVIRONMENTS  # noqa: E402
from fuzz.generate import RandomDraw, generate  # noqa: E402
from fuzz.run import run_lockstep, run_program  # noqa: E402
from fuzz.session import SWARM  # noqa: E402
from impls import registry  # noqa: E402
from impls.machine.choices import RandomChoices  # noqa: E402

BUILTIN_BUGS = (
    ("direct@xen-pv", "direct", "xen-pv"),
    ("direct@broadcast", "direct", "broadcast"),
    ("direct@native+pt-reclaim", "direct", "native+pt-reclaim"),
    ("semi-rcu@native+pt-reclaim+batch-fail", "semi-rcu", "native+pt-reclaim+batch-fail"),
)
QUICK_BUGS = ("direct@xen-pv", "native_skip_lazy", "xen_stale_cr3")


@dataclass
class Bug:
    name: str
    strategies: list            # Ops, lockstep order
    platform: Any               # Ops
    env: Any                    # Environment
    target: str                 # strategy name whose verdict counts
    checks: tuple[str, ...]     # () = any check


def bugs(names: list[str] | None) -> list[Bug]:
    out = []
    for name, strat, env in BUILTIN_BUGS:
        e = ENVIRONMENTS[env]
        out.append(Bug(name, [registry.strategy(strat)], registry.platform(e.platform), e, strat, ()))
    for m in mutants.discover():
        try:
            su = mutants.setup(m)
        except KeyError:
            continue
        out.append(Bug(m.name, su.strategies, su.platform, su.env, su.target, tuple(m.checks)))
    if names:
        missing = set(names) - {b.name for b in out}
        if missing:
            raise SystemExit(f"unknown bug(s): {', '.join(sorted(missing))}; known: {', '.join(b.name for b in out)}")
        out = [b for b in out if b.name in names]
    return out


class _Found(BaseException):
    """Ends a search at the first matching violation (a BaseException: it goes
    through Hypothesis and the fuzz loops untouched)."""


class FoundStats(Stats):
    """Stats that notice the first violation of the target (CPU time, programs)."""

    def __init__(self, bug: Bug, cap: float, abort: bool = True) -> None:
        super().__init__()
        self._bug = bug
        self._t0 = time.process_time()
        self._cap = cap
        self._abort = abort
        self.found: tuple[int, float, list[str]] | None = None

    def account(self, res) -> None:  # noqa: D102
        super().account(res)
        if self.found is not None:
            return
        for r in res.runs:
            if r.verdict.strategy != self._bug.target:
                continue
            checks = r.verdict.checks()
            if checks and (not self._bug.checks or set(checks) & set(self._bug.checks)):
                self.found = (self.programs, time.process_time() - self._t0, checks)
                if self._abort:
                    raise _Found

    def over(self) -> bool:
        return self.found is not None or time.process_time() - self._t0 > self._cap

    def __getstate__(self):  # sent through a pipe: only the figures
        d = dict(self.__dict__)
        d.pop("_bug", None)
        return d


def _search(bug: Bug, engine: str, length: int, seed: int, cap: float, variant: str) -> dict:
    stats = FoundStats(bug, cap, abort=engine != "atheris")
    try:
        if engine in ("random", "pct"):
            for _ in fuzz_iter(bug.strategies, bug.platform, bug.env, engine, seed, length,
                               stop=lambda i: stats.over(), stats=stats,
                               swarm={"swarm": 1.0, "mixed": 0.5, "plain": 0.0}.get(variant, SWARM)):
                pass
        elif engine == "hypothesis":
            from fuzz.drivers.hypothesis_driver import hypothesis_iter
            for _ in hypothesis_iter(bug.strategies, bug.platform, bug.env, seed, length,
                                     should_stop=stats.over, stats=stats):
                pass
        elif engine == "atheris":
            return _search_atheris(bug, length, seed, variant, stats)
    except _Found:
        pass
    return _result(stats)


def _result(stats: FoundStats) -> dict:
    if stats.found is None:
        return {"found": False, "programs": stats.programs, "cpu": time.process_time() - stats._t0}
    p, t, checks = stats.found
    return {"found": True, "programs": p, "cpu": t, "checks": checks}


def _search_atheris(bug: Bug, length: int, seed: int, variant: str, stats: FoundStats) -> dict:
    from types import SimpleNamespace

    from fuzz.drivers.atheris_driver import atheris_loop
    mode, coverage = {"behaviour": ("bytes", "behaviour"), "lines": ("bytes", "lines"), "-": ("bytes", "behaviour"),
                      "hypothesis-input": ("hypothesis", "behaviour")}[variant]
    options = {"atheris_input": mode, "atheris_coverage": coverage}
    spec = SimpleNamespace(option=lambda name, default=None: options.get(name, default), length=length, runs=None,
                           jobs=1, worker=0, seed=seed)
    out = _CHILD_CONN[0]

    def send(msg: tuple) -> None:
        if msg[0] == "done":
            out.send(_result(stats))
        elif msg[0] == "crash":
            out.send({"found": False, "crash": msg[2], "programs": stats.programs, "cpu": 0.0})

    atheris_loop(spec, bug.strategies, bug.platform, bug.env, stats, send, stats.over)
    return _result(stats)  # pragma: no cover  (atheris_loop exits the process)


_CHILD_CONN: list = [None]


def _child(conn, bug_name: str, engine: str, length: int, seed: int, cap: float, variant: str) -> None:
    _CHILD_CONN[0] = conn
    bug = next(b for b in bugs([bug_name]))
    res = _search(bug, engine, length, seed, cap, variant)
    conn.send(res)
    conn.close()
    os._exit(0)


def search(bug: str, engine: str, length: int, seed: int, cap: float, variant: str = "behaviour") -> dict:
    """One search in a forked process; its result."""
    ctx = mp.get_context("fork")
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(w, bug, engine, length, seed, cap, variant), daemon=True)
    p.start()
    w.close()
    try:
        res = r.recv()
    except EOFError:
        res = {"found": False, "programs": 0, "cpu": 0.0, "crash": f"exit code {p.exitcode}"}
    p.join(timeout=5)
    if p.is_alive():
        p.kill()
    return res


# -- throughput ------------------------------------------------------------------------------

def throughput(platform: str = "native", n: int = 60) -> dict:
    env = ENVIRONMENTS[platform]
    plat = registry.platform(env.platform)
    three = [registry.strategy(s) for s in registry.STRATEGIES]
    out: dict[str, float] = {}
    for length in (32, 128):
        cfg = env.gen_config(length)
        for label, strategies in (("one (full-rcu)", three[2:]), ("three in lockstep", three)):
            t0 = time.process_time()
            for i in range(n):
                prog = generate(RandomDraw(i), cfg)
                if len(strategies) == 1:
                    run_program(prog, strategies[0], plat, RandomChoices(i, env.choice_biases()))
                else:
                    run_lockstep(prog, strategies, plat, lambda i=i: RandomChoices(i, env.choice_biases()))
            out[f"{label}, length {length}"] = n / (time.process_time() - t0)
    return out


def atheris_feeding(n: int = 150, length: int = 128) -> dict:
    """Programs/s of the two ways of decoding atheris inputs, same random inputs."""
    from fuzz.drivers.atheris_driver import Harness, max_len
    env = ENVIRONMENTS["xen-pv"]
    strategies = [registry.strategy("full-rcu")]
    plat = registry.platform("xen-pv")
    rng = random.Random(1)
    inputs = [bytes(rng.randrange(256) for _ in range(max_len(length))) for _ in range(n)]
    out = {}
    for mode in ("bytes", "hypothesis"):
        h = Harness(strategies, plat, env, length, mode)
        t0 = time.process_time()
        for d in inputs:
            h.one_input(d)
        dt = time.process_time() - t0
        out[mode] = {"inputs_per_s": n / dt, "programs": h.stats.programs,
                     "mean_ops": None, "behaviours": len(h.stats.behaviours)}
    return out


# -- minimised sizes ------------------------------------------------------------------------------

def _min_child(conn, bug_name: str, seed: int, budget: float) -> None:
    from fuzz.minimize import minimize
    bug = next(b for b in bugs([bug_name]))
    stats = Stats()
    t0 = time.process_time()
    for f in fuzz_iter(bug.strategies, bug.platform, bug.env, "random", seed, 128,
                       stop=lambda i: time.process_time() - t0 > 60, stats=stats):
        if f.strategy == bug.target and (not bug.checks or set(f.checks) & set(bug.checks)):
            strat = next(s for s in bug.strategies if s.name == bug.target)
            r = minimize(f.program, strat, bug.platform, f.violations[0].signature(), budget,
                         biases=bug.env.choice_biases())
            conn.send({"ops": r.after["ops"] + r.after["setup"], "cpus": r.after["cpus"],
                       "preemptions": r.after["preemptions"], "seconds": r.seconds, "complete": r.complete})
            os._exit(0)
    conn.send(None)
    os._exit(0)


def minimised(bug: str, seed: int, budget: float) -> dict | None:
    ctx = mp.get_context("fork")
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_min_child, args=(w, bug, seed, budget), daemon=True)
    p.start()
    w.close()
    try:
        res = r.recv()
    except EOFError:
        res = None
    p.join(timeout=5)
    return res


# -- the driver ----------------------------------------------------------------------------------

def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("inf")


def run_matrix(names: list[Bug], engines: list[str], lengths: list[int], seeds: int, cap: float,
               jobs: int, variants: dict[str, list[str]], log, swarm: bool = False) -> list[dict]:
    """Every (bug, engine, variant, length) cell; seeds run ``jobs`` at a time.
    A cell stops early once more than half its seeds missed."""
    rows = []
    tasks = []
    for b in names:
        for e in engines:
            for v in (variants.get(b.name, ["behaviour"]) if e == "atheris" else
                      ["plain", "swarm", "mixed"] if e == "random" and swarm else ["-"]):
                for L in lengths:
                    tasks.append((b.name, e, v, L))
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        def cell(t):
            bug, e, v, L = t
            res = []
            for s in range(seeds):
                r = search(bug, e, L, s, cap, v)
                res.append(r)
                if sum(1 for x in res if not x["found"]) > seeds // 2:
                    break
            found = [x for x in res if x["found"]]
            misses = seeds - len(found)
            cpu = sorted([x["cpu"] for x in found] + [float("inf")] * misses)
            progs = sorted([x["programs"] for x in found] + [float("inf")] * misses)
            row = {"bug": bug, "engine": e, "variant": v, "length": L, "seeds": seeds, "found": len(found),
                   "median_cpu_s": _median(cpu), "median_programs": _median(progs),
                   "crashes": [x["crash"] for x in res if x.get("crash")]}
            log(f"  {bug:<42} {e:<10} {v:<16} L={L:<4} found {len(found)}/{seeds}  "
                f"median {_fmt(row['median_cpu_s'], cap)} s, {_fmt(row['median_programs'], None)} programs")
            return row
        rows = list(pool.map(cell, tasks))
    return rows


def _fmt(x: float, cap: float | None) -> str:
    if x == float("inf"):
        return f">{cap:g}" if cap else "miss"
    return f"{x:.2f}" if isinstance(x, float) and x < 100 else f"{x:.0f}"


def table(rows: list[dict], cap: float) -> str:
    cols = sorted({(r["engine"], r["variant"], r["length"]) for r in rows},
                  key=lambda c: (["random", "pct", "hypothesis", "atheris"].index(c[0]), c[1], c[2]))
    head = ["bug"] + [f"{e}{'/' + v if v not in ('-', 'behaviour') else ''} L{L}" for e, v, L in cols]
    order = {"-": 0, "behaviour": 0, "plain": 1, "swarm": 2, "mixed": 3, "lines": 4, "hypothesis-input": 5}
    cols.sort(key=lambda c: (["random", "pct", "hypothesis", "atheris"].index(c[0]), order.get(c[1], 9), c[2]))
    head = ["bug"] + [f"{e}{'/' + v if v not in ('-', 'behaviour') else ''} L{L}" for e, v, L in cols]
    lines = ["time-to-find, median CPU s (programs) over the seeds; >cap: most seeds missed",
             " | ".join(head), " | ".join("---" for _ in head)]
    for bug in dict.fromkeys(r["bug"] for r in rows):
        cells = [bug]
        for c in cols:
            r = next((x for x in rows if x["bug"] == bug and (x["engine"], x["variant"], x["length"]) == c), None)
            cells.append("" if r is None else
                         f"{_fmt(r['median_cpu_s'], cap)} ({_fmt(r['median_programs'], None)})")
        lines.append(" | ".join(cells))
    # per column: how many bugs meet the 60 s target, and the geometric mean over found ones
    foot = ["bugs found (median <= 60 s)"]
    for c in cols:
        rs = [x for x in rows if (x["engine"], x["variant"], x["length"]) == c]
        foot.append(f"{sum(1 for x in rs if x['median_cpu_s'] <= 60)}/{len(rs)}")
    lines.append(" | ".join(foot))
    return "\n".join(lines)


def _finite(x: Any) -> Any:
    """JSON has no infinity: a miss is null."""
    if isinstance(x, float) and x == float("inf"):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="random,pct,hypothesis,atheris")
    ap.add_argument("--lengths", default="32,128")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--cap", type=float, default=60.0, help="CPU seconds per search (default 60)")
    ap.add_argument("--bugs", help="comma-separated bug names (default: all)")
    ap.add_argument("--variant-bugs", default=",".join(QUICK_BUGS),
                    help="bugs on which atheris also runs with line coverage and Hypothesis decoding")
    ap.add_argument("--jobs", type=int, default=max(1, len(os.sched_getaffinity(0))))
    ap.add_argument("--minimize-budget", type=float, default=30.0)
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: throughput,feeding,find,minimize")
    ap.add_argument("--swarm", action="store_true",
                    help="run the random engine as plain (no swarm), swarm (every program) and mixed (half)")
    ap.add_argument("--quick", action="store_true", help=f"bugs {', '.join(QUICK_BUGS)}, 3 seeds, cap 30 s")
    ap.add_argument("--format", choices=("text", "json"), default="text")
    args = ap.parse_args(argv)
    if args.quick:
        args.bugs = args.bugs or ",".join(QUICK_BUGS)
        args.seeds, args.cap = min(args.seeds, 3), min(args.cap, 30.0)
    engines = [e for e in args.engines.split(",") if e]
    if "atheris" in engines:
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed: skipping it", file=sys.stderr)
            engines.remove("atheris")
    lengths = [int(x) for x in args.lengths.split(",")]
    skip = set(args.skip.split(","))
    selected = bugs(args.bugs.split(",") if args.bugs else None)
    variant_bugs = set(args.variant_bugs.split(",")) if args.variant_bugs else set()
    variants = {b: ["behaviour", "lines", "hypothesis-input"] for b in variant_bugs}
    text = args.format == "text"
    log = (lambda s: print(s, flush=True)) if text else (lambda s: print(s, file=sys.stderr, flush=True))
    report: dict[str, Any] = {"engines": engines, "lengths": lengths, "seeds": args.seeds, "cap_cpu_s": args.cap,
                              "bugs": [b.name for b in selected], "cpu_count": os.cpu_count()}
    t0 = time.time()
    if "throughput" not in skip:
        report["throughput"] = throughput()
        log("1. throughput (random engine, native, CPU time): programs/s")
        for k, v in report["throughput"].items():
            log(f"  {k:<32} {v:8.1f}")
    if "feeding" not in skip and "atheris" in engines:
        report["atheris_feeding"] = atheris_feeding()
        log("2. atheris feeding, same 150 random inputs of 1,792 bytes (full-rcu on xen-pv, length 128)")
        for k, v in report["atheris_feeding"].items():
            log(f"  {k:<12} {v['inputs_per_s']:8.1f} inputs/s, behaviours reached {v['behaviours']}")
    if "find" not in skip:
        log(f"3. time-to-find ({args.seeds} seeds, cap {args.cap:g} CPU s, {args.jobs} at a time)")
        rows = run_matrix(selected, engines, lengths, args.seeds, args.cap, args.jobs, variants, log,
                          args.swarm)
        report["find"] = rows
        if text:
            print()
            print(table(rows, args.cap))
    if "minimize" not in skip:
        log(f"4. minimised reproducers (random, length 128, budget {args.minimize_budget:g} s, up to 5 seeds)")
        mins = {}
        for b in selected:
            sizes = [m for m in (minimised(b.name, s, args.minimize_budget) for s in range(min(5, args.seeds)))
                     if m is not None]
            ops = [m["ops"] for m in sizes]
            mins[b.name] = {"sizes": sizes, "median_ops": _median(ops) if ops else None,
                            "max_ops": max(ops) if ops else None}
            log(f"  {b.name:<42} ops (incl. setup) median {mins[b.name]['median_ops']}, worst "
                f"{mins[b.name]['max_ops']}; CPUs {[m['cpus'] for m in sizes]}, "
                f"preemptions {[m['preemptions'] for m in sizes]}")
        report["minimised"] = mins
    report["wall_seconds"] = time.time() - t0
    if not text:
        print(json.dumps(_finite(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
