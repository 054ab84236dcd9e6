"""``shootdown run FILE``: replay a litmus program on strategies in lockstep."""

from __future__ import annotations

import argparse
import json

from fuzz import corpus
from fuzz.cli import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_VIOLATION,
    UsageError,
    add_plugin_args,
    add_trust_args,
    check_until_labels,
    count,
    litmus_plugins,
    resolve_strategies,
    seconds,
    writable_dir,
)
from fuzz.minimize import DEFAULT_ATTEMPTS
from fuzz.report import lockstep_json, lockstep_text, output_width
from fuzz.run import run_lockstep
from impls import registry


def cmd_run(args: argparse.Namespace) -> int:
    lit = corpus.load(args.file)
    names, files = args.strategy, args.strategy_file
    # without --strategy*: the built-ins, plus the strategy files the expect: header names (with consent)
    named, platform = litmus_plugins(lit, args, file_strategies=not names and not files)
    if not names and not files and named:
        names, files = list(registry.STRATEGIES), named
    strategies = resolve_strategies(names, files)
    lit.bind(strategies)
    if args.exhaustive:
        return run_exhaustive(args, lit, strategies, platform)
    res = run_lockstep(lit.program, strategies, platform)
    check_until_labels(lit, [r.history for r in res.runs])
    if args.format == "json":
        print(json.dumps(lockstep_json(res, lit), indent=2))
    else:
        print(lockstep_text(res, lit, verbose=not args.quiet, width=output_width()))
    return EXIT_OK if res.ok else EXIT_VIOLATION


def register(sub) -> None:
    p = sub.add_parser("run", help="run a litmus program on strategies in lockstep and print verdicts",
                       description="Replay a litmus/reproducer YAML file on each chosen strategy "
                                   "(default: the three built-ins) and print the verdict per strategy.")
    p.add_argument("file", help="a litmus file (docs/litmus-format.md)")
    add_plugin_args(p)
    add_trust_args(p)
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("-q", "--quiet", action="store_true", help="verdict lines only")
    g = p.add_argument_group("exhaustive mode (every schedule and choice up to a bound)")
    g.add_argument("--exhaustive", action="store_true",
                   help="explore every execution within the bound instead of replaying the file's schedule")
    g.add_argument("--preemptions", type=count(zero=True), default=2, metavar="K",
                   help="at most K preemptions per execution (default 2)")
    g.add_argument("--choices", type=count(zero=True), default=2, metavar="F",
                   help="at most F labelled choices answered true per execution (default 2)")
    g.add_argument("--reduction", choices=("none", "sleep"), default="none",
                   help="partial-order reduction: none (default; fastest at small bounds) or sleep sets")
    g.add_argument("--budget", type=seconds(), default=60.0, metavar="SECONDS",
                   help="CPU seconds per strategy (default 60); a stopped exploration is a partial "
                        "result, never an S")
    g.add_argument("--state", metavar="DIR",
                   help="checkpoint directory: an exploration stopped by the budget resumes from it")
    g.add_argument("--out", default="corpus/crashes", metavar="DIR",
                   help="where the minimised reproducer of a violation is written (default corpus/crashes)")
    g.add_argument("--minimize-attempts", type=count(zero=True), default=DEFAULT_ATTEMPTS, metavar="N",
                   help=f"runs to minimise a violating execution (default {DEFAULT_ATTEMPTS}; 0: write it "
                        "as found)")
    p.set_defaults(func=cmd_run)


def run_exhaustive(args: argparse.Namespace, lit: corpus.Litmus, strategies: list, platform) -> int:
    """``run --exhaustive``: per strategy, the first violating execution
    (minimised and written as a reproducer) or the proof within the bound."""
    from pathlib import Path

    from fuzz import findings
    from fuzz.engine import finding_signature
    from fuzz.exhaustive import explore, schedule_program
    from fuzz.minimize import minimize

    if args.preemptions < 0 or args.choices < 0:
        raise UsageError("--preemptions and --choices must be >= 0")
    program = lit.program
    out_dir = writable_dir(args.out, "--out")  # before exploring, not after
    head = lit.path if lit.path else "program"
    if lit.title:
        head += f": {lit.title}"
    if args.format == "text":
        print(head)
        print(f"exhaustive: platform {platform.name}, {program.cpus} CPUs, {len(program.setup)} setup + "
              f"{len(program.ops)} ops; bound {args.preemptions} preemption(s) and {args.choices} "
              f"choice(s), reduction {args.reduction}, budget {args.budget:g}s per strategy")
        print()
    width = max((len(s.name) for s in strategies), default=8)
    results = []
    status = EXIT_OK
    for s in strategies:
        state = None
        if args.state:
            Path(args.state).mkdir(parents=True, exist_ok=True)
            state = Path(args.state) / f"{Path(args.file).stem}.{s.name.replace('/', '_')}.json"
        r = explore(program, s, platform, args.preemptions, args.choices, args.reduction == "sleep",
                    budget_s=args.budget, state_file=state)
        entry: dict = {"strategy": s.name, "executions": r.stats.executions, "pruned": r.stats.pruned,
                       "seconds": round(r.stats.seconds, 2), "bound": args.preemptions,
                       "choices": args.choices, "reduction": r.reduction,
                       "completed_bound": r.completed_bound, "all_schedules": r.exhaustive,
                       "summary": r.summary()}
        exp = lit.expected_checks(s.name)
        if r.violation is not None:
            status = EXIT_VIOLATION
            v = r.violation.verdict.violations[0]
            prog = schedule_program(program, r.violation.schedule)
            note = (f"Found by shootdown run --exhaustive (bound {args.preemptions} preemption(s), "
                    f"{args.choices} choice(s)) after {r.stats.executions} executions.")
            if args.minimize_attempts > 0:
                try:
                    res = minimize(prog, s, platform, v.signature(), None, attempts=args.minimize_attempts)
                    prog, v = res.program, res.violation
                except ValueError:
                    pass
            litm, stem = findings.build_litmus(prog, s, [s], platform, v, finding_signature(s.name, v),
                                               platform.name, "shootdown run --exhaustive", out_dir, note)
            w = findings.write(litm, stem, out_dir, findings.existing(out_dir))
            path = w.path or w.duplicate_of
            entry.update(verdict="U", checks=r.violation.verdict.checks(), reproducer=str(path))
            word = f"U  {', '.join(r.violation.verdict.checks())}"
            if exp is not None:
                word += "  (as expected)" if exp else "  (EXPECTED S)"
            line2 = [f"      {r.summary()}", f"      reproducer: {path}  (shootdown explain {path})"]
            if not args.quiet:
                line2 += [f"      {v.verdict_word}: {v.summary}"]
        elif r.proven:
            entry.update(verdict="S")
            word = "S"
            if exp is not None:
                word += "  (as expected)" if not exp else f"  (EXPECTED U {', '.join(exp)})"
            line2 = [f"      {r.summary()}"]
        else:
            if status == EXIT_OK:
                status = EXIT_INCOMPLETE
            entry.update(verdict="?")
            word = "?  (no proof: exploration incomplete)"
            line2 = [f"      {r.summary()}"]
            if state is not None:
                line2.append(f"      resume with the same command (checkpoint {state})")
        results.append(entry)
        if args.format == "text":
            print(f"  {s.name:<{width}}  {word}")
            for ln in line2:
                print(ln)
    if args.format == "json":
        print(json.dumps({"file": str(args.file), "platform": platform.name, "exhaustive": results},
                         indent=2))
    return status
