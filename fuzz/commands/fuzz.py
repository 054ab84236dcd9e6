"""``shootdown fuzz``: generate programs, run them in lockstep on the selected
strategies, judge, minimise and write every new finding as a reproducer."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from fuzz import junit, triage
from fuzz.cli import UsageError, count, fraction, jobs, resolve_strategies, seconds, writable_dir
from fuzz.engine import ENGINES
from fuzz.envs import ENVIRONMENTS, default_environment
from fuzz.execution import ExecutionError, check_jobs
from fuzz.minimize import DEFAULT_ATTEMPTS
from fuzz.report import PeriodicProgress
from fuzz.session import (
    DEFAULT_ENGINE,
    DEFAULT_LENGTH,
    SWARM,
    CellSpec,
    FindingReport,
    Plan,
    StopFlag,
    Summary,
    default_jobs,
    is_tty,
    run_session,
)
from fuzz.watchdog import WATCHDOG_SECONDS
from impls import registry
from impls.machine.plugin import PluginError
from oracle.behaviours import BEHAVIOURS


def _platform_arg(name: str) -> str:
    """A built-in platform name, or a platform file (checked by loading it)."""
    if name.endswith(".py"):
        registry.platform(name)  # PluginError -> exit 2
        return name
    if name not in registry.PLATFORM_MODULES:
        raise UsageError(f"unknown platform {name!r} (built-ins: {', '.join(registry.PLATFORMS)}; "
                         "or a path to a platform .py file)")
    return name


def build_cells(strategies: list, platforms: list[str] | None, envs: list[str] | None) -> list[CellSpec]:
    """--platform x --env; without --env each platform's default environment,
    without --platform each environment's own platform (or all three
    built-in platforms when neither is given)."""
    names = tuple(s.source if str(s.source).endswith(".py") else s.name for s in strategies)
    for e in envs or []:
        if e not in ENVIRONMENTS:
            raise UsageError(f"unknown environment {e!r} (known: {', '.join(ENVIRONMENTS)})")
    plats = [_platform_arg(p) for p in platforms or []]
    cells: list[CellSpec] = []
    if envs:
        for e in envs:
            for p in plats or [ENVIRONMENTS[e].platform]:
                cells.append(CellSpec(names, p, e))
    else:
        for p in plats or list(registry.PLATFORMS):
            env = default_environment(p if not p.endswith(".py") else "native")
            cells.append(CellSpec(names, p, env.name))
    return cells


def behaviour_view(c) -> tuple[list[str], list[str], dict[str, str]]:
    """A cell's behaviour events: reached, possible but not reached, and
    impossible in its environment on its platform (with why)."""
    _, platform, env = c.spec.resolve()
    impossible = env.impossible_behaviours(platform)
    reached = sorted(set(c.stats.behaviours) & set(BEHAVIOURS))
    missing = sorted(set(BEHAVIOURS) - set(reached) - set(impossible))
    return reached, missing, {k: v for k, v in sorted(impossible.items()) if k not in reached}


def summary_json(s: Summary) -> dict[str, Any]:
    cells = []
    for c in s.cells:
        st = c.stats
        reached, missing, impossible = behaviour_view(c)
        cells.append({
            "cell": c.label, "strategies": list(c.spec.strategies), "platform": c.spec.platform,
            "env": c.spec.env, "seconds": round(c.seconds, 3), "programs": st.programs,
            "programs_per_s": round(c.rate, 2), "fuzz_seconds": round(c.fuzz_seconds, 3),
            "steps": st.steps, "violating_programs": st.violating,
            "behaviours": dict(sorted(st.behaviours.items())),
            "behaviours_reached": len(reached), "behaviours_total": len(BEHAVIOURS),
            "behaviours_possible": len(BEHAVIOURS) - len(impossible),
            "behaviours_missing": missing, "behaviours_impossible": impossible,
            "feedback_keys": len(st.keys),
            "findings": [_finding_json(f) for f in c.findings],
            "crashes": c.crashes,
            "watchdog": c.watchdogs,
            "covered": c.covered,
            "pct": c.pct,
        })
    return {"engine": s.engine, "seed": s.seed, "length": s.length, "jobs": s.jobs, "out": s.out,
            "executor": s.executor, "seconds": round(s.seconds, 3), "timed": s.timed, "interrupted": s.interrupted,
            "violations": s.violations, "new": s.new, "known": s.violations - s.new,
            "unreplayable_divergences": [f.file or f.signature for f in s.unreplayable],
            "baseline": s.baseline or None, "regressions": s.regressions if s.baseline else None,
            "crashes": s.crashes, "lost_workers": s.lost_workers, "exit": s.exit_code,
            "cells": cells}


def _finding_json(f: FindingReport) -> dict[str, Any]:
    return {"strategy": f.strategy, "checks": f.checks, "signature": f.signature, "file": f.file,
            "duplicate_of": f.duplicate_of, "title": f.title, "engine": f.engine, "seed": f.seed,
            "iteration": f.iteration, "found_after_s": round(f.found_after, 3),
            "found_after_programs": f.found_after_programs, "size": f.size, "raw_size": f.raw_size,
            "minimize_seconds": round(f.minimize_seconds, 3), "minimize_runs": f.minimize_runs,
            "minimized": f.minimized, "status": f.status, "known_because": f.known_because,
            "replayed": f.replayed, "baseline": f.baseline, "baseline_evidence": f.baseline_evidence}


def _size_text(z: dict[str, int]) -> str:
    if not z:
        return ""
    p = z.get("preemptions", 0)
    return (f"{z['ops']} ops + {z['setup']} setup, {z['cpus']} CPUs, "
            f"{p} preemption{'s' if p != 1 else ''}")


def _where(f: FindingReport) -> str:
    return f"-> {f.file}" if f.file else (f"(already in {f.duplicate_of})" if f.duplicate_of else "(not written)")


def finding_line(f: FindingReport) -> str:
    extra = f"; minimised in {f.minimize_runs} runs" if f.minimize_runs else ""
    if f.minimize_runs and not f.minimized:
        extra += " (attempts used up)"
    tag = ""
    if f.baseline == "regression":
        tag = "REGRESSION  "  # the baseline showed neither its checks nor its race on this program
    elif f.baseline == "inherited":
        tag = "inherited  "
    return f"U {tag}{f.strategy}: {', '.join(f.checks)}  {_where(f)}  [{_size_text(f.size)}{extra}]"


def findings_text(c, baseline: str = "") -> list[str]:
    """A cell's findings: new ones one per line; known ones (fuzz.triage)
    summarised by why they are known; with a baseline, the candidate's
    regressions first, then what it inherits, then the baseline's own;
    divergences that do not replay from their reproducer as defects."""
    out: list[str] = []
    counted = [f for f in c.findings if f.counted]
    if baseline:
        mine = [f for f in counted if f.baseline != "baseline"]
        out += [f"      {finding_line(f)}" for f in mine if f.baseline == "regression"]
        for f in mine:
            if f.baseline == "inherited":
                out.append(f"      {finding_line(f)} ({f.baseline_evidence})")
        theirs = [f for f in counted if f.baseline == "baseline"]
        if theirs:
            out.append(f"      baseline {baseline}: " + "; ".join(
                f"{', '.join(f.checks)} {_where(f)}" for f in theirs))
    else:
        out += [f"      {finding_line(f)}" for f in counted if f.status == "new"]
        groups: dict[tuple[str, str], list[FindingReport]] = {}
        for f in counted:
            if f.status == "known":
                groups.setdefault((f.strategy, f.known_basis), []).append(f)
        for fs in groups.values():
            line = triage.known_summary((f.strategy, f.known_basis, c.spec.env, ", ".join(f.checks)) for f in fs)[0]
            out.append(f"      known: {line}: " + "; ".join(_where(f).removeprefix("-> ") for f in fs))
    for f in c.findings:
        if f.replayed is False:
            out.append(f"      DEFECT: a divergence ({f.signature.split('|', 1)[1]}) that its reproducer "
                       f"{f.file or '(not written)'} does not show again when replayed: not reported as a "
                       "finding; a defect of the divergence check to investigate")
    return out


def summary_text(s: Summary) -> str:
    where = f"{s.jobs} job{'s' if s.jobs != 1 else ''}" if not s.executor.startswith("Dask") else s.executor
    out = [f"shootdown fuzz: engine {s.engine}, length {s.length}, seed {s.seed}, {where}, {s.seconds:.1f} s"
           + ("  (interrupted)" if s.interrupted else "")]
    for c in s.cells:
        st = c.stats
        rate = c.rate
        reached, missing, impossible = behaviour_view(c)
        out.append(f"  {c.label}: {st.programs:,} programs in {c.seconds:.1f} s ({rate:.1f}/s), "
                   f"behaviours {len(reached)}/{len(BEHAVIOURS) - len(impossible)} possible here, "
                   f"feedback keys {len(st.keys)}")
        if s.timed or s.interrupted or c.covered != [[0, st.programs]]:
            out.append(f"      {_covered_text(c.covered, s.engine, s.seed)}")
        if missing and st.programs:
            out.append(f"      not reached: {', '.join(missing)}")
        if c.pct:
            p = c.pct
            out.append(f"      pct: {p['runs']:,} runs, depth {p['depth']}, k = {p['k_steps']} steps, "
                       f"<= {p['agents']} agents: >= {100 * p['guarantee']:.1f}% chance to hit any given "
                       f"depth-{p['depth']} ordering bug within k steps (per run >= 1/{round(1 / p['per_run'])}, "
                       "for a bug present in every program)")
        out += findings_text(c, s.baseline)
        for x in c.crashes:
            out.append("      CRASH (the simulator raised; a bug in the model or a plug-in):")
            out += ["        " + line for line in x.rstrip().splitlines()]
        for w in c.watchdogs:
            out.append(f"      {watchdog_text(w)}")
    for x in s.lost_workers:
        out.append(f"  lost worker: {x}")
    files = sum(1 for f in s.reported() if f.file)
    defects = len(s.unreplayable)
    tail = (f", crashes: {s.crashes}" if s.crashes else "") + \
        (f", unreplayable divergences: {defects}" if defects else "")
    if s.baseline:
        mine = [f for f in s.reported() if f.baseline != "baseline"]
        inherited = sum(1 for f in mine if f.baseline == "inherited")
        out.append(f"against baseline {s.baseline}: {s.regressions} regression{'s' if s.regressions != 1 else ''}"
                   f" (findings of the candidate that {s.baseline} showed neither on their reproducer nor in "
                   f"{triage.BASELINE_TRIES:,} schedules of their program), {inherited} inherited"
                   f" ({s.baseline} fails too); the exit status follows regressions{tail}")
    elif s.violations or s.crashes or defects:
        known = s.violations - s.new
        out.append(f"violations: {s.violations}: {s.new} new, {known} known "
                   f"({files} reproducer{'s' if files != 1 else ''} in {s.out}){tail}")
    else:
        out.append("no violation found" + (" (interrupted)" if s.interrupted else ""))
    return "\n".join(out)


def summary_junit(s: Summary, suite: str = "shootdown fuzz") -> list[junit.Suite]:
    """One JUnit test case per cell: a failure per new finding (with a
    baseline: per regression), an error per crash, watchdog stop or
    unreplayable divergence; known and inherited findings in system-out."""
    out = junit.Suite(suite)
    for c in s.cells:
        case = junit.Case(f"shootdown.fuzz.{c.spec.env}", c.label, round(c.seconds, 3))
        notes = []
        for f in c.findings:
            text = junit.finding_text(f.file, ", ".join(f.checks), f.summary, f.diagram,
                                      f"strategy {f.strategy}; found at iteration {f.iteration} "
                                      f"(engine {f.engine}, seed {s.seed})")
            if f.replayed is False:
                case.errors.append(junit.Problem(f"divergence {f.signature.split('|', 1)[1]} does not replay from "
                                                 "its reproducer (a defect of the divergence check)",
                                                 "unreplayable-divergence", text))
            elif (f.baseline == "regression") if s.baseline else (f.status == "new"):
                what = "regression" if s.baseline else "new"
                case.failures.append(junit.Problem(f"{what}: {f.strategy} {', '.join(f.checks)}",
                                                   ", ".join(f.checks), text))
            else:
                why = (f"inherited from {s.baseline}" if f.baseline == "inherited" else
                       f"the baseline {s.baseline}'s own" if f.baseline == "baseline" else f"known: {f.known_because}")
                notes.append(f"{f.strategy} {', '.join(f.checks)} {_where(f)} ({why})")
        for x in c.crashes:
            case.errors.append(junit.Problem(x.strip().splitlines()[0][:200] if x.strip() else "crash", "crash", x))
        for w in c.watchdogs:
            case.errors.append(junit.Problem(watchdog_text(w)[:200], "watchdog", watchdog_text(w)))
        case.out = "\n".join(notes)
        out.cases.append(case)
    return [out]


def _covered_text(covered: list[list[int]], engine: str, seed: int) -> str:
    what = {"hypothesis": "Hypothesis chunks", "atheris": "libFuzzer runs"}.get(engine, "iterations")
    if not covered:
        return f"{what} covered: none"
    ranges = ", ".join(f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in covered)
    how = f" (iteration i runs seed {seed} * 1000003 + i)" if engine in ("random", "pct") else ""
    return f"{what} covered: {ranges}{how}"


def watchdog_text(w: dict[str, Any]) -> str:
    where = (f"while minimising the finding of iteration {w.get('iteration')}" if w.get("while") == "minimising"
             else f"in program iteration {w.get('iteration')} (engine {w.get('engine')}, --seed {w.get('seed')}"
             + (f", iteration seed {w['iteration_seed']}" if w.get("iteration_seed") is not None else "") + ")")
    who = f" of strategy {w['strategy']!r}" if w.get("strategy") else ""
    return (f"WATCHDOG: hook {w.get('hook')}() ({w.get('file')}:{w.get('line')}){who} ran more than "
            f"{w.get('limit'):g} CPU seconds without yielding, {where}; the run was stopped")


class _Progress:
    """The live line on a terminal (stderr), redrawn in place."""

    def __init__(self) -> None:
        self.width = 0

    def __call__(self, text: str) -> None:
        text = text[:160]
        sys.stderr.write("\r" + text.ljust(self.width))
        sys.stderr.flush()
        self.width = len(text)

    def clear(self) -> None:
        if self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
            self.width = 0


def plan_from_args(args: argparse.Namespace, cells: list[CellSpec]) -> Plan:
    options: list[tuple[str, Any]] = [("atheris_input", args.atheris_input),
                                      ("atheris_coverage", args.atheris_coverage),
                                      ("verbose", args.verbose), ("swarm", args.swarm)]
    if args.runs is None and args.budget is None:
        args.budget = 60.0
    try:
        jobs = check_jobs(args.jobs) if args.jobs else default_jobs()
    except ExecutionError as e:
        raise UsageError(str(e)) from None
    if not args.no_write:
        writable_dir(args.out, "--out")
    if args.junit:
        writable_dir(Path(args.junit).parent, "--junit", args.junit)
    return Plan(cells, engine=args.engine, seed=args.seed, length=args.length,
                jobs=jobs, runs=args.runs, budget=args.budget, out=Path(args.out),
                write=not args.no_write, minimize_attempts=args.minimize_attempts, options=tuple(options),
                command="shootdown fuzz", cluster=args.cluster, watchdog=args.watchdog,
                expected=triage.default_expected(), baseline=getattr(args, "baseline_spec", None),
                diagrams=bool(args.junit))


def cmd_fuzz(args: argparse.Namespace) -> int:
    if args.safe_on:
        from fuzz.safe_on import run_safe_on
        return run_safe_on(args)
    strategies = resolve_strategies(args.strategy, args.strategy_file)
    if args.baseline:
        strategies = with_baseline(strategies, args)
    cells = build_cells(strategies, args.platform, args.env)
    plan = plan_from_args(args, cells)
    return execute(plan, args.format, junit_path=args.junit)


def with_baseline(strategies: list, args: argparse.Namespace) -> list:
    """--baseline NAME|FILE: the baseline runs in the lockstep of every cell
    (added if it is not one of the strategies); the others are candidates."""
    base = resolve_strategies([args.baseline], None)[0] if not args.baseline.endswith(".py") else \
        resolve_strategies(None, [args.baseline])[0]
    if not any(s.name == base.name for s in strategies):
        strategies = [*strategies, base]
    if len(strategies) < 2 or all(s.name == base.name for s in strategies):
        raise UsageError(f"--baseline {args.baseline}: give the candidate with --strategy or --strategy-file")
    args.baseline_spec = base.source if str(base.source).endswith(".py") else base.name
    return strategies


def execute(plan: Plan, fmt: str = "text", header: str | None = None, junit_path: str | None = None) -> int:
    stop = StopFlag()
    progress = _Progress() if is_tty() and fmt == "text" else PeriodicProgress()

    def on_signal(signum, frame):  # first Ctrl-C or SIGTERM: stop cleanly; the second: cut minimising short
        if stop.is_set():
            stop.hurry()
            return
        stop.set()
        progress("stopping: minimising what was found (Ctrl-C again to skip) ...")

    old = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        summary = run_session(plan, stop, progress)
    except ExecutionError as e:
        raise UsageError(str(e)) from None
    finally:
        signal.signal(signal.SIGINT, old)
        signal.signal(signal.SIGTERM, old_term)
        progress.clear()
    if summary.plugin_failures:
        # a strategy or platform file's code raised: that file's error (exit 2), not a
        # finding or a crash of the simulator; nothing else of the session is judged
        if junit_path:
            msg = summary.plugin_failures[0]
            case = junit.Case("shootdown.fuzz.plugin", "plug-in", errors=[junit.Problem(msg[:200], "plug-in", msg)])
            junit.write(junit_path, [junit.Suite("shootdown fuzz", [case])])
        raise PluginError(summary.plugin_failures[0])
    if fmt == "json":
        data = summary_json(summary)
        if header:
            data["mode"] = header
        print(json.dumps(data, indent=2))
    else:
        if header:
            print(header)
        print(summary_text(summary))
    if junit_path:
        junit.write(junit_path, summary_junit(summary))
        print(f"shootdown: JUnit report written to {junit_path}", file=sys.stderr)
    return summary.exit_code


def register(sub) -> None:
    p = sub.add_parser(
        "fuzz", help="fuzz strategies in lockstep; minimise and write every finding",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate programs, run each on every selected strategy on the same platform "
                    "(lockstep), judge each run and compare them; every new violation is minimised "
                    "and written to --out as a litmus reproducer (`shootdown run FILE` replays it).",
        epilog=f"""engines:
  random      seeded random programs and schedules (the default: fastest to find every planted bug)
  pct         random programs, PCT schedules (the summary states the probabilistic guarantee)
  hypothesis  Hypothesis draws programs and schedules, steered by behaviour events, shrinks findings
  atheris     libFuzzer, coverage-guided by behaviour events (and optionally line coverage)

Default program length {DEFAULT_LENGTH} operations; budget 60 s unless --runs is given.
--budget bounds the fuzzing; each new finding is then minimised (at most --minimize-attempts runs).
With --runs N --seed S the findings and reproducers are the same for every --jobs or --cluster.
Exit status: 0 no violation, 1 a violation (or a crash of the simulator), 2 bad input,
130 interrupted with nothing found.  Ctrl-C or SIGTERM stops cleanly: findings are kept, the
summary printed, no worker left behind.
""")
    p.add_argument("--strategy", action="append", metavar="NAME",
                   help=f"a built-in strategy ({', '.join(registry.STRATEGIES)}); repeatable; default: all three")
    p.add_argument("--strategy-file", action="append", metavar="PATH",
                   help="a strategy written in one Python file; repeatable")
    p.add_argument("--platform", action="append", metavar="NAME",
                   help=f"a built-in platform ({', '.join(registry.PLATFORMS)}) or a platform .py file; "
                        "repeatable; default: the --env's platform, or all three")
    p.add_argument("--env", action="append", metavar="NAME",
                   help=f"an environment ({', '.join(ENVIRONMENTS)}); repeatable; default: each "
                        "platform's default environment")
    p.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--budget", type=seconds(), metavar="SECONDS",
                   help="fuzzing time in total, split evenly over the cells (default 60)")
    g.add_argument("--runs", type=count(), metavar="N", help="programs per cell, then stop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=jobs(), metavar="N", help="worker processes (default: all cores)")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="run on a Dask distributed cluster, e.g. tcp://host:8786 (default: $SHOOTDOWN_CLUSTER; "
                        "unset: local worker processes)")
    p.add_argument("--length", type=count(), default=DEFAULT_LENGTH, metavar="N",
                   help=f"operations generated per program (default {DEFAULT_LENGTH})")
    p.add_argument("--out", default="corpus/crashes", metavar="DIR",
                   help="where reproducers go (default corpus/crashes/)")
    p.add_argument("--no-write", action="store_true", help="report findings, write no file")
    p.add_argument("--minimize-attempts", type=count(), default=DEFAULT_ATTEMPTS, metavar="N",
                   help=f"minimisation runs per finding (default {DEFAULT_ATTEMPTS}; a bound in runs, not "
                        "seconds, so a slow worker writes the same reproducer)")
    p.add_argument("--watchdog", type=seconds(), default=WATCHDOG_SECONDS, metavar="SECONDS",
                   help=f"CPU seconds one program may take on one strategy before it is stopped and reported "
                        f"(a hook looping without yielding; default {WATCHDOG_SECONDS:g})")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--junit", metavar="FILE",
                   help="also write a JUnit XML report: one test case per cell, a failure per new finding "
                        "(with --baseline: per regression) with its file, check and race diagram")
    p.add_argument("--baseline", metavar="NAME|FILE",
                   help="base-vs-patch: a strategy to compare the candidates with (e.g. semi-rcu, the kernel's "
                        "today); it runs in every cell's lockstep; findings where a candidate fails and it does "
                        "not are regressions, the rest inherited; the exit status follows regressions only")
    p.add_argument("--atheris-input", choices=("bytes", "hypothesis"), default="bytes",
                   help="how atheris inputs are decoded (default bytes: BytesDraw + a decision tape)")
    p.add_argument("--atheris-coverage", choices=("behaviour", "lines", "both"), default="behaviour",
                   help="what atheris counts as coverage (default behaviour events)")
    p.add_argument("--swarm", type=fraction, default=SWARM, metavar="FRACTION",
                   help=f"random/pct: the fraction of programs drawn from a random subset of operation kinds "
                        f"(swarm testing; default {SWARM})")
    p.add_argument("--safe-on", action="store_true",
                   help="the `make fuzz` mode: each strategy on the environments it claims in SAFE_ON, "
                        "after a canary check that a planted bug is still found")
    p.add_argument("--canary-runs", type=count(), default=400, metavar="N",
                   help="--safe-on: programs each canary may take to find its planted bug")
    p.add_argument("--canary", action="append", metavar="NAME",
                   help="--safe-on: a planted bug of tests/mutants to use as a canary (repeatable; "
                        "default: native_skip_lazy, khugepaged_no_sync_ipi and gup_fast_no_pmd_leaf_check)")
    p.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_fuzz)
