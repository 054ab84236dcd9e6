"""``shootdown matrix``: fuzz every strategy on every environment and print the
verdict matrix (fuzz.matrix); ``--expected FILE`` compares it with a file of
expected verdicts (corpus/expected-matrix.yaml: the primer's section 2).

Exit status: with ``--expected``, 0 if every cell with an expectation
matches and 1 if any disagrees; without, 0 if every cell is S and 1 if any is
U; 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from pathlib import Path

from fuzz import junit, matrix, triage
from fuzz.cli import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_VIOLATION,
    UsageError,
    count,
    jobs,
    resolve_platform,
    resolve_strategies,
    seconds,
    writable_dir,
)
from fuzz.engine import PCT_DEPTH, SEEDED_ENGINES
from fuzz.envs import ENVIRONMENTS
from fuzz.execution import ExecutionError, check_jobs, default_jobs
from fuzz.minimize import DEFAULT_ATTEMPTS
from fuzz.report import PeriodicProgress
from impls import registry

DEFAULT_BUDGET = 10.0
DEFAULT_OUT = "build/matrix"


def _specs(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    strategies = resolve_strategies(args.strategy, args.strategy_file)  # validates, one-line errors
    names = list(args.strategy or []) + [str(Path(p).resolve()) for p in args.strategy_file or []]
    if not names:
        names = list(registry.STRATEGIES)
    assert len(names) == len(strategies)
    if args.baseline:  # the baseline is a column too (added if it is not one)
        base = args.baseline if not args.baseline.endswith(".py") else str(Path(args.baseline).resolve())
        b = resolve_strategies([base], None)[0] if not base.endswith(".py") else resolve_strategies(None, [base])[0]
        if not any(registry.strategy(n).name == b.name for n in names):
            names.append(base)
        if len(names) < 2:
            raise UsageError(f"--baseline {args.baseline}: give the candidate with --strategy or --strategy-file")
        args.baseline_name = b.name
    envs = list(args.env or ENVIRONMENTS)
    for e in envs:
        if e not in ENVIRONMENTS:
            raise UsageError(f"unknown environment {e!r} (known: {', '.join(ENVIRONMENTS)})")
    return names, envs


def cmd_matrix(args: argparse.Namespace) -> int:
    names, envs = _specs(args)
    platform_file = None
    if args.platform_file:
        resolve_platform(None, args.platform_file, "native")
        platform_file = str(Path(args.platform_file).resolve())
    if args.budget is not None and not (args.budget > 0 and math.isfinite(args.budget)):
        raise UsageError("--budget must be a positive number of seconds")
    if args.runs is not None and args.runs <= 0:
        raise UsageError("--runs must be positive")
    budget = args.budget if (args.budget is not None or args.runs is not None) else DEFAULT_BUDGET
    expected = None
    if args.expected:
        try:
            expected = matrix.load_expected(args.expected)
        except matrix.MatrixError as e:
            print(f"shootdown: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    engines = tuple(args.engine) if args.engine else ("random", "pct")
    if args.junit:
        writable_dir(Path(args.junit).parent, "--junit", args.junit)
    out_dir = None if args.no_reproducers else str(writable_dir(args.out, "--out"))
    if args.minimize_attempts <= 0:
        raise UsageError("--minimize-attempts must be positive")
    if args.exhaustive and (args.programs < 0 or args.length <= 0 or args.preemptions < 0 or args.choices < 0
                            or not args.program_budget > 0):
        raise UsageError("--programs, --preemptions and --choices must be >= 0, --length and "
                         "--program-budget positive")
    specs = [matrix.CellSpec(s, e, platform_file, budget, args.runs, args.seed, engines,
                             not args.no_corpus_seeds, out_dir, not args.no_minimize, args.minimize_attempts,
                             args.exhaustive, args.programs, args.length, args.preemptions, args.choices,
                             args.program_budget)
             for s in names for e in envs]
    strategy_names = {s: registry.strategy(s).name for s in names}
    order = matrix.ordered_for_packing(specs, expected, lambda sp: strategy_names[sp.strategy])
    quiet = args.quiet or args.format != "text" and not sys.stderr.isatty()

    def progress(done: int, total: int, c: matrix.Cell) -> None:
        if not quiet:
            print(f"[{done}/{total}] {c.strategy} @ {c.env}: {c.short()} ({c.seconds:.1f} s)",
                  file=sys.stderr, flush=True)

    try:
        jobs = check_jobs(args.jobs) if args.jobs else default_jobs()
    except ExecutionError as e:
        raise UsageError(str(e)) from None
    ordered = [specs[i] for i in order]

    def on_sigterm(signum, frame):  # like Ctrl-C: the workers are stopped, nothing left behind
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        # a line per settled cell, and without a terminal a status line every 30 s:
        # a cell's budget can be long, and a stuck run must not look like a slow one
        heartbeat = None if quiet or sys.stderr.isatty() else PeriodicProgress()
        cells_ordered = matrix.run_matrix(ordered, jobs, progress, cluster=args.cluster, heartbeat=heartbeat)
    except ExecutionError as e:
        raise UsageError(str(e)) from None
    except matrix.MatrixError as e:
        print(f"shootdown: error: {e}", file=sys.stderr)
        return EXIT_VIOLATION
    finally:
        signal.signal(signal.SIGTERM, old)
    by_spec = dict(zip(order, cells_ordered, strict=True))
    cells = [by_spec[i] for i in range(len(specs))]
    mismatches, unknown = (matrix.compare(cells, expected) if expected is not None else (None, None))
    default_exp = triage.default_expected() if expected is None else None
    what = f"{budget:g} s" if budget is not None else ""
    if args.runs is not None:
        what = f"{args.runs} programs" + (f" or {budget:g} s" if args.budget is not None else "")
    header = (f"shootdown matrix: {len(names)} strategies x {len(envs)} environments, "
              f"budget {what} per cell, engines {'+'.join(engines)}, seed {args.seed}"
              + (f", platform {platform_file}" if platform_file else ""))
    if args.exhaustive:
        header = (f"shootdown matrix --exhaustive: {len(names)} strategies x {len(envs)} environments; "
                  f"per cell the corpus programs of the environment and {args.programs} generated "
                  f"programs of {args.length} ops on 2 CPUs, each explored up to {args.preemptions} "
                  f"preemption(s) and {args.choices} choice(s) ({args.program_budget:g} CPU s each), "
                  f"seed {args.seed}.\n'S proven': no violation in any execution of those programs "
                  "within that bound; 'S sampled': some exploration hit its budget (no proof); "
                  "larger programs and bounds are not covered")
    elif "pct" in engines:
        header += (f"\nS cells are sampled: PCT hits a given depth-{PCT_DEPTH} ordering bug with at least "
                   "the probability shown, never certainly")
    safe_on = {registry.strategy(n).name: registry.strategy(n).meta.get("safe_on", ()) for n in names}
    labels = {c.key: triage.label(c.strategy, c.env, safe_on.get(c.strategy, ()), expected or default_exp)
              for c in cells if c.verdict == "U"}
    base = getattr(args, "baseline_name", None)
    versus = matrix.versus_baseline(cells, base) if base else None
    if args.format == "json":
        meta = {"budget_seconds": budget, "runs": args.runs, "seed": args.seed, "engines": list(engines),
                "platform_file": platform_file, "expected": args.expected, "baseline": base}
        data = matrix.to_json(cells, mismatches, meta, unknown)
        data["triage"] = {f"{s} @ {e}": {"status": lab.status, "why": lab.why} for (s, e), lab in labels.items()}
        if versus is not None:
            data["versus_baseline"] = versus
        print(json.dumps(data, indent=2))
    elif args.format == "markdown":
        print(matrix.render_markdown(cells, mismatches, header, expected))
    else:
        print(matrix.render_text(cells, mismatches, header, expected, labels, versus, base))
    if args.junit:
        junit.write(args.junit, matrix.to_junit(cells, labels, mismatches, versus, base))
        print(f"shootdown: JUnit report written to {args.junit}", file=sys.stderr)
    if versus is not None:  # base vs patch: the exit status follows regressions only
        return EXIT_VIOLATION if any(v["status"] == "regression" for v in versus) else EXIT_OK
    if expected is not None:
        return EXIT_VIOLATION if mismatches else EXIT_OK
    return EXIT_OK if all(c.verdict == "S" for c in cells) else EXIT_VIOLATION


def register(sub) -> None:
    p = sub.add_parser(
        "matrix", help="fuzz every strategy x environment cell and print the verdict matrix",
        description="Fuzz every cell of strategies x environments (fuzz/envs.py: the primer's "
                    "section 2 columns) for a per-cell budget and print S (no violation: programs "
                    "run, PCT guarantee reached) or U (the checks that fired, with a reproducer).")
    p.add_argument("--strategy", action="append", metavar="NAME",
                   help=f"a built-in strategy ({', '.join(registry.STRATEGIES)}); repeatable; "
                        "default: all three")
    p.add_argument("--strategy-file", action="append", metavar="PATH",
                   help="a strategy written in one Python file; repeatable")
    p.add_argument("--platform-file", metavar="PATH",
                   help="run every environment on this platform file instead of its own platform")
    p.add_argument("--env", action="append", metavar="NAME",
                   help=f"restrict to these environments (repeatable; known: {', '.join(ENVIRONMENTS)})")
    p.add_argument("--budget", type=seconds(), metavar="SECONDS",
                   help=f"time budget per cell, in worker-seconds (default {DEFAULT_BUDGET:g} s unless --runs "
                        "is given)")
    p.add_argument("--runs", type=count(), metavar="N",
                   help="program budget per cell (deterministic: the result depends only on --seed)")
    p.add_argument("--jobs", "-j", type=jobs(zero=True), default=0, metavar="N",
                   help="local worker processes (default 0: one per core)")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="run on a Dask distributed cluster, e.g. tcp://host:8786 (default: $SHOOTDOWN_CLUSTER)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", action="append", choices=SEEDED_ENGINES,
                   help="engines to alternate (repeatable; default: random and pct)")
    p.add_argument("--format", choices=("text", "json", "markdown"), default="text")
    p.add_argument("--junit", metavar="FILE",
                   help="also write a JUnit XML report: one test case per cell (failures: new U cells, "
                        "mismatches with --expected, or regressions with --baseline)")
    p.add_argument("--baseline", metavar="NAME|FILE",
                   help="base-vs-patch: compare every other strategy with this one (e.g. semi-rcu): an "
                        "environment where a candidate is U and the baseline S is a regression, U on both "
                        "inherited; the exit status follows regressions only")
    p.add_argument("--expected", metavar="FILE",
                   help="a YAML file of expected verdicts (corpus/expected-matrix.yaml); "
                        "mismatches are listed and make the exit status 1")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"where the reproducers of U cells go (default {DEFAULT_OUT}/)")
    p.add_argument("--no-reproducers", action="store_true", help="do not write reproducers")
    p.add_argument("--no-minimize", action="store_true", help="write reproducers as found")
    p.add_argument("--minimize-attempts", type=count(), default=DEFAULT_ATTEMPTS, metavar="N",
                   help=f"runs to minimise each reproducer (fuzz.minimize; default {DEFAULT_ATTEMPTS})")
    p.add_argument("--no-corpus-seeds", action="store_true",
                   help="do not replay the corpus/ programs that belong to an environment first")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    g = p.add_argument_group("exhaustive mode (fuzz/exhaustive.py)")
    g.add_argument("--exhaustive", action="store_true",
                   help="explore every execution of small programs per cell instead of fuzzing: "
                        "S cells say 'proven' (up to the bound, for those programs) or 'sampled'")
    g.add_argument("--programs", type=count(zero=True), default=10, metavar="N",
                   help="generated programs per cell (default 10), after the cell's corpus programs")
    g.add_argument("--length", type=count(), default=3, metavar="OPS",
                   help="operations per generated program (default 3)")
    g.add_argument("--preemptions", type=count(zero=True), default=2, metavar="K", help="preemption bound (default 2)")
    g.add_argument("--choices", type=count(zero=True), default=1, metavar="F",
                   help="labelled choices answered true per execution (default 1)")
    g.add_argument("--program-budget", type=seconds(), default=10.0, metavar="SECONDS",
                   help="CPU seconds per program exploration (default 10)")
    p.set_defaults(func=cmd_matrix)
