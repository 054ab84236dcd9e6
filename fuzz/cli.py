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
import sys
from collections.abc import Sequence

from impls import registry
from impls.machine.plugin import Ops, PluginError

from . import corpus
from .commands import COMMANDS

EXIT_OK, EXIT_VIOLATION, EXIT_BAD_INPUT = 0, 1, 2
#: ``run --exhaustive``: no violation found, but the exploration did not finish
EXIT_INCOMPLETE = 3


class UsageError(Exception):
    pass


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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="shootdown",
        description="Fuzzer and differential tester for the ways Linux frees page-table pages.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"fuzz.commands.{name}").register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
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
