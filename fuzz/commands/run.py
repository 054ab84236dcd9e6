"""``shootdown run FILE``: replay a litmus program on strategies in lockstep."""

from __future__ import annotations

import argparse
import json
import sys

from fuzz import corpus
from fuzz.cli import EXIT_OK, EXIT_VIOLATION, add_plugin_args, resolve_platform, resolve_strategies
from fuzz.report import lockstep_json, lockstep_text
from fuzz.run import run_lockstep
from impls import registry


def cmd_run(args: argparse.Namespace) -> int:
    lit = corpus.load(args.file)
    files = args.strategy_file
    if not args.strategy and not args.strategy_file and lit.strategy_files():
        # the built-ins, plus the strategy files the file's expect: header names
        args.strategy = list(registry.STRATEGIES)
        files = lit.strategy_files()
    strategies = resolve_strategies(args.strategy, files)
    platform = resolve_platform(args.platform, args.platform_file, lit.program.platform)
    res = run_lockstep(lit.program, strategies, platform)
    warned: set[tuple] = set()
    for r in res.runs:
        for i, agent, label in r.history.meta.get("unreached_labels", ()):
            if (i, label) not in warned:
                warned.add((i, label))
                print(f"shootdown: warning: {args.file}: schedule entry {i} waits for CPU{agent} to reach "
                      f"{label!r}, which it never reached on {r.verdict.strategy} (a typo? see "
                      "docs/litmus-format.md for the labels)", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(lockstep_json(res, lit), indent=2))
    else:
        print(lockstep_text(res, lit, verbose=not args.quiet))
    return EXIT_OK if res.ok else EXIT_VIOLATION


def register(sub) -> None:
    p = sub.add_parser("run", help="run a litmus program on strategies in lockstep and print verdicts",
                       description="Replay a litmus/reproducer YAML file on each chosen strategy "
                                   "(default: the three built-ins) and print the verdict per strategy.")
    p.add_argument("file", help="a litmus file (docs/litmus-format.md)")
    add_plugin_args(p)
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("-q", "--quiet", action="store_true", help="verdict lines only")
    p.set_defaults(func=cmd_run)
