"""Efficiency of the exhaustive mode on the corpus: per litmus file and
strategy (the ones its ``expect:`` header names), the executions explored,
those pruned by the reduction, CPU time, and the bound reached within the
budget; for an expected U, the executions until the first violation.

    .venv/bin/python bench/exhaustive.py                       # bound 2, 60 s, both reductions
    .venv/bin/python bench/exhaustive.py --reduction none --budget 60 --preemptions 2
    .venv/bin/python bench/exhaustive.py corpus/gupfast+munmap+xenflush.yaml

Times are CPU seconds of this process (one core).  The closing lines list
every expected S that was not proven within the budget at the bound.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fuzz import corpus  # noqa: E402
from fuzz.exhaustive import explore  # noqa: E402
from impls import registry  # noqa: E402


def strategies_of(lit: corpus.Litmus, path: Path) -> list[tuple[str, object, list[str]]]:
    out = []
    for key in lit.expect:
        if key.endswith(".py"):
            s = registry.strategy(corpus.resolve_expect_key(lit, key))
        else:
            s = registry.strategy(key)
        out.append((key, s, lit.expected_checks(key) or []))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="litmus files (default: every file under corpus/)")
    ap.add_argument("--preemptions", type=int, default=2)
    ap.add_argument("--choices", type=int, default=2)
    ap.add_argument("--budget", type=float, default=60.0, help="CPU seconds per exploration")
    ap.add_argument("--reduction", choices=("none", "sleep", "both"), default="both")
    args = ap.parse_args(argv)
    files = [Path(f) for f in args.files] or corpus.litmus_files(ROOT / "corpus")
    modes = ["none", "sleep"] if args.reduction == "both" else [args.reduction]
    print(f"bound {args.preemptions} preemption(s), {args.choices} choice(s); budget {args.budget:g} CPU s "
          "per exploration; times in CPU s")
    print(f"{'file':<58} {'strategy':<16} {'exp':<4} {'red':<5} {'verdict':<8} {'execs':>7} "
          f"{'pruned':>7} {'time':>7}  bound")
    unproven = []
    totals: dict[str, float] = {m: 0.0 for m in modes}
    for path in files:
        lit = corpus.load(path)
        plat_name = lit.program.platform
        platform = registry.platform(plat_name)
        try:
            rel = str(path.resolve().relative_to(ROOT))
        except ValueError:
            rel = str(path)
        for _key, s, exp in strategies_of(lit, path):
            for mode in modes:
                r = explore(lit.program, s, platform, args.preemptions, args.choices, mode == "sleep",
                            budget_s=args.budget)
                totals[mode] += r.stats.seconds
                if r.violation is not None:
                    verdict = "U"
                    bound = f"found at {r.violation.preemptions} preemption(s)"
                elif r.proven:
                    verdict = "S"
                    bound = "all schedules" if r.exhaustive else f"{r.completed_bound} (complete)"
                else:
                    verdict = "partial"
                    bound = f"{r.completed_bound} completed"
                    if not exp:
                        unproven.append((rel, s.name, mode, r.summary()))
                if not exp and r.violation is not None:
                    unproven.append((rel, s.name, mode, "expected S, found a violation: " + r.summary()))
                print(f"{rel:<58} {s.name[:16]:<16} {'S' if not exp else 'U':<4} {mode:<5} {verdict:<8} "
                      f"{r.stats.executions:>7} {r.stats.pruned:>7} {r.stats.seconds:>7.1f}  {bound}",
                      flush=True)
    print()
    for m in modes:
        print(f"total CPU time, reduction {m}: {totals[m]:.1f}s")
    if unproven:
        print("expected S verdicts NOT proven within the budget at the bound:")
        for u in unproven:
            print("  " + " | ".join(u))
    else:
        print(f"every expected S verdict proven up to {args.preemptions} preemption(s) and "
              f"{args.choices} choice(s) within {args.budget:g} CPU s each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
