"""The exhaustive explorer (fuzz/exhaustive.py) and its footprints
(impls/machine/footprint.py).

* Completeness against brute force: with sleep sets, the explorer reaches the
  same set of (verdict, final state) pairs as without reduction, on small
  programs where the reduction does prune.  Two deliberately unsound variants
  (every pair of agents independent; sleep sets without the preemption-budget
  rule) lose outcomes on the same programs, so the comparison has teeth.
* Every reported execution replays exactly as a litmus schedule.
* A budget stop is a partial result, never a proof, and resumes from its
  checkpoint to the same counts as an uninterrupted run.
* Planted bugs with litmus reproducers (the mutant platforms the corpus uses)
  are found at the smallest preemption bound that exposes them.
* The issue's must-show: ``run corpus/gupfast+munmap+xenflush.yaml
  --exhaustive`` finds the use-after-free for direct and proves the others.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

import fuzz.exhaustive as X
from fuzz import corpus
from fuzz.cli import EXIT_INCOMPLETE, EXIT_VIOLATION, main
from fuzz.exhaustive import explore, schedule_program
from fuzz.run import run_program
from impls import registry
from impls.machine.choices import Replay
from impls.machine.footprint import Tracer
from impls.machine.page_alloc import Frame

ROOT = Path(__file__).resolve().parent.parent
XENFLUSH = ROOT / "corpus/gupfast+munmap+xenflush.yaml"

#: small programs on which bound (2 preemptions, 1 choice) makes the sleep sets prune
SMALL = [
    ("corpus/gupfast+munmap+ipi.yaml", "direct"),
    ("corpus/lazytlb+munmap+tablefree.yaml", "direct"),
    ("corpus/madvise+fault+ptreclaim-fixed.yaml", "direct"),
    ("corpus/xen+exit_mmap+deferred-cr3.yaml", "direct"),
    ("corpus/kvm+iommu+munmap+notifiers.yaml", "direct"),
    ("corpus/xen+exit_mmap+switch-in.yaml", "direct"),
]


def load(path: str):
    lit = corpus.load(ROOT / path)
    return lit, registry.platform(lit.program.platform) if not lit.program.platform.endswith(".py") \
        else registry.platform(str((ROOT / path).parent / lit.program.platform))


def outcomes(program, strategy, platform, reduce: bool, k: int = 2, f: int = 1):
    seen: set = set()

    def on(ex: X.Execution) -> bool:
        seen.add((tuple(ex.verdict.checks()), repr(ex.final)))
        return False

    r = explore(program, strategy, platform, k, f, reduce, stop_at_violation=False, on_execution=on)
    assert r.complete
    return seen, r


@pytest.mark.interpreted
@pytest.mark.parametrize("path,strategy", SMALL)
def test_reduction_agrees_with_brute_force(path: str, strategy: str):
    lit, platform = load(path)
    s = registry.strategy(strategy)
    full, r_full = outcomes(lit.program, s, platform, reduce=False)
    red, r_red = outcomes(lit.program, s, platform, reduce=True)
    assert red == full
    assert r_full.stats.pruned == 0
    assert r_red.stats.pruned > 0, "the reduction pruned nothing here: pick a program where it does"
    assert r_red.stats.executions < r_full.stats.executions


@pytest.mark.interpreted
@pytest.mark.parametrize("variant", ["all-independent", "no-budget-rule"])
def test_the_comparison_catches_an_unsound_reduction(variant: str, monkeypatch):
    """Each unsound variant loses an outcome on gupfast+munmap+ipi: naive sleep
    sets under a preemption bound drop executions (Musuvathi & Qadeer 2007)."""
    lit, platform = load("corpus/gupfast+munmap+ipi.yaml")
    s = registry.strategy("direct")
    full, _ = outcomes(lit.program, s, platform, reduce=False)
    if variant == "all-independent":
        monkeypatch.setattr(X, "_independent", lambda e, agent, fp, en: e.agent != agent)
    monkeypatch.setattr(X, "_may_prune", lambda e, cost, pre: True)
    red, _ = outcomes(lit.program, s, platform, reduce=True)
    assert red < full


def test_every_execution_replays_exactly():
    lit, platform = load("corpus/madvise+fault+ptreclaim-fixed.yaml")
    s = registry.strategy("full-rcu")
    got = []

    def on(ex: X.Execution) -> bool:
        got.append(ex)
        return False

    explore(lit.program, s, platform, 1, 1, reduce=False, stop_at_violation=False, on_execution=on)
    assert len(got) > 50
    flips = [ex for ex in got if ex.choices]
    assert flips, "no execution took a labelled choice"
    for ex in got[::7] + flips[:5]:
        prog = schedule_program(lit.program, ex.schedule)
        run = run_program(prog, s, platform, Replay(prog.schedule))
        final = next(e.a for e in reversed(run.history.events) if e.kind == "final")
        assert final == ex.final
        assert run.verdict.checks() == ex.verdict.checks()
        assert run.history.meta["schedule"] == ex.schedule
    # and through the litmus format
    ex = flips[0]
    text = corpus.dumps(replace(lit, program=schedule_program(lit.program, ex.schedule)))
    again = corpus.parse(text, "<mem>")
    assert again.program.schedule == ex.schedule


@pytest.mark.interpreted
def test_a_budget_stop_is_partial_and_resumes(tmp_path: Path):
    lit, platform = load("corpus/lazytlb+munmap+tablefree.yaml")
    s = registry.strategy("semi-rcu")
    whole = explore(lit.program, s, platform, 2, 1, reduce=True)
    state = tmp_path / "state.json"
    part = explore(lit.program, s, platform, 2, 1, reduce=True, max_executions=40, state_file=state)
    assert not part.proven and not part.complete
    assert "PARTIAL" in part.summary() and "not a proof" in part.summary()
    assert state.exists()
    rounds = 1
    while not part.complete:
        part = explore(lit.program, s, platform, 2, 1, reduce=True,
                       max_executions=part.stats.runs + 40, state_file=state)
        rounds += 1
    assert rounds > 3
    assert part.proven and not state.exists()
    assert part.stats.executions == whole.stats.executions
    assert part.stats.pruned == whole.stats.pruned


def test_a_bound_that_cuts_nothing_covers_all_schedules():
    """One CPU and no choices asked: the bound never removes an option."""
    lit, platform = load("corpus/lazytlb+munmap+tablefree.yaml")
    prog = replace(lit.program, ops=tuple(op for op in lit.program.ops if op.cpu == 0))
    r = explore(prog, registry.strategy("direct"), platform, 2, 0, reduce=False)
    if r.exhaustive:
        assert "all schedules" in r.summary()
    r2 = explore(lit.program, registry.strategy("direct"), platform, 2, 1, reduce=False)
    assert not r2.exhaustive and "bound 2" in r2.summary()


# -- planted bugs with litmus reproducers -----------------------------------------------

def _mutant_cases() -> list[tuple[Path, str]]:
    """(litmus file, strategy) for every planted bug of tests/mutants that has a
    litmus reproducer in corpus/: a mutant platform, or a mutant strategy
    named by an ``expect:`` key, with an expected U."""
    out = []
    for p in corpus.litmus_files(ROOT / "corpus"):
        lit = corpus.load(p)
        mutant_platform = "tests/mutants/" in (lit.program.platform or "")
        for key in lit.expect:
            resolved = corpus.resolve_expect_key(lit, key)
            if (mutant_platform or "tests/mutants/" in resolved) and lit.expected_checks(key):
                out.append((p, resolved))
    return out


MUTANT_CASES = _mutant_cases()


def test_the_corpus_has_mutant_reproducers():
    assert len({p for p, _ in MUTANT_CASES}) >= 3
    assert any("tests/mutants/" in s for _, s in MUTANT_CASES)


@pytest.mark.parametrize("path,strategy", MUTANT_CASES,
                         ids=lambda x: x.stem if isinstance(x, Path) else Path(x).stem)
def test_planted_bug_found_at_its_smallest_bound(path: Path, strategy: str):
    lit = corpus.load(path)
    platform = registry.platform(lit.program.platform)
    k_file = lit.program.schedule.preemptions if lit.program.schedule else 0
    s = registry.strategy(strategy)
    lit.bind([s])
    exp = lit.expected_checks(s.name)
    r = explore(lit.program, s, platform, k_file, 1, reduce=False)
    assert r.violation is not None, f"{s.name}: not found within the file's {k_file} preemptions"
    k = r.violation.preemptions
    assert k <= k_file
    assert set(r.violation.verdict.checks()) & set(exp)
    if k > 0:  # smallest: one preemption fewer proves it absent
        below = explore(lit.program, s, platform, k - 1, 1, reduce=False)
        assert below.proven


# -- footprints ------------------------------------------------------------------------

@pytest.mark.interpreted
def test_tracer_restores_the_classes():
    before = Frame.__getattribute__
    with Tracer():
        assert Frame.__getattribute__ is not before
    assert Frame.__getattribute__ is before
    assert "__getattribute__" not in Frame.__dict__


@pytest.mark.interpreted
def test_footprint_sees_container_writes_and_held_references():
    tr = Tracer()
    with tr:
        tr.reset()
        f = Frame(7)
        tr.begin()
        f.entries[3] = 1          # a write through a container read
        fp = tr.end()
        assert fp.writes and fp.writes <= fp.reads
        tr.begin()
        _ = f.entries.get(3)      # a read only
        fp2 = tr.end()
        assert not fp2.writes and fp2.reads

        def walker():
            ents = f.entries      # kept across the preemption point
            yield "held"
            ents[4] = 2
        g = walker()
        tr.begin()
        next(g)
        fp3 = tr.end(0, g)
        assert fp3.opaque        # holding a reference to state makes it opaque
        tr.begin()
        with pytest.raises(StopIteration):
            next(g)
        fp4 = tr.end(0, g)
        assert fp4.opaque        # the step that used it too


# -- the command line ----------------------------------------------------------------------

def test_run_exhaustive_xenflush_bound_1(tmp_path: Path, capsys):
    rc = main(["run", str(XENFLUSH), "--exhaustive", "--preemptions", "1", "--out", str(tmp_path),
               "--minimize-attempts", "50"])
    out = capsys.readouterr().out
    assert rc == EXIT_VIOLATION
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ") and ln.split()}
    assert lines["direct"].split()[1] == "U" and "table-uaf" in lines["direct"]
    assert lines["semi-rcu"].split()[1] == "S" and lines["full-rcu"].split()[1] == "S"
    assert out.count("no violation in all") == 2
    repro = list(tmp_path.glob("*.yaml"))
    assert len(repro) == 1
    capsys.readouterr()
    assert main(["explain", str(repro[0])]) == EXIT_VIOLATION           # drawable, like any finding
    assert "U table-uaf  (as expected)" in capsys.readouterr().out
    lit = corpus.load(repro[0])
    res = run_program(lit.program, registry.strategy("direct"), registry.platform("xen-pv"))
    assert "table-uaf" in res.verdict.checks()


def test_run_exhaustive_budget_is_not_a_proof(tmp_path: Path, capsys):
    rc = main(["run", str(XENFLUSH), "--exhaustive", "--strategy", "full-rcu", "--budget", "0.05",
               "--state", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == EXIT_INCOMPLETE
    assert "?  (no proof" in out and "PARTIAL" in out
    assert list(tmp_path.glob("*.json"))


@pytest.mark.slow
def test_must_show_xenflush_default_bound(tmp_path: Path, capsys):
    """The issue's must-show, at the default bound (2 preemptions, 2 choices)."""
    rc = main(["run", str(XENFLUSH), "--exhaustive", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == EXIT_VIOLATION
    assert "direct    U  table-uaf" in out
    assert out.count("no violation in all") == 2 and "bound 2 preemption(s)" in out
    # the README shows this command's semi-rcu line (all but the CPU time)
    readme = (ROOT / "README.md").read_text()
    sample = re.search(r"semi-rcu  S  \(as expected\)\n +(no violation in all \d+ executions [^\n]*?), [\d.]+s\)",
                       readme)
    assert sample and sample.group(1) in out


# -- matrix --exhaustive ---------------------------------------------------------------------

def test_matrix_exhaustive_cells(tmp_path: Path):
    from fuzz import matrix
    u = matrix.fuzz_cell(matrix.CellSpec("direct", "xen-pv", out_dir=str(tmp_path), minimize=False,
                                         exhaustive=True, ex_programs=1, ex_preemptions=1))
    assert u.verdict == "U" and "table-uaf" in u.checks and u.reproducer
    assert "exhaustive" in u.found_by
    s = matrix.fuzz_cell(matrix.CellSpec("full-rcu", "native", corpus_seeds=False, exhaustive=True,
                                         ex_programs=2, ex_length=2, ex_preemptions=1))
    assert s.verdict == "S" and s.proof == "proven" and s.proven_programs == 2
    assert s.short().startswith("S proven")
    partial = matrix.fuzz_cell(matrix.CellSpec("full-rcu", "native", corpus_seeds=False, exhaustive=True,
                                               ex_programs=1, ex_length=8, ex_preemptions=2,
                                               ex_budget=0.001))
    assert partial.verdict == "S" and partial.proof == "sampled"
    assert "sampled" in partial.short()


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p, _ in SMALL] + ["corpus/ptewalk+madvise+ptreclaim+batchfail.yaml",
                                                          "corpus/gupfast+munmap+xenflush.yaml"])
@pytest.mark.interpreted
@pytest.mark.parametrize("strategy", registry.STRATEGIES)
def test_reduction_agrees_with_brute_force_all_strategies(path: str, strategy: str):
    """The longer version: every built-in, two choices."""
    lit, platform = load(path)
    s = registry.strategy(strategy)
    full, _ = outcomes(lit.program, s, platform, reduce=False, f=2)
    red, _ = outcomes(lit.program, s, platform, reduce=True, f=2)
    assert red == full
