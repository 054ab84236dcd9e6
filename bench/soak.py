"""Soak benchmark: the built-in strategies, on every environment their
``SAFE_ON`` claims, over many seeds.  The gate for any change to the model or
the oracle: a correct built-in flagged here is a false alarm, the worst defect
this tool can have.

    .venv/bin/python bench/soak.py                                  # 5 seeds x 4,000 programs per cell
    .venv/bin/python bench/soak.py --seeds 5 --first-seed 9100 --programs 20000 --jobs 2
    .venv/bin/python bench/soak.py --lengths 32,64,128 --out soak-out
    .venv/bin/python bench/soak.py --env native+hugetlb,xen-pv+hugetlb   # only these cells

Cells are those of ``make fuzz`` (fuzz.safe_on.safe_on_cells): one per
environment, with every built-in claiming it run in lockstep, so each program
is judged absolutely on each strategy and compared for divergence.  Seed ``k``
(``first-seed + k``) runs ``--programs`` programs per cell with the random
engine, at program length ``lengths[k % len(lengths)]`` (short programs reach
races faster, long ones reach deep states).  Every violation is minimised and
written as a reproducer to ``--out``/seed-S/ (the same files ``shootdown fuzz`` writes;
one directory per seed, since one race found from two seeds has one file name).
It runs on the execution layer (fuzz.execution) as ``shootdown fuzz`` does:
``--jobs`` local workers, or a Dask cluster (``--cluster``), with the same
results for the same seeds.

Prints, per cell and seed, programs run and violations, then totals, the CPU
time of this process and its workers, and the command.  Exit status 1 if any
violation was found (so ``make soak`` fails), 0 otherwise.  No assertions on
time: it is a benchmark.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.execution import default_jobs  # noqa: E402
from fuzz.safe_on import safe_on_cells  # noqa: E402
from fuzz.session import Plan, run_session  # noqa: E402
from impls import registry  # noqa: E402

BUILTINS = ("direct", "semi-rcu", "full-rcu")


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="how many seeds (default 5)")
    ap.add_argument("--first-seed", type=int, default=int(time.strftime("%Y%m%d")) % 100_000,
                    help="the first seed (default: today's date, so that every day soaks new programs)")
    ap.add_argument("--programs", type=int, default=4000, help="programs per cell and seed (default 4,000)")
    ap.add_argument("--lengths", default="32,64,128",
                    help="program lengths, one per seed in turn (default 32,64,128)")
    ap.add_argument("--jobs", type=int, default=default_jobs(), help="worker processes (default: all cores)")
    ap.add_argument("--cluster", metavar="ADDRESS",
                    help="soak on a Dask cluster (tcp://host:8786; default: $SHOOTDOWN_CLUSTER, else --jobs "
                         "local workers)")
    ap.add_argument("--out", type=Path, default=Path("soak-out"), help="where reproducers go (default soak-out/)")
    ap.add_argument("--minimize-attempts", type=int, default=1000,
                    help="replays spent minimising each violation (default 1,000)")
    ap.add_argument("--env", metavar="NAMES",
                    help="comma-separated environments: soak only these cells (default: every SAFE_ON cell)")
    args = ap.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    if args.seeds < 1 or args.programs < 1 or not lengths or min(lengths) < 1 or args.jobs < 1:
        ap.error("--seeds, --programs, --lengths and --jobs must be positive")

    cells = safe_on_cells([registry.strategy(s) for s in BUILTINS])
    if args.env:
        wanted = [e.strip() for e in args.env.split(",") if e.strip()]
        unknown = sorted(set(wanted) - {c.env for c in cells})
        if unknown:
            ap.error(f"--env: no built-in claims {', '.join(unknown)} in SAFE_ON "
                     f"(cells: {', '.join(c.env for c in cells)})")
        cells = [c for c in cells if c.env in wanted]
    command = (f"bench/soak.py --seeds {args.seeds} --first-seed {args.first_seed} --programs {args.programs} "
               f"--lengths {args.lengths} --jobs {args.jobs}" + (f" --cluster {args.cluster}" if args.cluster else "")
               + (f" --env {args.env}" if args.env else ""))
    print(f"soak: {len(cells)} cells x {args.seeds} seeds x {args.programs:,} programs, "
          f"jobs {args.jobs}, lengths {lengths}, reproducers to {args.out}/seed-S/", flush=True)
    rows: dict[str, dict[int, tuple[int, int]]] = {}
    findings: list[str] = []
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    interrupted = False
    for k in range(args.seeds):
        seed = args.first_seed + k
        length = lengths[k % len(lengths)]
        plan = Plan(cells, engine="random", seed=seed, length=length, jobs=args.jobs, runs=args.programs,
                    out=args.out / f"seed-{seed}", minimize_attempts=args.minimize_attempts, command="bench/soak.py",
                    cluster=args.cluster)
        t = time.monotonic()
        summary = run_session(plan)
        for c in summary.cells:
            rows.setdefault(c.spec.env, {})[seed] = (c.stats.programs, len(c.findings))
            for f in c.findings:
                where = f.file or f.duplicate_of or "(not written)"
                findings.append(f"seed {seed} {c.spec.env}: {f.strategy} {', '.join(f.checks)} -> {where}")
            for crash in c.crashes:
                findings.append(f"seed {seed} {c.spec.env}: CRASH {crash.splitlines()[-1]}")
            for w in c.watchdogs:
                findings.append(f"seed {seed} {c.spec.env}: WATCHDOG {w}")
        n = sum(c.stats.programs for c in summary.cells)
        v = sum(len(c.findings) + len(c.crashes) + len(c.watchdogs) for c in summary.cells)
        print(f"  seed {seed} (length {length}): {n:,} programs, {v} violations, "
              f"{time.monotonic() - t:.0f} s", flush=True)
        if summary.interrupted:
            interrupted = True
            break

    seeds = sorted({s for r in rows.values() for s in r})
    print()
    head = f"{'environment':32} {'strategies':26}" + "".join(f" {'seed ' + str(s):>16}" for s in seeds)
    print(head + f" {'total':>16}")
    total_p = total_v = 0
    for c in cells:
        r = rows.get(c.env, {})
        p = sum(x[0] for x in r.values())
        v = sum(x[1] for x in r.values())
        total_p += p
        total_v += v
        per = "".join(f" {f'{r[s][0]:,}/{r[s][1]}' if s in r else '-':>16}" for s in seeds)
        print(f"{c.env:32} {','.join(c.strategies):26}{per} {f'{p:,}/{v}':>16}")
    cpu, wall = cpu_seconds() - cpu0, time.monotonic() - wall0
    print(f"\n(programs/violations per cell and seed)  total: {total_p:,} programs, {total_v} violations")
    print(f"CPU time {cpu:,.0f} s ({total_p / max(cpu, 1e-9):,.0f} programs per CPU second), "
          f"wall {wall:,.0f} s, {os.cpu_count()} cores")
    for line in findings:
        print("  " + line)
    print(f"command: .venv/bin/python {command}")
    if interrupted:
        print("interrupted: the figures above are partial")
        return 130
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
