"""``shootdown minimize FILE``: delta-debug an existing reproducer (fewer
operations, CPUs, preemptions and injected faults, a shorter setup) keeping
the same violation (same check, same signature) on the same strategy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fuzz import corpus
from fuzz import findings as findings_mod
from fuzz.cli import (
    EXIT_OK,
    UsageError,
    add_plugin_args,
    add_trust_args,
    litmus_plugins,
    resolve_strategies,
    seconds,
    writable_dir,
)
from fuzz.engine import finding_signature
from fuzz.envs import ENVIRONMENTS, default_environment
from fuzz.minimize import minimize, size_of
from fuzz.run import run_lockstep
from impls import registry


def _lockstep_strategies(args: argparse.Namespace, lit: corpus.Litmus, files: list[str]) -> list:
    if args.strategy or args.strategy_file:
        return resolve_strategies(args.strategy, args.strategy_file)
    names = [k for k in lit.expect if k in registry.STRATEGY_MODULES]
    return resolve_strategies(names, files) if names or files else resolve_strategies(None, None)


def _env_name(program) -> str:
    """The environment a program belongs to, for naming and flip biases."""
    e = program.env
    for env in ENVIRONMENTS.values():
        if env.platform == program.platform and env.pt_reclaim == e.pt_reclaim and env.kvm == e.kvm \
                and env.iommu == e.iommu:
            return env.name
    return default_environment(program.platform).name if program.platform in ENVIRONMENTS else "native"


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'s' if k != 1 else ''}"


def cmd_minimize(args: argparse.Namespace) -> int:
    lit = corpus.load(args.file)
    if args.out:  # checked before minimising, not after
        if args.out.endswith(".yaml"):
            if Path(args.out).is_dir():
                raise UsageError(f"--out {args.out}: a directory, not a .yaml file")
            writable_dir(Path(args.out).parent, "--out", args.out)
        else:
            writable_dir(args.out, "--out")
    explicit = bool(args.strategy or args.strategy_file)
    files, platform = litmus_plugins(lit, args, file_strategies=not explicit)
    strategies = _lockstep_strategies(args, lit, files)
    lit.bind(strategies)
    res = run_lockstep(lit.program, strategies, platform)
    candidates = [(s, v) for s, r in zip(strategies, res.runs, strict=True) for v in r.verdict.violations]
    # the file's signature: the race it was found for (fuzz.engine.finding_signature)
    target = next(((s, v) for s, v in candidates if finding_signature(s.name, v) == lit.signature),
                  candidates[0] if candidates else None)
    if target is None:
        raise UsageError(f"{args.file}: no violation to minimise: it replays clean on "
                         f"{', '.join(s.name for s in strategies)}")
    strategy, violation = target
    env_name = _env_name(lit.program)
    env = ENVIRONMENTS[env_name]
    result = minimize(lit.program, strategy, platform, violation.signature(), args.budget,
                      biases=env.choice_biases())
    before, after = size_of(lit.program), result.after
    signature = finding_signature(strategy.name, result.violation)
    out = Path(args.out) if args.out else None
    out_dir = out if out is not None and not out.suffix == ".yaml" else (out.parent if out else Path(args.file).parent)
    note = (f"Minimised by `shootdown minimize` from {Path(args.file).name} "
            f"({before['ops']} ops + {before['setup']} setup on {before['cpus']} CPUs, "
            f"{before['preemptions']} preemptions).")
    new, stem = findings_mod.build_litmus(result.program, strategy, strategies, platform, result.violation,
                                          signature, env_name, lit.found_by or f"minimised from {args.file}",
                                          out_dir, note)
    if lit.title:
        new.title = lit.title
    if lit.refs:
        new.refs = list(lit.refs)
    msg = (f"{args.file}: {strategy.name} {result.violation.check}: {before['ops']} ops + {before['setup']} setup, "
           f"{before['cpus']} CPUs, {_n(before['preemptions'], 'preemption')} -> {after['ops']} ops + "
           f"{after['setup']} setup, {after['cpus']} CPUs, {_n(after['preemptions'], 'preemption')} "
           f"({result.runs} runs, {result.seconds:.1f} s{'' if result.complete else ', budget reached'})")
    if out is None:
        sys.stdout.write(corpus.dumps(new))
        print(msg, file=sys.stderr)
        return EXIT_OK
    if out.suffix == ".yaml":
        corpus.save(new, out)
        print(f"{msg}\nwrote {out}")
        return EXIT_OK
    known = findings_mod.existing(out)
    w = findings_mod.write(new, stem, out, known)
    print(msg)
    print(f"wrote {w.path}" if w.path else f"not written: {w.duplicate_of} has the same signature")
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("minimize", help="minimise a reproducer, keeping its violation",
                       description="Delta-debug a litmus/reproducer file: fewer operations, CPUs, preemptions "
                                   "and injected faults, a shorter setup, while the same strategy still shows "
                                   "the same violation (same check and signature) when the file is replayed.")
    p.add_argument("file", help="a litmus file that fails on some strategy")
    add_plugin_args(p)
    add_trust_args(p)
    p.add_argument("--out", metavar="PATH",
                   help="a .yaml file to write, or a directory (named like `shootdown fuzz` names findings, "
                        "skipped if a file there has the same signature); default: print to stdout")
    p.add_argument("--budget", type=seconds(), default=60.0, metavar="SECONDS", help="time limit (default 60)")
    p.set_defaults(func=cmd_minimize)
