"""``shootdown explore``: a long behaviour-guided exploration, resumable from its
directory, and its report (fuzz.explore).

Exit status: 0 no finding in the directory, 1 findings (or crashes of the
simulator), 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fuzz import explore, triage
from fuzz.cli import (
    EXIT_OK,
    EXIT_VIOLATION,
    UsageError,
    add_plugin_args,
    count,
    jobs,
    resolve_platform,
    resolve_strategies,
    seconds,
    writable_dir,
)
from fuzz.envs import ENVIRONMENTS
from fuzz.execution import default_jobs
from fuzz.minimize import DEFAULT_ATTEMPTS
from fuzz.report import PeriodicProgress
from fuzz.watchdog import WATCHDOG_SECONDS

DEFAULT_DIR = "explore-out"
DEFAULT_BUDGET = 600.0


def _strategy_specs(args: argparse.Namespace) -> list[str] | None:
    if not args.strategy and not args.strategy_file:
        return None
    resolve_strategies(args.strategy, args.strategy_file)  # validates, one-line errors
    return list(args.strategy or []) + [str(Path(p).resolve()) for p in args.strategy_file or []]


def _target_specs(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    platforms: list[str] = []
    for name in args.platform or []:
        resolve_platform(name, None, name)
        platforms.append(str(Path(name).resolve()) if name.endswith(".py") else name)
    if args.platform_file:
        resolve_platform(None, args.platform_file, "native")
        platforms.append(str(Path(args.platform_file).resolve()))
    for e in args.env or []:
        if e not in ENVIRONMENTS:
            raise UsageError(f"unknown environment {e!r} (known: {', '.join(ENVIRONMENTS)})")
    if not platforms and not args.env:
        return None
    return list(explore.target_specs(args.env, platforms))


class _ProgressLine:
    """One line on a terminal, rewritten in place; without a terminal, a line
    every 30 seconds (fuzz.report.PeriodicProgress)."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.shown = False
        self.periodic = None if self.tty else PeriodicProgress(stream)

    def __call__(self, p: explore.Progress) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + p.line())
            self.stream.flush()
            self.shown = True
        else:
            self.periodic(p.line())

    def status(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self.shown = True
        else:
            self.periodic(text)

    def done(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def cmd_explore(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    try:
        if args.report_only:
            if not (d / explore.STATE_FILE).exists():
                raise UsageError(f"{d}: no exploration here ({explore.STATE_FILE} missing)")
            path = explore.write_report(d, jobs=args.jobs or default_jobs(), remeasure=args.remeasure)
            st = explore.load_state(d) or {}
            print(f"shootdown: report written to {path}", file=sys.stderr)
            return EXIT_VIOLATION if st.get("findings") or st.get("crashes") else EXIT_OK
        if args.jobs < 0:
            raise UsageError(f"--jobs {args.jobs}: must be at least 1 (0: one per core)")
        jobs = args.jobs or default_jobs()
        writable_dir(d, "--dir")
        strategies = _strategy_specs(args)
        targets = _target_specs(args)
        budget = args.budget if args.budget is not None else (None if args.runs is not None else DEFAULT_BUDGET)
        line = _ProgressLine(sys.stderr)
        if line.tty:
            print(f"shootdown explore: {d} (Ctrl-C stops, saves and writes the report)", file=sys.stderr)
        try:
            s = explore.explore(d, strategies, targets, engine=args.engine, length=args.length, seed=args.seed,
                                budget=budget, runs=args.runs, jobs=jobs, arcs=not args.no_arcs,
                                on_progress=line, report=False, minimize_attempts=args.minimize_attempts,
                                on_status=line.status, cluster=args.cluster, watchdog=args.watchdog)
        finally:
            line.done()
        if line.tty:
            print("shootdown explore: measuring coverage of the corpus ...", file=sys.stderr)
        try:
            report = explore.write_report(d, jobs=jobs)
        except KeyboardInterrupt:  # a second Ctrl-C: the directory is saved already
            report = None
            print(f"shootdown explore: interrupted while measuring coverage; "
                  f"`shootdown explore --dir {d} --report-only` writes the report", file=sys.stderr)
    except explore.ExploreError as e:
        raise UsageError(str(e)) from None
    p = s.progress
    print(f"{d}: {s.session_programs} programs this session ({s.stopped_by}), {p.programs} in all over "
          f"{explore.fmt_duration(p.elapsed)}")
    print(f"  corpus {p.corpus} inputs, {p.keys} feedback keys, {p.arcs} arcs, "
          f"behaviours {p.behaviours}/{len(explore.BEHAVIOURS)}")
    status = [explore.finding_status(f) for f in s.findings]
    new = [f for f, st in zip(s.findings, status, strict=True) if st == "new"]
    known = [f for f, st in zip(s.findings, status, strict=True) if st == "known"]
    defects = [f for f, st in zip(s.findings, status, strict=True) if st == "unreplayable"]
    print(f"  findings {len(new) + len(known)}: {len(new)} new, {len(known)} known"
          + (f" ({s.new_findings} found this session)" if s.new_findings else "")
          + (f", simulator crashes {len(s.crashes)}" if s.crashes else ""))
    for f in new:
        shrunk = f" ({f['size']['ops']} ops)" if f.get("minimised") else ""
        print(f"    NEW {d / f['file']}: {', '.join(f['checks'])} on {f['strategy']} ({f['target']}){shrunk}")
    for line in triage.known_summary((f["strategy"], f.get("known_basis", ""), f.get("env", f["target"]),
                                      ", ".join(f["checks"])) for f in known):
        print(f"    known: {line}")
    for f in defects:
        print(f"    DEFECT {d / f['file']}: a divergence ({f['signature'].split('|', 1)[1]}) that its reproducer "
              "does not show again when replayed: not a finding; a defect of the divergence check")
    if report is not None:
        print(f"  report {report}")
    return EXIT_VIOLATION if s.findings or s.crashes else EXIT_OK


def register(sub) -> None:
    p = sub.add_parser(
        "explore", help="long coverage-guided exploration, resumable, with a coverage/behaviour report",
        description="Explore the strategies with a behaviour-guided mutational search (inputs that reach a "
                    "new behaviour-event bucket or a new line/branch arc of impls/ and oracle/ are kept), "
                    "in a directory that a later run with the same --dir resumes. Writes DIR/report.md: "
                    "coverage of impls/ and oracle/ replaying the corpus, behaviour events reached, corpus "
                    "growth, and each finding (a YAML reproducer in DIR/findings/) with its race diagram.",
        epilog="Exit status: 0 no finding in DIR, 1 findings (or crashes of the simulator), 2 bad input. "
               "Ctrl-C or SIGTERM stops at the next program, saves DIR and writes the report; the new "
               "findings are minimised by the next session.")
    add_plugin_args(p, multi_platform=True)
    p.add_argument("--env", action="append", metavar="NAME",
                   help=f"an environment ({', '.join(ENVIRONMENTS)}); repeatable; with --platform, its "
                        "knobs on each platform given; default: every environment")
    p.add_argument("--engine", choices=explore.ENGINES, default=explore.DEFAULT_ENGINE,
                   help="guided: mutate the corpus (default); random: fresh inputs only, the unguided baseline")
    p.add_argument("--budget", type=seconds(zero=True), metavar="SECONDS",
                   help=f"stop after this many seconds (default {DEFAULT_BUDGET:g}, none with --runs)")
    p.add_argument("--runs", type=count(zero=True), metavar="N", help="stop after N programs in this session")
    p.add_argument("--jobs", type=jobs(zero=True), default=0, metavar="N",
                   help="local worker processes (default 0: one per core); the results depend on it")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="explore on a Dask distributed cluster, e.g. tcp://host:8786 (default: $SHOOTDOWN_CLUSTER)")
    p.add_argument("--watchdog", type=seconds(), default=WATCHDOG_SECONDS, metavar="SECONDS",
                   help=f"CPU seconds one program may take on one strategy (default {WATCHDOG_SECONDS:g})")
    p.add_argument("--dir", default=DEFAULT_DIR, metavar="DIR",
                   help=f"the exploration directory, created or resumed (default {DEFAULT_DIR}/)")
    p.add_argument("--length", type=count(), metavar="N",
                   help=f"operations per generated program (default {explore.DEFAULT_LENGTH}; fixed per DIR)")
    p.add_argument("--seed", type=int, metavar="N", help="the exploration's seed (default 0; fixed per DIR)")
    p.add_argument("--minimize-attempts", type=count(zero=True), default=DEFAULT_ATTEMPTS, metavar="N",
                   help=f"minimisation runs per new finding, at the end of the session (default "
                        f"{DEFAULT_ATTEMPTS}; 0: do not minimise)")
    p.add_argument("--report-only", action="store_true",
                   help="do not explore: (re)write DIR/report.md from the directory")
    p.add_argument("--remeasure", action="store_true",
                   help="with --report-only: replay the corpus under coverage even if it has not changed")
    p.add_argument("--no-arcs", action="store_true",
                   help="guide by behaviour keys only (no coverage.py tracing of sampled runs)")
    p.set_defaults(func=cmd_explore)
