"""``shootdown explain FILE``: draw a reproducer's interleaving for a kernel developer.

Runs the litmus file on the chosen strategies (default: the three built-ins), draws the
first run that violates a check (or the first run, if every one is clean) as CPU
columns, and prints the verdict and the check's explanation under it.  ``--html OUT``
also writes a standalone HTML timeline.  Exit status: 0 drawn and clean, 1 the drawn
run shows a violation, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fuzz import corpus
from fuzz.cli import (
    EXIT_OK,
    EXIT_VIOLATION,
    UsageError,
    add_plugin_args,
    add_trust_args,
    check_until_labels,
    count,
    litmus_plugins,
    resolve_strategies,
)
from fuzz.render import Story, html_timeline, text_diagram
from fuzz.report import expectation
from fuzz.run import run_program


def cmd_explain(args: argparse.Namespace) -> int:
    lit = corpus.load(args.file)
    _, platform = litmus_plugins(lit, args, file_strategies=False)
    strategies = resolve_strategies(args.strategy, args.strategy_file)
    lit.bind(strategies)
    if args.width < 60:
        raise UsageError(f"--width {args.width}: must be at least 60")
    runs = [run_program(lit.program, s, platform) for s in strategies]
    check_until_labels(lit, [r.history for r in runs])
    chosen = next((r for r in runs if not r.verdict.ok), runs[0])
    others = ", ".join(f"{r.verdict.strategy} {r.verdict.word}"
                       + (f" {', '.join(r.verdict.checks())}" if r.verdict.checks() else "")
                       for r in runs if r is not chosen)
    story = Story(lit.program, chosen, title=lit.title, path=lit.path or args.file,
                  description=lit.description.strip(), expectation=expectation(lit, chosen.verdict),
                  others=others)
    if args.html:
        out = Path(args.html)
        try:
            out.write_text(html_timeline(story), encoding="utf-8")
        except OSError as e:
            raise UsageError(f"{args.html}: cannot write: {e.strerror}") from None
    print(text_diagram(story, width=args.width))
    if args.html:
        print(f"shootdown: HTML timeline written to {args.html}", file=sys.stderr)
    return EXIT_OK if chosen.verdict.ok else EXIT_VIOLATION


def register(sub) -> None:
    p = sub.add_parser("explain", help="draw a litmus file's interleaving as CPU columns (and HTML)",
                       description="Run a litmus/reproducer file and draw the interleaving of the first "
                                   "strategy that violates a check (or of the first strategy, if all "
                                   "are clean) the way kernel commit messages draw races, with the "
                                   "verdict and its explanation.")
    p.add_argument("file", help="a litmus file (docs/litmus-format.md)")
    add_plugin_args(p)
    add_trust_args(p)
    p.add_argument("--html", metavar="OUT", help="also write a standalone HTML timeline to OUT")
    p.add_argument("--width", type=count(), default=100, metavar="N",
                   help="maximum line width of the text diagram (default 100)")
    p.set_defaults(func=cmd_explain)
