"""The ``shootdown`` command line.

Exit status: 0 clean, 1 a violation was found, 2 bad input (a malformed file,
an unknown name, a strategy file that does not implement the protocol), 3 for
``run --exhaustive`` when no violation was found but the exploration stopped
before the bound was covered (a partial result, not a proof).
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from impls import registry
from impls._pure import reexec_pure
from impls.machine.plugin import Ops, PluginError

from . import corpus
from .commands import COMMANDS

EXIT_OK, EXIT_VIOLATION, EXIT_BAD_INPUT = 0, 1, 2
#: ``run --exhaustive``: no violation found, but the exploration did not finish
EXIT_INCOMPLETE = 3


class UsageError(Exception):
    pass


# -- argument types: every number checked where it is parsed ---------------------------------


def seconds(zero: bool = False):
    """An argparse type: a finite number of seconds, > 0 (>= 0 with ``zero``)."""
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            v = math.nan
        if not math.isfinite(v) or v < 0 or (v == 0 and not zero):
            raise argparse.ArgumentTypeError(
                f"{s}: expected a {'non-negative' if zero else 'positive'} number of seconds")
        return v
    return parse


def count(zero: bool = False):
    """An argparse type: a whole number, > 0 (>= 0 with ``zero``)."""
    def parse(s: str) -> int:
        try:
            v = int(s, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s}: expected a whole number") from None
        if v < 0 or (v == 0 and not zero):
            raise argparse.ArgumentTypeError(f"{s}: must be at least {0 if zero else 1}")
        return v
    return parse


def jobs(zero: bool = False):
    """An argparse type: local worker processes, within fuzz.execution's cap
    (more only contend for the same cores); 0 (one per core) if allowed."""
    def parse(s: str) -> int:
        from .execution import ExecutionError, check_jobs
        v = count(zero=zero)(s)
        if v:
            try:
                check_jobs(v)
            except ExecutionError as e:
                raise argparse.ArgumentTypeError(str(e).removeprefix(f"--jobs {v}: ").join((f"{v}: ", ""))) from None
        return v
    return parse


def fraction(s: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        v = float(s)
    except ValueError:
        v = math.nan
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{s}: expected a fraction between 0 and 1")
    return v


def writable_dir(path: str | Path, option: str, shown: str | None = None) -> Path:
    """``option``'s directory, checked before any work is done: it is a
    directory or can be created (its nearest existing ancestor is a directory
    we can create files in).  Nothing is left behind."""
    p = Path(path)
    shown = shown or str(path)
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        what = "not a directory" if probe == Path(shown) else f"{probe} is not a directory"
        raise UsageError(f"{option} {shown}: {what}")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UsageError(f"{option} {shown}: cannot write {'there' if probe == Path(shown) else f'in {probe}'}: "
                         f"{e.strerror or e}") from None
    return p


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (``shootdown: error: --jobs 0: ...``), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        # "argument --jobs/-j: 0: must be..." -> "--jobs 0: must be..."
        message = re.sub(r"^argument (-[^\s/:]+)(?:/-[^\s/:]+)?: ", r"\1 ", message)
        message = re.sub(r"^argument ([^\s:]+): ", r"\1: ", message)
        self.exit(EXIT_BAD_INPUT, f"shootdown: error: {message}; see {self.prog} --help\n")


def resolve_strategies(names: Sequence[str] | None, files: Sequence[str] | None) -> list[Ops]:
    """--strategy NAME... and --strategy-file PATH...; the three built-ins by default."""
    chosen = list(names or [])
    paths = list(files or [])
    if not chosen and not paths:
        chosen = list(registry.STRATEGIES)
    out = []
    for n in chosen:
        if n not in registry.STRATEGY_MODULES:
            raise UsageError(f"unknown strategy {n!r} (built-ins: {', '.join(registry.STRATEGIES)}; "
                             "use --strategy-file for a file)")
        out.append(registry.strategy(n))
    for p in paths:
        out.append(registry.strategy(p) if p.endswith(".py") else _file_only(p))
    names_seen = [s.name for s in out]
    dup = {n for n in names_seen if names_seen.count(n) > 1}
    if dup:
        raise UsageError(f"two strategies are both named {sorted(dup)[0]!r}")
    return out


def _file_only(p: str) -> Ops:
    raise UsageError(f"{p}: a strategy file must be a .py file")


def resolve_platform(name: str | None, file: str | None, default: str) -> Ops:
    if name and file:
        raise UsageError("give --platform or --platform-file, not both")
    if file:
        if not file.endswith(".py"):
            raise UsageError(f"{file}: a platform file must be a .py file")
        return registry.platform(file)
    name = name or default
    if name.endswith(".py"):  # a litmus file may name a platform file
        return registry.platform(name)
    if name not in registry.PLATFORM_MODULES:
        raise UsageError(f"unknown platform {name!r} (built-ins: {', '.join(registry.PLATFORMS)}; "
                         "use --platform-file for a file)")
    return registry.platform(name)


def add_plugin_args(p: argparse.ArgumentParser, multi_platform: bool = False) -> None:
    p.add_argument("--strategy", action="append", metavar="NAME",
                   help=f"a built-in strategy ({', '.join(registry.STRATEGIES)}); repeatable; "
                        "default: all three")
    p.add_argument("--strategy-file", action="append", metavar="PATH",
                   help="a strategy written in one Python file (docs/writing-a-strategy.md); repeatable")
    if multi_platform:
        p.add_argument("--platform", action="append", metavar="NAME",
                       help=f"a built-in platform ({', '.join(registry.PLATFORMS)}); repeatable")
    else:
        p.add_argument("--platform", metavar="NAME",
                       help=f"override the program's platform ({', '.join(registry.PLATFORMS)})")
    p.add_argument("--platform-file", metavar="PATH",
                   help="a platform (flush mechanism) written in one Python file")


def add_trust_args(p: argparse.ArgumentParser) -> None:
    """For commands that read a litmus file: its plug-in references."""
    p.add_argument("--trust-plugins", action="store_true",
                   help="load the strategy and platform .py files the litmus file names (platform:, "
                        "expect: keys) if they are inside the litmus file's directory; without it, "
                        "Python is loaded only from --strategy-file/--platform-file")
    p.add_argument("--trust-plugins-under", metavar="DIR",
                   help="like --trust-plugins, for files anywhere under DIR (e.g. a repository holding "
                        "both the litmus files and their plug-ins)")


# -- plug-ins named by a litmus file: loaded only with consent ---------------------------------


def _shown(path: str | Path) -> str:
    """A path as the user would type it: relative to the current directory
    when it is below it."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _roots(lit: corpus.Litmus, args: argparse.Namespace) -> list[Path]:
    """The directories whose .py files the user allowed a litmus file to name."""
    roots = []
    if getattr(args, "trust_plugins", False):
        roots.append(Path(lit.path).resolve().parent if lit.path else Path.cwd().resolve())
    under = getattr(args, "trust_plugins_under", None)
    if under is not None:
        if not Path(under).is_dir():
            raise UsageError(f"--trust-plugins-under {under}: not a directory")
        roots.append(Path(under).resolve())
    return roots


def litmus_plugins(lit: corpus.Litmus, args: argparse.Namespace,
                   file_strategies: bool) -> tuple[list[str], Ops]:
    """The strategy files ``lit``'s ``expect:`` header names (if
    ``file_strategies``) and its platform (unless --platform/--platform-file
    override it), each .py file loaded only with the user's consent:
    --trust-plugins and the file is inside the litmus file's directory, or
    --trust-plugins-under DIR and it is inside DIR.  Otherwise a
    :class:`UsageError` naming each file, the line naming it, and how to
    allow it; nothing is imported."""
    wanted: list[tuple[str, tuple, Path]] = []
    if file_strategies:
        wanted += [("strategy", ("expect", k), Path(corpus.resolve_expect_key(lit, k)).resolve())
                   for k in lit.expect if k.endswith(".py")]
    name = lit.program.platform
    if not args.platform and not args.platform_file and name.endswith(".py"):
        wanted.append(("platform", ("platform",), Path(name).resolve()))
    roots = _roots(lit, args)
    refused = [w for w in wanted if not any(w[2].is_relative_to(r) for r in roots)]
    if refused:
        names = [f"the {w[0]} {_shown(w[2])} ({w[1][0]}:, line {lit.line_of(*w[1])})" for w in refused]
        flags = " ".join(f"--{w[0]}-file {_shown(w[2])}" for w in refused)
        it = "it" if len(refused) == 1 else "them"
        if not roots:
            hint = (", or pass --trust-plugins to allow the .py files a litmus file names inside its own "
                    "directory")
        else:
            hint = (f"; --trust-plugins does not cover {it}: outside {', '.join(_shown(r) + os.sep for r in roots)}"
                    " (--trust-plugins-under DIR widens it)")
        raise UsageError(f"{lit.path}:{lit.line_of(*refused[0][1])}: names Python code: {', '.join(names)}; "
                         f"shootdown loads Python only with consent: give {it} on the command line "
                         f"({flags}){hint}")
    files = [str(w[2]) for w in wanted if w[0] == "strategy"]
    return files, resolve_platform(args.platform, args.platform_file, name)


def check_until_labels(lit: corpus.Litmus, histories: Sequence[Any]) -> None:
    """A schedule entry ``{cpu: N, until: LABEL}`` whose CPU reached LABEL
    on none of the runs is a mistake in the file (most likely a misspelt
    label): a :class:`UsageError` at that entry's line.  Reaching it on some
    strategies only is normal (they block in different places), and a run
    that never reached quiescence (a deadlock, the step limit: its own
    verdict) says nothing about the labels after it."""
    if not histories or any(h.meta.get("outcome") != "quiescent" for h in histories):
        return
    missed: dict[tuple[int, str], int] = {}
    for h in histories:
        for i, _agent, label in h.meta.get("unreached_labels", ()):
            missed[(i, label)] = missed.get((i, label), 0) + 1
    for (i, label), n in sorted(missed.items()):
        if n == len(histories):
            agent = lit.program.schedule.sched[i].agent
            raise UsageError(f"{lit.path}:{lit.line_of('schedule', i)}: schedule[{i}].until: CPU{agent} never "
                             f"reached the preemption point {label!r} (on any strategy): a misspelt label? "
                             "docs/litmus-format.md lists them")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="shootdown",
        description="Fuzzer and differential tester for the ways Linux frees page-table pages.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"fuzz.commands.{name}").register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, one line already printed)
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    if argv is None:  # the command line itself (not a test calling main([...]))
        # explore's guidance is coverage.py's arcs, the sleep-set reduction's
        # footprints come from the tracer: both watch the interpreted code
        needs = ("explore" if args.command == "explore"
                 else f"{args.command} --exhaustive --reduction sleep"
                 if getattr(args, "exhaustive", False) and getattr(args, "reduction", "none") == "sleep" else None)
        if needs is not None:  # no return if compiled modules are loaded
            reexec_pure(sys.argv[1:], needs)
    try:
        return args.func(args)
    except (corpus.CorpusError, PluginError, UsageError) as e:
        print(f"shootdown: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("shootdown: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
