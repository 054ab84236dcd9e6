"""Transparent huge pages (issue 9): huge PMD leaves, collapse, split, the
deposited tables and the strategy hooks they go through.

Scenario tests on small litmus programs; the oracle's side is in
tests/test_oracle_checks.py (bad-walk, the collapse clause of
leaked-gup-pin), the planted bugs in tests/test_zoo.py, the litmus programs
in corpus/ (replayed by tests/test_corpus.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz import corpus
from fuzz.envs import ENVIRONMENTS
from fuzz.generate import RandomDraw, generate
from fuzz.run import run_lockstep, run_program
from impls import registry
from impls.machine.machine import Machine
from impls.machine.page_alloc import TABLE
from impls.machine.pgtable import (
    HPAGE_PMD_NR,
    entry_class,
    mk_huge_pmd,
    mk_table,
    pmd_bad,
    pmd_leaf,
    pmd_mkinvalid,
    pmd_present,
    pmd_trans_huge,
)
from impls.machine.pgtable_generic import Ptr, pgtable_trans_huge_deposit, pgtable_trans_huge_withdraw
from oracle.divergence import robust_pages

ROOT = Path(__file__).resolve().parent.parent

HUGE_FAULT = """
shootdown: 1
platform: native
cpus: 2
env: {thp: true}
vmas: [{mm: 0, start: 0x200000, len: 0x200000}]
ops:
  - {cpu: 0, op: access, addr: 0x203000, write: true}
  - {cpu: 0, op: access, addr: 0x3ff000}
  - {cpu: 0, op: madvise, addr: 0x200000, len: 0x200000}
"""


def _run(text: str, strategy: str = "full-rcu", platform: str | None = None):
    prog = corpus.parse(text).program
    return run_program(prog, registry.strategy(strategy), registry.platform(platform or prog.platform))


def _events(run, *kinds):
    return [e for e in run.history.events if e.kind in kinds]


# -- encodings -----------------------------------------------------------------------

def test_pmd_encodings_follow_x86():
    huge = mk_huge_pmd(0x40, True)
    table = mk_table(0x40)
    invalid = pmd_mkinvalid(huge)
    assert pmd_present(table) and not pmd_leaf(table) and not pmd_bad(table)
    assert pmd_present(huge) and pmd_trans_huge(huge) and pmd_bad(huge)
    # pmdp_invalidate(): not _PAGE_PRESENT, but x86 pmd_present()/pmd_trans_huge() stay true
    assert not invalid & 1 and pmd_present(invalid) and pmd_trans_huge(invalid)
    assert [entry_class(2, v) for v in (0, table, huge, invalid)] == ["none", "table", "huge", "invalid-huge"]


def test_deposit_list_is_the_kernels_fifo():
    """pgtable_trans_huge_deposit()/_withdraw(): deposit A, B, C; withdraw
    returns C, A, B (the circular list headed by pmd_huge_pte)."""
    m = Machine(corpus.parse("shootdown: 1\nops: []\nenv: {thp: true}\n").program,
                registry.strategy("full-rcu"), registry.platform("native"))
    m.boot()
    cpu, mm = m.cpus[0], m.mms[0]
    pmd = m.frames.alloc(0, TABLE, level=2)
    a, b, c = (m.frames.alloc(0, TABLE, level=1) for _ in range(3))
    ptr = Ptr(pmd, pmd.gen, 1)
    for t in (a, b, c):
        pgtable_trans_huge_deposit(cpu, mm, ptr, t)
    assert [pgtable_trans_huge_withdraw(cpu, mm, ptr) for _ in range(3)] == [c, a, b]
    assert pmd.pmd_huge_pte == []


# -- faults, TLB, zap ---------------------------------------------------------------------

def test_huge_fault_maps_a_pmd_and_deposits_a_table():
    run = _run(HUGE_FAULT)
    assert run.verdict.ok, run.verdict.violations
    deposits = _events(run, "pgtable_deposit")
    assert len(deposits) == 1
    huge_fill = [e for e in _events(run, "tlb_fill") if e.a.get("huge")]
    assert huge_fill and huge_fill[0].a["va"] == 0x200000
    # the walk stopped at the huge PMD: no PTE-table PSC entry was filled
    assert not [e for e in _events(run, "psc_fill") if e.a["level"] == 1]
    # zap_huge_pmd(): the deposited table freed through pte_free(), the folio after the flush
    frees = _events(run, "free")
    assert [e.a["via"] for e in frees if e.a["pfn"] == deposits[0].a["pfn"]] == ["pte_free"]
    assert any(e.a.get("order") == 9 for e in frees)
    assert run.verdict.behaviours.get("thp-fault-huge") == 1


def test_thp_off_is_the_old_machine():
    """Without the knob nothing huge happens, and the THP operations are
    skipped: the existing environments' histories do not move."""
    prog = corpus.parse(HUGE_FAULT.replace("env: {thp: true}\n", "")).program
    run = run_program(prog, registry.strategy("full-rcu"), registry.platform("native"))
    assert not _events(run, "pgtable_deposit")
    assert not [e for e in _events(run, "tlb_fill") if e.a.get("huge")]
    assert "alloc_fails:thp_folio" not in dict(run.history.meta["schedule"].flips)
    text = "shootdown: 1\nops:\n  - {cpu: 0, op: collapse, addr: 0x200000}\n  - {cpu: 0, op: split, addr: 0x200000}\n"
    results = [e.a["result"] for e in _events(_run(text), "op_end")]
    assert results == ["EINVAL: no THP", "skipped: no THP"]


def test_fallback_choice_maps_small_pages():
    text = HUGE_FAULT + "choices:\n  alloc_fails:thp_folio: [true]\n"
    run = _run(text)
    assert run.verdict.ok
    assert not _events(run, "pgtable_deposit")
    # the first fault falls back and installs a PTE table; the second finds it
    assert len(_events(run, "thp_fallback")) == 1
    assert len([e for e in _events(run, "tlb_fill") if not e.a.get("huge")]) == 2


def test_thp_paths_go_through_the_strategy_hooks(tmp_path):
    src = tmp_path / "counting.py"
    src.write_text(
        "from impls.pt_reclaim.mmu_gather import *  # noqa\n"
        "from impls.pt_reclaim import mmu_gather as _c\n"
        "from impls.machine.kernel import pagetable_free, trace\n"
        "NAME = 'counting'\n"
        "SAFE_ON = ()\n"
        "def pte_free(cpu, mm, table):\n"
        "    trace(cpu, 'hook pte_free')\n"
        "    pagetable_free(cpu, table, 'counting pte_free')\n"
        "def tlb_remove_table_sync_one(cpu):\n"
        "    trace(cpu, 'hook sync')\n"
        "    yield from _c.tlb_remove_table_sync_one(cpu)\n")
    lit = corpus.load(ROOT / "corpus" / "gupfast+collapse+zap+xenflush.yaml")
    run = run_program(lit.program, registry.strategy(str(src)), registry.platform("xen-pv"))
    notes = [e.a["text"] for e in _events(run, "note")]
    assert notes.count("hook sync") == 1 and notes.count("hook pte_free") == 1
    assert [e.a["via"] for e in _events(run, "free") if e.a["via"].startswith("counting")]
    assert run.verdict.ok


# -- split -------------------------------------------------------------------------------

def test_split_fills_the_withdrawn_table_and_keeps_accounting():
    text = """
shootdown: 1
platform: native
env: {thp: true}
vmas: [{mm: 0, start: 0x200000, len: 0x200000}]
ops:
  - {cpu: 0, op: access, addr: 0x200000, write: true}
  - {cpu: 0, op: split, addr: 0x200000}
  - {cpu: 0, op: madvise, addr: 0x201000, len: 0x2000}
  - {cpu: 1, op: access, addr: 0x201000}
"""
    run = _run(text)
    assert run.verdict.ok, run.verdict.violations
    fill = [e for e in _events(run, "entry_write") if e.a["why"] == "set_ptes (split)"]
    assert fill and fill[0].a["nr"] == HPAGE_PMD_NR
    final = _events(run, "final")[0].a
    mm = final["mms"][0]
    assert "huge" not in mm and len(mm["mapping"]) == HPAGE_PMD_NR - 1 and mm["rss"] == HPAGE_PMD_NR - 1
    # the folio stays one frame: 511 PTE references after the zap and the re-fault elsewhere
    folio = [f for f in final["frames"] if f[2] == 2 and f[4] > 1]
    assert folio and folio[0][4] == HPAGE_PMD_NR - 2 and folio[0][5] == HPAGE_PMD_NR - 2


def test_partial_zap_splits_first():
    text = HUGE_FAULT.replace("{cpu: 0, op: madvise, addr: 0x200000, len: 0x200000}",
                              "{cpu: 0, op: madvise, addr: 0x200000, len: 0x1000}")
    run = _run(text)
    assert run.verdict.ok
    assert _events(run, "thp_split_pmd") and run.verdict.behaviours.get("huge-pmd-split")


@pytest.mark.parametrize("new_addr, moved", [(0x40000000, True), (0x40001000, False)])
def test_mremap_moves_a_whole_huge_pmd_and_splits_a_partial_one(new_addr: int, moved: bool):
    """move_page_tables(): a huge PMD whose whole extent moves is
    move_huge_pmd() (to another PMD table: its deposited table follows it,
    pmd_move_must_withdraw()); a misaligned destination splits it first, then
    move_ptes() moves the 512 PTEs."""
    text = f"""
shootdown: 1
platform: native
env: {{thp: true}}
vmas: [{{mm: 0, start: 0x200000, len: 0x200000}}]
ops:
  - {{cpu: 0, op: access, addr: 0x200000, write: true}}
  - {{cpu: 1, op: access, addr: 0x200000}}
  - {{cpu: 0, op: mremap, addr: 0x200000, len: 0x200000, new_addr: {new_addr:#x}}}
  - {{cpu: 0, op: access, addr: {new_addr + 0x5000:#x}}}
  - {{cpu: 0, op: munmap, addr: {new_addr:#x}, len: 0x200000}}
"""
    for strategy in ("direct", "full-rcu"):
        run = _run(text, strategy)
        assert run.verdict.ok, run.verdict.violations
        assert bool(_events(run, "huge_pmd_moved")) == moved
        assert bool(_events(run, "thp_split_pmd")) == (not moved)
        if moved:
            pmds = {e.a["pmd"] for e in _events(run, "pgtable_deposit", "pgtable_withdraw")}
            assert len(pmds) == 2  # withdrawn from the old PMD table, deposited on the new
        final = _events(run, "final")[0].a["mms"][0]
        assert not final["mapping"] and "huge" not in final and final["rss"] == 0


# -- collapse ------------------------------------------------------------------------------

def test_khugepaged_needs_a_kernel_thread():
    text = """
shootdown: 1
platform: native
env: {thp: true}
vmas: [{mm: 0, start: 0x200000, len: 0x200000}]
ops:
  - {cpu: 0, op: khugepaged, mm: 0, addr: 0x200000}
"""
    assert _events(_run(text), "op_end")[0].a["result"] == "skipped: not khugepaged"


def test_collapse_refuses_an_empty_range_and_keeps_a_huge_one():
    text = """
shootdown: 1
platform: native
env: {thp: true}
vmas: [{mm: 0, start: 0x200000, len: 0x200000}, {mm: 0, start: 0x400000, len: 0x200000}]
setup:
  - {cpu: 0, op: access, addr: 0x400000, write: true}
ops:
  - {cpu: 0, op: collapse, addr: 0x200000}
  - {cpu: 0, op: collapse, addr: 0x400000}
"""
    results = [e.a["result"] for e in _events(_run(text), "op_end") if e.a["op"] >= 0]
    assert results == ["SCAN_PMD_NONE", "collapsed"]


@pytest.mark.parametrize("name, behaviour", [
    ("gupfast+collapse+zap+ipi.yaml", "walker-mid-walk-at-collapse"),
    ("gupfast+collapse+zap+xenflush.yaml", "walker-mid-walk-at-collapse"),
    ("gupfast+collapse+zap+invlpgb.yaml", "walker-mid-walk-at-collapse"),
    ("gupfast+khugepaged+zap+xenflush.yaml", "walker-mid-walk-at-collapse"),
    ("gupfast+ptewalk+split.yaml", "walker-saw-split-pmd"),
    ("gupfast+collapse+pinned.yaml", "collapse-refused-pinned"),
])
def test_thp_litmus_reach_their_race(name: str, behaviour: str):
    """The S verdicts of the THP litmus programs mean something only if the race
    happens: every built-in's run reaches it."""
    lit = corpus.load(ROOT / "corpus" / name)
    res = run_lockstep(lit.program, [registry.strategy(s) for s in registry.STRATEGIES],
                       registry.platform(lit.program.platform))
    for r in res.runs:
        assert r.verdict.behaviours.get(behaviour), (name, r.verdict.strategy)


def test_skip_sync_ipi_skips_only_where_the_collapse_flush_was_an_ipi():
    skip = registry.strategy(str(ROOT / "docs" / "examples" / "skip_sync_ipi.py"))
    for name, skipped in (("gupfast+collapse+zap+ipi.yaml", True), ("gupfast+collapse+zap+xenflush.yaml", False),
                          ("gupfast+collapse+zap+invlpgb.yaml", False)):
        lit = corpus.load(ROOT / "corpus" / name)
        run = run_program(lit.program, skip, registry.platform(lit.program.platform))
        notes = [e.a["text"] for e in _events(run, "note")]
        assert any("skipped" in t for t in notes) == skipped, name
        ipis = [e for e in _events(run, "ipi_send") if e.a["what"] == "tlb_remove_table_sync_one"]
        assert bool(ipis) != skipped, name


# -- generation and divergence -----------------------------------------------------------------

def test_generator_makes_thp_operations_only_where_enabled():
    thp_kinds = {"collapse", "khugepaged", "split"}
    for name, env in ENVIRONMENTS.items():
        kinds = set()
        for s in range(60):
            p = generate(RandomDraw(s), env.gen_config(48))
            kinds |= {op.kind for op in p.ops}
            assert p.env.thp == env.thp
        if env.thp:
            assert thp_kinds <= kinds, name
        else:
            assert not kinds & thp_kinds, name


def test_thp_pages_are_robust_only_where_the_last_op_decides():
    """With THP, a page another CPU's operation shares a 2 MiB region with is not
    compared, nor a page the last operation does not name (a fault may map the
    whole region or only its page)."""
    text = """
shootdown: 1
cpus: 2
env: {thp: true}
vmas: [{mm: 0, start: 0x200000, len: 0x200000}, {mm: 0, start: 0x400000, len: 0x200000}]
ops:
  - {cpu: 0, op: access, addr: 0x200000, write: true}
  - {cpu: 0, op: access, addr: 0x201000, write: true}
  - {cpu: 0, op: access, addr: 0x400000, write: true}
  - {cpu: 1, op: gup_fast, addr: 0x401000}
"""
    robust = robust_pages(corpus.parse(text).program)
    assert robust[(0, 0x201000)]        # named by the region's last operation
    assert not robust[(0, 0x200000)]    # not named by the region's last operation: left out
    assert not robust[(0, 0x400000)]    # CPU1's pin shares the region
