"""What a finding means to its reader: one bug, new or known, regression or
inherited.  Pure functions over findings and verdicts; they do not care how
the work was run (fuzz.execution) or which command found them.

**One bug, one reproducer.**  :func:`race_key` is the deduplication key of a
violation: its check and the kernel functions on each side of the race (the
reader that used the freed object, the path that unhooked it, the path that
freed it), not the incidental details of one interleaving: table levels and
frame numbers, whether the freed frame was reused before the use (an
``alloc`` in the witness), the order in which the witness lists events.  A
finding's signature is ``strategy|race_key`` (fuzz.engine.finding_signature);
a divergence's is its observable's kind, without the mm and the address.

**New or known.**  A finding is *known* when the strategy does not claim the
environment (it names environments in ``SAFE_ON`` and this is not one of
them) or when the expected matrix (corpus/expected-matrix.yaml) says U for
that cell; otherwise it is *new*.  A divergence is known when a strategy of
the lockstep is known to fail there (its absolute violation shows up again as
a difference of state).

**Base versus patch.**  With a baseline strategy (``--baseline semi-rcu``),
a cell or finding where the candidate fails and the baseline does not is a
*regression*; one where both fail is *inherited* (the patch did not make it
worse than the kernel it patches).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from impls.machine.plugin import Ops
from oracle.verdict import Violation

#: the kernel entry point each operation of the litmus format models
KERNEL_PATH = {
    "mmap": "mmap", "munmap": "munmap", "madvise": "madvise(MADV_DONTNEED)",
    "access": "handle_mm_fault", "populate": "handle_mm_fault", "gup_fast": "gup_fast",
    "pte_walk": "pte_offset_map", "switch": "switch_mm", "exit": "exit_mmap",
    "spec_walk": "speculative walk", "kvm_fault": "kvm_mmu_fault", "kvm_access": "kvm_mmu_fault",
    "iommu_access": "iommu",
}

#: the unhooking function named in an entry_write's ``why``, by the path it belongs to
_UNHOOK = (
    (re.compile(r"free_p[a-z]{2}_range"), "free_pgtables"),
    (re.compile(r"try_to_free_pte|try_get_and_clear_pmd"), "pt_reclaim"),
    (re.compile(r"\bzap\b|zap_pte_range"), "zap_pte_range"),
)
_NUMBERS = re.compile(r"0x[0-9a-f]+|\d+")


def _unhook(why: str) -> str:
    for pat, name in _UNHOOK:
        if pat.search(why):
            return name
    m = re.search(r"\(([a-z_]+)\)", why)
    return m.group(1) if m else _NUMBERS.sub("N", why.split(" (")[0])


def _tag(a: Mapping[str, Any]) -> str:
    t = a.get("who") or a.get("name") or a.get("via") or a.get("what") or ""
    return _NUMBERS.sub("N", str(t))


def race_key(v: Violation) -> str:
    """The check and the kernel functions on each side of the race, from the
    violation's witness alone (so every command computes the same key):

    * ``use:``: the operation (as its kernel path) running on the CPU of the
      violating event, and what it did (``gup_fast``, ``ptl``, ``tlb_use``);
    * ``unhook:``: the function that cleared the entry (``free_pgtables``,
      ``pt_reclaim``, ``zap_pte_range``), whatever the table level;
    * ``free:``: the path that freed the frame (``tlb_batch_pages_flush``,
      ``tlb_remove_table_rcu``, ...);
    * every other witness event by its kind and tag; allocations (a freed
      frame reused before the use) and numbers are left out."""
    w = list(v.witness)
    if not w:
        return v.check
    last = w[-1]
    ops = {e.cpu: str(e.a.get("name", "")) for e in w if e.kind == "op_begin"}
    if last.kind in ("deadlock", "step_limit"):  # where each CPU is stuck, by function
        where = sorted({str(label).split(":")[0] for _, label in last.a.get("cpus", ()) if label})
        return "|".join([v.check, last.kind, *where])
    reader = KERNEL_PATH.get(ops.get(last.cpu, ""), "")
    use = "/".join(x for x in (reader, _tag(last.a) or last.kind) if x)
    parts: set[str] = set()
    for e in w[:-1]:
        if e.kind == "alloc":
            continue
        if e.kind == "op_begin":
            if e.cpu != last.cpu:
                parts.add(f"op:{KERNEL_PATH.get(str(e.a.get('name')), str(e.a.get('name')))}")
        elif e.kind == "entry_write":
            parts.add(f"unhook:{_unhook(str(e.a.get('why', '')))}")
        elif e.kind == "free":
            parts.add(f"free:{e.a.get('via', '')}")
        else:
            tag = _tag(e.a)
            parts.add(f"{e.kind}:{tag}" if tag else e.kind)
    return "|".join([v.check, f"use:{use}", *sorted(parts)])


def divergence_key(observable: str) -> str:
    """A divergence by the kind of its observable (``mapped``, ``exited``,
    ``leaked pages``...), without the mm and the address."""
    return re.sub(r"\s+", " ", _NUMBERS.sub("", re.sub(r"\bmm\d+\b", "", observable))).strip() or "state"


# -- new or known -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Label:
    status: str          # "new" or "known"
    why: str = ""        # for a known finding: what knows it
    basis: str = ""      # "SAFE_ON" or "expected matrix": for summaries that group known findings

    @property
    def known(self) -> bool:
        return self.status == "known"


NEW = Label("new")


def expected_verdict(expected: Any, strategy: str, env: str) -> Any:
    """``expected`` is a fuzz.matrix.Expected, a {strategy: {env: verdict}}
    mapping, or None."""
    if expected is None:
        return None
    if hasattr(expected, "get") and not isinstance(expected, Mapping):
        return expected.get(strategy, env)
    return expected.get(strategy, {}).get(env)


def label(strategy: str, env: str, safe_on: Iterable[str] = (), expected: Any = None) -> Label:
    """New or known, for a violation of ``strategy`` in environment ``env``
    (see the module docstring).  ``safe_on``: the strategy's SAFE_ON (empty:
    it claims every environment)."""
    safe_on = tuple(safe_on)
    if safe_on and env not in safe_on:
        return Label("known", f"{strategy} does not claim {env} in SAFE_ON", "SAFE_ON")
    e = expected_verdict(expected, strategy, env)
    if e is not None and e != "S":
        return Label("known", f"the expected matrix says U for {strategy} on {env}", "expected matrix")
    return NEW


def divergence_label(strategies: Iterable[tuple[str, Iterable[str]]], env: str, expected: Any = None) -> Label:
    """A divergence between ``strategies`` ((name, SAFE_ON) pairs): known if
    one of them is known to fail in ``env``."""
    for name, safe_on in strategies:
        lab = label(name, env, safe_on, expected)
        if lab.known:
            return Label("known", f"{lab.why}, so its state may differ", lab.basis)
    return NEW


def default_expected() -> Any:
    """The repository's expected matrix (corpus/expected-matrix.yaml), or
    None if it is missing or unreadable (triage then uses SAFE_ON alone)."""
    from .matrix import CORPUS_DIR, MatrixError, load_expected

    path = CORPUS_DIR / "expected-matrix.yaml"
    try:
        return load_expected(path) if path.is_file() else None
    except MatrixError:
        return None


# -- base versus patch -----------------------------------------------------------------------------


def known_summary(items: Iterable[tuple[str, str, str, str]]) -> list[str]:
    """Known findings summarised: ``items`` are (strategy, basis, env,
    checks) tuples; one line per strategy and basis, e.g. "direct, outside
    its SAFE_ON: 5 findings (table-uaf) on broadcast+batch-fail,
    native+pt-reclaim (2)"."""
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for strategy, basis, env, checks in items:
        groups.setdefault((strategy, basis), []).append((env, checks))
    out = []
    for (strategy, basis), rows in groups.items():
        envs: dict[str, int] = {}
        for env, _ in rows:
            envs[env] = envs.get(env, 0) + 1
        checks = sorted({c for _, cs in rows for c in cs.split(", ") if c})
        where = "outside its SAFE_ON" if basis == "SAFE_ON" else f"U in the {basis}" if basis else "known"
        out.append(f"{strategy}, {where}: {len(rows)} finding{'s' if len(rows) != 1 else ''} ({', '.join(checks)}) on "
                   + ", ".join(f"{e} ({n})" if n > 1 else e for e, n in envs.items()))
    return out


def compare_cells(candidate: Mapping[str, str], baseline: Mapping[str, str]) -> dict[str, str]:
    """Per environment: ``regression`` (the candidate is U, the baseline S),
    ``inherited`` (both U), ``fixed`` (the candidate S, the baseline U) or
    ``clean`` (both S).  Verdicts are "S"/"U"; environments missing from the
    baseline count as S there."""
    out = {}
    for env, v in candidate.items():
        b = baseline.get(env, "S")
        if v == "U":
            out[env] = "inherited" if b == "U" else "regression"
        else:
            out[env] = "fixed" if b == "U" else "clean"
    return out




# -- replaying a reproducer --------------------------------------------------------------------------


def replays_divergence(lit: Any, strategies: list[Ops], platform: Ops, base: Any, key: str) -> bool:
    """Does the reproducer ``lit`` (a fuzz.corpus.Litmus), written out as its
    YAML text and read back as ``shootdown run`` would read the file, show a
    divergence of the same kind (:func:`divergence_key`) when every strategy
    replays the file's one schedule?"""
    from . import corpus
    from .run import run_lockstep

    if lit is None:
        return False
    again = corpus.parse(corpus.dumps(lit), "<reproducer>", base=base)
    res = run_lockstep(again.program, strategies, platform)
    return any(divergence_key(str(d.extra.get("observable", ""))) == key for d in res.divergences)


def diagram(lit: Any, program: Any, strategy: Ops, platform: Ops, width: int = 100) -> str:
    """The race diagram of a finding's reproducer (fuzz.render), for reports
    that carry it (JUnit failure text)."""
    from .render import Story, text_diagram
    from .report import expectation
    from .run import run_program

    run = run_program(program, strategy, platform)
    story = Story(program, run, title=getattr(lit, "title", "") or "", path="",
                  expectation=expectation(lit, run.verdict) if lit is not None else "")
    return text_diagram(story, width=width)


#: seeded random schedules tried when the baseline does not fail a finding's
#: reproducer under the file's own schedule (recorded on the candidate, whose
#: steps need not line up with the baseline's).  Measured: on a 6-operation
#: reproducer of skip-sync-ipi's fault-vs-PT_RECLAIM race, semi-rcu shows the
#: same race in 5 of 2,000 random schedules (the first at seed 746)
BASELINE_TRIES = 1000


def baseline_evidence(program: Any, baseline: Ops, platform: Ops, race: str, checks: Iterable[str],
                      biases: Mapping[str, float] | None = None, tries: int = BASELINE_TRIES) -> str:
    """Does the baseline have the candidate's bug on the candidate's own
    program?  It does if, replayed under the file's schedule, it fails one of
    the same ``checks``; or if, under one of ``tries`` seeded random
    schedules (environment ``biases``), it shows the same race
    (:func:`race_key`).  Returns what showed it ("" if nothing did):
    deterministic, whatever the machine."""
    from impls.machine.choices import RandomChoices

    from .run import run_program

    checks = set(checks)
    r = run_program(program, baseline, platform)
    same = sorted(checks & set(r.verdict.checks()))
    if same:
        return f"{baseline.name} fails {', '.join(same)} on this reproducer"
    for k in range(tries):
        r = run_program(program, baseline, platform, RandomChoices(k, dict(biases) if biases else None))
        if any(race_key(v) == race for v in r.verdict.violations):
            return f"{baseline.name} shows the same race on this program (schedule seed {k})"
    return ""
