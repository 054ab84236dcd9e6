"""``make fuzz``: hold every strategy to its word (``shootdown fuzz --safe-on``).

Each strategy names the environments it claims to be safe on (``SAFE_ON``; a
strategy file with an empty ``SAFE_ON`` is fuzzed on every environment).  One
cell per environment runs the strategies that claim it, in lockstep (so they
are compared, too); the time budget is split evenly over the cells.  Any
violation fails the run.

First, the canaries: planted bugs of tests/mutants that must each be found
within a small, deterministic budget (``--canary-runs`` programs, seed 0);
if one is not, the fuzzer or the oracle is broken and a green result would
mean nothing, so the run fails loudly before fuzzing anything.  By default
(:data:`CANARIES`) native flushes that skip lazy-TLB CPUs (native_skip_lazy,
on native+lazy), a THP collapse that does not wait for GUP-fast
(khugepaged_no_sync_ipi, on broadcast+thp: the collapse, deposit and
huge-PMD zap paths must all work for it to be found) and a GUP-fast that
takes a huge or splitting PMD for a table (gup_fast_no_pmd_leaf_check, on
native+thp: huge faults, splits and the bad-walk check must work); each
takes about 2 s.  ``--canary NAME``
picks others, any planted bug of tests/mutants whose environment is one of
fuzz/envs.py.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from . import junit
from .cli import UsageError, resolve_strategies
from .envs import ENVIRONMENTS
from .session import CellSpec, Plan, run_session

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "tests" / "mutants"
#: the planted bugs make fuzz checks it still finds before fuzzing
CANARIES = ("native_skip_lazy", "khugepaged_no_sync_ipi", "gup_fast_no_pmd_leaf_check")
#: the correct strategy a planted platform runs with when it names none
CANARY_STRATEGY = "full-rcu"


def safe_on_cells(strategies: list) -> list[CellSpec]:
    """One cell per environment, with the strategies claiming it."""
    by_env: dict[str, list[str]] = {}
    for s in strategies:
        claimed = tuple(s.meta.get("safe_on", ())) or tuple(ENVIRONMENTS)
        for e in claimed:
            if e not in ENVIRONMENTS:
                continue  # an environment this version does not know: nothing to hold it to
            by_env.setdefault(e, []).append(s.source if str(s.source).endswith(".py") else s.name)
    return [CellSpec(tuple(names), ENVIRONMENTS[e].platform, e)
            for e, names in sorted(by_env.items(), key=lambda kv: list(ENVIRONMENTS).index(kv[0]))]


def _planted(path: Path) -> dict:
    """The planted bug's ``PLANTED`` record, read without importing the file."""
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PLANTED"
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise UsageError(f"{path}: not a planted bug (no PLANTED record)")


def canary_cell(name: str) -> CellSpec:
    """The cell that fuzzes planted bug ``name`` (a file stem of tests/mutants)
    on its environment: a strategy mutant alone, a platform mutant with the
    correct strategy it names."""
    path = MUTANTS / f"{name}.py"
    if not path.exists():
        raise UsageError(f"canary: no planted bug {name!r} in {MUTANTS}")
    planted = _planted(path)
    env = planted["env"]
    if env not in ENVIRONMENTS:
        raise UsageError(f"canary: {name} is planted in {env!r}, not an environment of fuzz/envs.py")
    if planted["kind"] == "platform":
        return CellSpec((planted.get("strategy", CANARY_STRATEGY),), str(path), env)
    return CellSpec((str(path),), ENVIRONMENTS[env].platform, env)


def canary(runs: int, length: int, jobs: int = 1, names: tuple[str, ...] = CANARIES) -> tuple[bool, str]:
    """Is every planted bug of ``names`` still found within ``runs`` programs?"""
    lines = []
    for name in names:
        cell = canary_cell(name)
        plan = Plan([cell], engine="random", seed=0, length=length, jobs=jobs, runs=runs, write=False,
                    minimize_attempts=0, command="shootdown fuzz --safe-on (canary)")
        s = run_session(plan)
        c = s.cells[0] if s.cells else None
        if c is None or c.stats.violating == 0:
            n = c.stats.programs if c else 0
            return False, (f"CANARY FAILED: the planted bug {name} (on {cell.env}) was not found in {n} "
                           "programs: the fuzzer or the oracle is broken, so a clean run would prove nothing")
        f = c.findings[0] if c.findings else None
        what = f"{', '.join(f.checks)} after {f.found_after_programs + 1} programs" if f else "a violation"
        lines.append(f"canary: planted bug {name} found on {cell.env} ({what})")
    return True, "\n".join(lines)


def run_safe_on(args: argparse.Namespace) -> int:
    from .commands.fuzz import execute, plan_from_args

    if getattr(args, "baseline", None):
        raise UsageError("--safe-on fuzzes each strategy on the environments it claims; for a base-vs-patch "
                         "verdict use --baseline without --safe-on (or shootdown matrix --baseline)")
    if args.platform or args.env:
        raise UsageError("--safe-on picks the environments from each strategy's SAFE_ON; "
                         "drop --platform/--env")
    strategies = resolve_strategies(args.strategy, args.strategy_file)
    cells = safe_on_cells(strategies)
    plan = plan_from_args(args, cells)            # checks --out and --junit before any work
    ok, msg = canary(args.canary_runs, args.length, 1, tuple(args.canary or CANARIES))
    if not ok:
        print(msg)  # noqa: T201  (the CLI layer: make fuzz prints the canary verdict)
        if args.junit:
            # CI must see the run fail, not a missing report
            case = junit.Case("shootdown.fuzz.canary", "canary",
                              errors=[junit.Problem(msg.splitlines()[0][:200], "canary", msg)])
            junit.write(args.junit, [junit.Suite("shootdown fuzz --safe-on", [case])])
            print(f"shootdown: JUnit report written to {args.junit}", file=sys.stderr)  # noqa: T201
        return 1
    plan.command = "shootdown fuzz --safe-on"
    lines = [msg, "cells (environment: the strategies claiming it):"]
    lines += [f"  {c.env}: {', '.join(Path(s).name if s.endswith('.py') else s for s in c.strategies)}"
              for c in cells]
    if plan.budget is not None:
        lines.append(f"budget {plan.budget:.0f} s over {len(cells)} cells, {plan.jobs} jobs")
    return execute(plan, args.format, header="\n".join(lines), junit_path=args.junit)
