"""Rendering verdicts for people (text) and programs (JSON)."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any, TextIO

from impls.machine.history import Event
from oracle.verdict import Verdict, Violation

from .corpus import Litmus
from .run import Lockstep


def _agent(cpu: int) -> str:
    return {-1: "rcu", -2: "hw", -3: "iommu"}.get(cpu, f"cpu{cpu}")


def event_line(e: Event) -> str:
    return e.brief()


#: prose (the ``why:`` paragraphs) is wrapped at this width at most
PROSE_WIDTH = 100
#: without a terminal, a progress line every this many seconds
PROGRESS_EVERY = 30.0


class PeriodicProgress:
    """Progress for a log, not a terminal: the latest status as one line
    every ``every`` seconds (``[+1m30s] ...``), so that a stuck run and a slow
    one look different in CI.  Callable like the terminal's live line."""

    def __init__(self, stream: TextIO | None = None, every: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.every = PROGRESS_EVERY if every is None else every
        self.clock = clock
        self.t0 = self.last = clock()
        self.lines = 0

    def __call__(self, text: str) -> None:
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        s = int(now - self.t0)
        stamp = f"{s // 3600}h{s // 60 % 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
        self.stream.write(f"[+{stamp}] {' '.join(text.split())}\n")
        self.stream.flush()
        self.lines += 1

    def clear(self) -> None:
        pass


def output_width() -> int | None:
    """The width to fit witness lines to: ``COLUMNS`` if set, else the
    terminal's; None (never cut) when stdout is not a terminal, so that logs
    and pipes keep every field."""
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) > 0:
        return int(cols)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def fit(line: str, width: int | None) -> str:
    """``line`` cut to ``width`` columns with a visible ``...``."""
    if width is None or len(line) <= width:
        return line
    return line[:max(0, width - 3)] + "..."


def violation_text(v: Violation, indent: str = "      ", width: int | None = None) -> list[str]:
    out = [f"{indent}{v.verdict_word}: {v.summary}"]
    for e in v.witness:
        out.append(fit(f"{indent}  {event_line(e)}", width))
    out += textwrap.wrap(v.explanation, width=min(width or PROSE_WIDTH, PROSE_WIDTH),
                         initial_indent=indent + "why: ", subsequent_indent=indent + "     ")
    return out


def expectation(lit: Litmus | None, v: Verdict) -> str:
    if lit is None:
        return ""
    exp = lit.expected_checks(v.strategy)
    if exp is None:
        return ""
    got = sorted(v.checks())
    if got == exp:
        return "  (as expected)"
    return f"  (EXPECTED {'S' if not exp else 'U ' + ', '.join(exp)})"


def lockstep_text(res: Lockstep, lit: Litmus | None = None, verbose: bool = True,
                  width: int | None = None) -> str:
    """The verdicts; witness event lines cut (with ``...``) to ``width`` if given."""
    p = res.program
    out = []
    head = lit.path if lit and lit.path else "program"
    if lit and lit.title:
        head += f": {lit.title}"
    out.append(head)
    out.append(f"platform {res.platform}, {p.cpus} CPUs, {len(p.setup)} setup + {len(p.ops)} ops"
               + (f", pt_reclaim={p.env.pt_reclaim}" if p.env.pt_reclaim != "off" else "")
               + (", kvm" if p.env.kvm else "") + (", iommu" if p.env.iommu else ""))
    out.append("")
    name_width = max((len(r.verdict.strategy) for r in res.runs), default=8)
    for r in res.runs:
        v = r.verdict
        checks = ", ".join(v.checks())
        out.append(f"  {v.strategy:<{name_width}}  {v.word}  {checks}{expectation(lit, v)}")
        if verbose:
            for x in v.violations:
                out += violation_text(x, width=width)
    if res.divergences:
        out.append("")
        out.append("  divergence:")
        for d in res.divergences:
            out.append(f"      {d.summary}")
    return "\n".join(out)


def violation_json(v: Violation) -> dict[str, Any]:
    return {
        "check": v.check, "verdict": v.verdict_word, "strategy": v.strategy, "summary": v.summary,
        "explanation": v.explanation, "signature": v.signature(),
        "witness": [{"seq": e.seq, "agent": _agent(e.cpu), "kind": e.kind,
                     "attrs": {k: (list(x) if isinstance(x, tuple) else x) for k, x in e.a.items()}}
                    for e in v.witness],
    }


def lockstep_json(res: Lockstep, lit: Litmus | None = None) -> dict[str, Any]:
    results = []
    for r in res.runs:
        v = r.verdict
        exp = lit.expected_checks(v.strategy) if lit else None
        results.append({
            "strategy": v.strategy, "verdict": v.word, "checks": v.checks(), "outcome": v.outcome,
            "steps": r.history.meta.get("steps"), "events": len(r.history),
            "expected": None if exp is None else ("S" if not exp else exp),
            "matches_expected": None if exp is None else sorted(v.checks()) == exp,
            "violations": [violation_json(x) for x in v.violations],
            "behaviours": v.behaviours,
        })
    return {
        "file": lit.path if lit else None, "title": lit.title if lit else None,
        "platform": res.platform, "results": results,
        "divergences": [{"summary": d.summary, **{k: list(x) if isinstance(x, tuple) else x
                                                  for k, x in d.extra.items()}}
                        for d in res.divergences],
        "ok": res.ok,
    }
