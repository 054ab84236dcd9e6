"""Rendering verdicts for people (text) and programs (JSON)."""

from __future__ import annotations

import textwrap
from typing import Any

from impls.machine.history import Event
from oracle.verdict import Verdict, Violation

from .corpus import Litmus
from .run import Lockstep


def _agent(cpu: int) -> str:
    return {-1: "rcu", -2: "hw", -3: "iommu"}.get(cpu, f"cpu{cpu}")


def event_line(e: Event) -> str:
    return e.brief()


def violation_text(v: Violation, indent: str = "      ", width: int = 100) -> list[str]:
    out = [f"{indent}{v.verdict_word}: {v.summary}"]
    for e in v.witness:
        out.append(f"{indent}  {event_line(e)[:width - len(indent) - 2]}")
    out += textwrap.wrap(v.explanation, width=width, initial_indent=indent + "why: ",
                         subsequent_indent=indent + "     ")
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


def lockstep_text(res: Lockstep, lit: Litmus | None = None, verbose: bool = True) -> str:
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
    width = max((len(r.verdict.strategy) for r in res.runs), default=8)
    for r in res.runs:
        v = r.verdict
        checks = ", ".join(v.checks())
        out.append(f"  {v.strategy:<{width}}  {v.word}  {checks}{expectation(lit, v)}")
        if verbose:
            for x in v.violations:
                out += violation_text(x)
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
