"""What reports say: witness lines, liveness messages, behaviour summaries,
and the README's promises about them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fuzz import corpus
from fuzz.cli import main
from fuzz.envs import ENVIRONMENTS
from fuzz.run import run_program
from impls import registry
from oracle.behaviours import BEHAVIOURS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_A = str(ROOT / "corpus" / "gupfast+munmap+xenflush.yaml")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _cwd(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("COLUMNS", raising=False)


# -- witness lines ------------------------------------------------------------------------------

def witness_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if re.match(r"^ {8}#\d+ ", ln)]


def test_witness_lines_are_whole_in_a_pipe(capsys):
    code, out, _ = run(capsys, "run", EXAMPLE_A, "--strategy", "direct")
    free = next(ln for ln in witness_lines(out) if " free " in ln)
    assert "xen_pinned=False" in free and not free.endswith("...")
    assert max(len(ln) for ln in witness_lines(out)) > 100


@pytest.mark.parametrize("columns", [80, 200])
def test_witness_lines_honour_columns_with_an_ellipsis(capsys, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    code, out, _ = run(capsys, "run", EXAMPLE_A, "--strategy", "direct")
    lines = witness_lines(out)
    assert all(len(ln) <= columns for ln in lines)
    free = next(ln for ln in lines if " free " in ln)
    if columns == 200:
        assert "xen_pinned=False" in free and not free.endswith("...")
    else:
        assert free.endswith("...") and len(free) == columns


# -- liveness ----------------------------------------------------------------------------------------

def test_step_limit_names_where_each_cpu_is_in_words_and_counts_in_decimal():
    lit = corpus.load(EXAMPLE_A)
    r = run_program(lit.program, registry.strategy("direct"), registry.platform("xen-pv"), max_steps=5000)
    assert r.verdict.outcome == "quiescent"
    r = run_program(lit.program, registry.strategy("direct"), registry.platform("xen-pv"), max_steps=3)
    v = next(x for x in r.verdict.violations if x.check == "liveness")
    assert "None" not in v.summary and "step limit (3 steps)" in v.summary
    assert "before its first preemption point" in v.summary or " at " in v.summary
    ev = next(e for e in v.witness if e.kind == "step_limit")
    assert "steps=4 " in ev.brief()
    long = run_program(lit.program, registry.strategy("direct"), registry.platform("xen-pv"))
    limit = next(e for e in long.history.events if e.kind == "op_begin")   # any event: gen/idx decimal
    assert "0x" not in limit.brief().split("desc=")[0]


SPINNING = """\
from impls.native import mmu_gather as _native

NAME = "spinning"
pmd_free_tlb = _native.pmd_free_tlb
pud_free_tlb = _native.pud_free_tlb
tlb_flush_mmu = _native.tlb_flush_mmu


def pte_free_tlb(tlb, pte, address):
    while True:
        yield
"""


def test_a_cpu_at_a_bare_yield_is_said_so(capsys, tmp_path):
    """The issue's "CPU0 at None": a plug-in hook that yields no label."""
    f = tmp_path / "spinning.py"
    f.write_text(SPINNING)
    code, out, _ = run(capsys, "run", str(ROOT / "corpus" / "gupfast+munmap+ipi.yaml"), "--strategy-file", str(f))
    assert code == 1 and "DEADLOCK: step limit (20,000 steps)" in out
    summary = next(ln for ln in out.splitlines() if "DEADLOCK:" in ln)
    assert "CPU0 at a bare `yield` (no label)" in summary and "None" not in summary
    assert "steps=20001 " in out


# -- behaviours that cannot happen ----------------------------------------------------------------

def test_impossible_behaviours_follow_the_knobs_and_the_platform():
    native = ENVIRONMENTS["native"].impossible_behaviours(registry.platform("native"))
    assert {"xen-mc-deferred", "broadcast-flush", "pt-reclaim-freed-table", "kvm-fault-retried",
            "table-batch-alloc-failed"} <= set(native)
    assert "lazy-cpu-table-flush" in native and "walker-mid-walk-at-unhook" not in native   # E1: no lazy CPUs
    lazy = ENVIRONMENTS["native+lazy"].impossible_behaviours(registry.platform("native"))
    assert not {"lazy-cpu-table-flush", "speculative-walk-lazy", "mm-freed"} & set(lazy)
    xen = ENVIRONMENTS["xen-pv"].impossible_behaviours(registry.platform("xen-pv"))
    assert "xen-mc-deferred" not in xen and "lazy-cpu-table-flush" in xen
    assert "pt-reclaim-freed-table" not in ENVIRONMENTS["native+pt-reclaim"].impossible_behaviours(
        registry.platform("native"))
    assert "table-batch-alloc-failed" not in ENVIRONMENTS["native+batch-fail"].impossible_behaviours(
        registry.platform("native"))
    assert "kvm-fault-retried" not in ENVIRONMENTS["native+secondary-mmu"].impossible_behaviours(
        registry.platform("native"))
    assert "broadcast-flush" not in ENVIRONMENTS["broadcast"].impossible_behaviours(registry.platform("broadcast"))
    assert set(native) <= set(BEHAVIOURS)
    # huge PMDs only with THP, mremap only where the environment generates it
    # (the THP and file environments came after issue 13's list and their
    # behaviours were counted "not reached" everywhere else)
    thp = {"thp-fault-huge", "thp-collapsed", "huge-pmd-split", "deposited-table-freed", "walker-saw-huge-pmd"}
    assert thp <= set(native) and thp <= set(xen)
    assert not thp & set(ENVIRONMENTS["native+thp"].impossible_behaviours(registry.platform("native")))
    moved = {"moved-pte-cached-at-old-address", "moved-table-cached-at-old-address"}
    assert moved <= set(native) and moved <= set(ENVIRONMENTS["native+thp"].impossible_behaviours(
        registry.platform("native")))
    assert not moved & set(ENVIRONMENTS["native+file"].impossible_behaviours(registry.platform("native")))
    hugetlb = ENVIRONMENTS["native+hugetlb"].impossible_behaviours(registry.platform("native"))
    assert "walker-saw-huge-pmd" not in hugetlb and "thp-collapsed" in hugetlb   # a hugetlb PMD leaf is huge


def test_the_fuzz_summary_does_not_count_impossible_behaviours_as_not_reached(capsys):
    code, out, _ = run(capsys, "fuzz", "--strategy", "full-rcu", "--platform", "native", "--runs", "4",
                       "--length", "16", "--jobs", "1", "--no-write")
    assert code == 0
    impossible = ENVIRONMENTS["native"].impossible_behaviours(registry.platform("native"))
    assert re.search(rf"behaviours \d+/{len(BEHAVIOURS) - len(impossible)} possible here", out)
    missing = next((ln for ln in out.splitlines() if "not reached:" in ln), "")
    for name in ("xen-mc-deferred", "broadcast-flush", "pt-reclaim-freed-table", "kvm-fault-retried",
                 "thp-fault-huge", "huge-pmd-split", "moved-pte-cached-at-old-address"):
        assert name not in missing
    code, out, _ = run(capsys, "fuzz", "--strategy", "full-rcu", "--platform", "native", "--runs", "4",
                       "--length", "16", "--jobs", "1", "--no-write", "--format", "json")
    cell = json.loads(out)["cells"][0]
    assert "xen-mc-deferred" in cell["behaviours_impossible"]
    assert "xen-mc-deferred" not in cell["behaviours_missing"]
    assert cell["behaviours_possible"] == len(BEHAVIOURS) - len(cell["behaviours_impossible"])


# -- the README ---------------------------------------------------------------------------------------

def test_the_readme_verdict_is_what_run_prints(capsys):
    """The "Reading a verdict" sample: each line is the tool's line (a line
    ending in "..." a prefix of it; a line that is only "..." skips lines)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Reading a verdict", 1)[1].split("```", 2)[1].strip("\n").splitlines()
    first = block[0].split(":", 1)[0]
    code, out, _ = run(capsys, "run", first)
    got = out.splitlines()
    i = 0
    for want in block:
        if want.strip() == "...":
            continue
        while i < len(got) and not _same(want, got[i]):
            assert block.index(want) and block[block.index(want) - 1].strip() == "...", \
                f"README line {want!r} is not what the tool prints ({got[i]!r})"
            i += 1
        assert i < len(got), f"README line {want!r} is not in the output"
        i += 1


def _same(want: str, got: str) -> bool:
    return got.startswith(want[:-3]) if want.endswith("...") else got == want


def test_docs_link_only_to_files_in_the_repository():
    """Every relative link and every backquoted path to a .md file in the README
    and docs/ resolves inside the repository (the primer included)."""
    for doc in [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text) + re.findall(r"`([^`\s]*/[^`\s]*\.md)`", text)
        for t in targets:
            if "://" in t:
                continue
            path = (doc.parent / t).resolve()
            assert path.is_relative_to(ROOT), f"{doc.name} points outside the repository: {t}"
            assert path.exists(), f"{doc.name}: {t} does not exist"
    assert "docs/primer.md" in (ROOT / "README.md").read_text()


def test_docs_name_every_environment():
    """Every environment of fuzz/envs.py has its row in docs/writing-a-strategy.md's
    table (what SAFE_ON may name) and is named in the README (the batch-fail
    variants as `*+batch-fail`)."""
    from fuzz.envs import ENVIRONMENTS
    readme = (ROOT / "README.md").read_text()
    guide = (ROOT / "docs" / "writing-a-strategy.md").read_text()
    for e in ENVIRONMENTS:
        assert f"| `{e}` |" in guide, f"docs/writing-a-strategy.md has no row for {e}"
        assert f"`{e}`" in readme or (e.endswith("+batch-fail") and "`*+batch-fail`" in readme), \
            f"the README does not name the environment {e}"
