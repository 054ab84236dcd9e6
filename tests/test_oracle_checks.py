"""Every oracle check catches a deliberately broken configuration and stays
silent on a known-safe one.

Each case is a small litmus program with an explicit schedule, run once with
a planted bug (tests/mutants/oracle_*.py, or a historical mutant, or a fault
injection knob) and once with a correct configuration; the check must fire in
the first and nothing at all may fire in the second.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz import corpus
from fuzz.run import run_lockstep, run_program
from impls import registry

ROOT = Path(__file__).resolve().parent.parent
MUT = ROOT / "tests" / "mutants"

GUP_VS_MUNMAP_XEN = ROOT / "corpus" / "gupfast+munmap+xenflush.yaml"

TOUCHED_THEN_UNMAPPED = """
shootdown: 1
platform: native
cpus: 2
vmas: [{mm: 0, start: 0x200000, len: 0x200000}]
setup:
  - {cpu: 1, op: access, addr: 0x200000, write: true}
ops:
  - {cpu: 0, op: munmap, addr: 0x200000, len: 0x200000}
  - {cpu: 1, op: access, addr: 0x200000}
schedule:
  - {cpu: 0, until: op_end}
  - {cpu: 1, until: op_end}
"""

POPULATED_THEN_UNMAPPED = """
shootdown: 1
platform: native
cpus: 2
vmas: [{mm: 0, start: 0x200000, len: 0x200000}]
setup:
  - {cpu: 0, op: populate, addr: 0x200000, len: 0x2000}
ops:
  - {cpu: 0, op: munmap, addr: 0x200000, len: 0x200000}
"""

LAZY_CPU_CACHES_TABLE = ROOT / "corpus" / "lazytlb+munmap+tablefree.yaml"

# GUP-fast reads the PTE; on Xen PV the munmap's hypercall flush does not wait for
# the IRQ-off walker, so the data page is freed at once, and the populate of
# another range re-purposes the frame before the walker's speculative reference.
# The page GUP-fast then holds was never mapped at its address during the walk.
GUP_VS_ZAP_REUSED = """
shootdown: 1
platform: xen-pv
cpus: 2
vmas: [{mm: 0, start: 0x200000, len: 0x200000}, {mm: 0, start: 0x600000, len: 0x200000}]
setup:
  - {cpu: 0, op: populate, addr: 0x200000, len: 0x1000}
  - {cpu: 0, op: populate, addr: 0x600000, len: 0x1000}
ops:
  - {cpu: 1, op: gup_fast, addr: 0x200000}
  - {cpu: 0, op: munmap, addr: 0x200000, len: 0x200000}
  - {cpu: 0, op: populate, addr: 0x601000, len: 0x1000}
schedule:
  - {cpu: 1, until: "gup_fast:pte_read"}
  - {cpu: 0, until: op_end}
  - {cpu: 0, until: op_end}
  - {cpu: 1, until: op_end}
"""

FALLBACK_ON_MUNMAP = """
shootdown: 1
platform: native
cpus: 2
vmas: [{mm: 0, start: 0x200000, len: 0x200000}]
setup:
  - {cpu: 0, op: populate, addr: 0x200000, len: 0x1000}
ops:
  - {cpu: 0, op: munmap, addr: 0x200000, len: 0x200000}
choices:
  alloc_fails:mmu_table_batch: [true]
"""

FORCED_FLUSH_UNDER_PTL = """
shootdown: 1
platform: native
cpus: 2
vmas: [{mm: 0, start: 0x200000, len: 0x200000}]
setup:
  - {cpu: 0, op: populate, addr: 0x200000, len: 0x8000}
ops:
  - {cpu: 0, op: munmap, addr: 0x200000, len: 0x200000}
choices:
  alloc_fails:mmu_gather_batch: [true]
"""


def _program(src):
    if isinstance(src, Path):
        return corpus.load(src).program
    return corpus.parse(src, "<test>").program


def _checks(src, strategy: str, platform: str | None = None, **env):
    prog = _program(src)
    if env:
        from dataclasses import replace
        prog = replace(prog, env=replace(prog.env, **env))
    r = run_program(prog, registry.strategy(strategy),
                    registry.platform(platform or prog.platform))
    return r.verdict.checks(), r.verdict


CASES = [
    # check, program, broken (strategy, platform, env), safe (strategy, platform, env)
    ("stale-tlb", TOUCHED_THEN_UNMAPPED, (str(MUT / "flush_mmu_free_before_flush.py"), None, {}),
     ("direct", None, {})),
    ("stale-psc", LAZY_CPU_CACHES_TABLE, (str(MUT / "no_freed_tables.py"), None, {}),
     ("direct", None, {})),
    ("table-uaf", GUP_VS_MUNMAP_XEN, (str(MUT / "rcu_free_without_grace_period.py"), None, {}),
     ("semi-rcu", None, {})),
    ("leaked-gup-pin", GUP_VS_ZAP_REUSED, (str(MUT / "gup_fast_no_recheck.py"), None, {}),
     ("full-rcu", None, {})),
    ("leaked-xen-pin", ROOT / "corpus" / "xen+exit_mmap+deferred-cr3.yaml",
     ("direct", str(MUT / "xen_stale_cr3.py"), {}), ("direct", "xen-pv", {})),
    ("ordering", POPULATED_THEN_UNMAPPED, (str(MUT / "flush_mmu_free_before_flush.py"), None, {}),
     ("direct", None, {})),
    ("accounting", POPULATED_THEN_UNMAPPED, (str(MUT / "oracle_leak_tables.py"), None, {}),
     ("direct", None, {})),
    ("stale-secondary", ROOT / "corpus" / "kvm+iommu+munmap+notifiers.yaml",
     ("full-rcu", None, {"skip_mmu_notifiers": True}), ("full-rcu", None, {})),
    ("kernel-bug", FALLBACK_ON_MUNMAP, (str(MUT / "oracle_ipi_irqs_off.py"), None, {}),
     ("semi-rcu", None, {})),
    ("bad-walk", ROOT / "corpus" / "gupfast+ptewalk+split.yaml",
     (str(MUT / "gup_fast_no_pmd_leaf_check.py"), None, {}), ("full-rcu", None, {})),
    ("liveness", FORCED_FLUSH_UNDER_PTL, (str(MUT / "oracle_sleep_under_ptl.py"), None, {}),
     ("direct", None, {})),
]


@pytest.mark.parametrize("check, src, broken, safe", CASES, ids=[c[0] for c in CASES])
def test_check_fires_on_planted_bug(check, src, broken, safe):
    strategy, platform, env = broken
    checks, verdict = _checks(src, strategy, platform, **env)
    assert check in checks, f"{check} did not fire; got {checks}"
    v = next(v for v in verdict.violations if v.check == check)
    assert v.witness, "a violation must carry the events that prove it"
    assert v.summary and v.explanation


@pytest.mark.parametrize("check, src, broken, safe", CASES, ids=[c[0] for c in CASES])
def test_check_silent_on_safe_configuration(check, src, broken, safe):
    strategy, platform, env = safe
    checks, verdict = _checks(src, strategy, platform, **env)
    assert checks == [], [v.summary for v in verdict.violations]
    assert verdict.outcome == "quiescent"


def test_ordering_fires_without_any_stale_entry():
    """ordering is schedule-independent: no CPU cached anything, yet freeing
    before the flush is reported."""
    checks, _ = _checks(POPULATED_THEN_UNMAPPED, str(MUT / "flush_mmu_free_before_flush.py"))
    assert checks == ["ordering"]


def test_gup_recheck_is_what_prevents_the_leak():
    _, v = _checks(GUP_VS_ZAP_REUSED, "full-rcu")
    assert v.behaviours.get("gup-recheck-failed") == 1


# GUP-fast reads the PTE on bare metal; the zap clears it, and the flush IPI
# waits for the IRQ-off walker, so the page is still allocated (and was mapped
# at the instant the PTE was read) when the speculative reference is taken.
GUP_VS_ZAP_NATIVE = """
shootdown: 1
platform: native
cpus: 2
vmas: [{mm: 0, start: 0x200000, len: 0x200000}]
setup:
  - {cpu: 0, op: populate, addr: 0x200000, len: 0x1000}
ops:
  - {cpu: 1, op: gup_fast, addr: 0x200000}
  - {cpu: 0, op: munmap, addr: 0x200000, len: 0x200000}
schedule:
  - {cpu: 1, until: "gup_fast:pte_read"}
  - {cpu: 0, until: "zap_pte_range:cleared"}
  - {cpu: 1, until: op_end}
"""


def test_gup_without_recheck_is_safe_where_the_ipi_holds_the_free_off():
    """I6 as GUP-fast's contract: x86 before v4.13 had no re-check and was safe
    on bare metal; the page returned was mapped at the address when the walker
    read the PTE, an instant of the walk."""
    prog = _program(GUP_VS_ZAP_NATIVE)
    r = run_program(prog, registry.strategy(str(MUT / "gup_fast_no_recheck.py")), registry.platform("native"))
    assert r.verdict.checks() == [], [x.summary for x in r.verdict.violations]
    kinds = [(e.kind, e.a.get("why", "")) for e in r.history.events]
    # the race happened: the PTE was cleared before the reference was taken,
    # and the walker returned the page
    grab = kinds.index(("gup_grab", ""))
    assert ("entry_write", "ptep_get_and_clear_full (zap)") in kinds[:grab]
    assert ("gup_return", "") in kinds[grab:]


def test_gup_reference_on_a_free_page_is_a_leak():
    """A walker that takes a plain reference (not add-unless-zero) on a page
    that is already free breaks I6 whatever it returns."""
    src = GUP_VS_ZAP_REUSED.replace("  - {cpu: 0, op: populate, addr: 0x601000, len: 0x1000}\n", "")
    src = src.replace("  - {cpu: 0, until: op_end}\n  - {cpu: 0, until: op_end}\n",
                      "  - {cpu: 0, until: op_end}\n")
    checks, v = _checks(src, str(MUT / "oracle_gup_get_page.py"))
    assert "leaked-gup-pin" in checks
    assert any("a free page" in x.summary for x in v.violations if x.check == "leaked-gup-pin")


def test_divergence_names_both_strategies_and_the_observable():
    prog = _program(POPULATED_THEN_UNMAPPED)
    broken = registry.strategy(str(MUT / "oracle_drop_pages.py"))
    res = run_lockstep(prog, [registry.strategy("direct"), broken], registry.platform("native"))
    assert res.divergences, "a strategy that leaks every unmapped page must diverge"
    d = res.divergences[0]
    assert d.check == "divergence"
    assert d.extra["strategies"] == ("direct", broken.name)
    assert d.extra["observable"] == "leaked pages"
    assert "direct" in d.summary and broken.name in d.summary


@pytest.mark.parametrize("path", corpus.litmus_files(ROOT / "corpus"), ids=lambda p: p.name)
def test_builtins_never_diverge_on_the_corpus(path):
    lit = corpus.load(path)
    strategies = [registry.strategy(n) for n in registry.STRATEGIES]
    res = run_lockstep(lit.program, strategies, registry.platform(lit.program.platform))
    assert res.divergences == []


def test_builtins_never_diverge_on_generated_programs():
    from fuzz.engine import make_choices
    from fuzz.envs import ENVIRONMENTS
    from fuzz.generate import RandomDraw, generate
    strategies = [registry.strategy(n) for n in registry.STRATEGIES]
    for name in ("native", "xen-pv", "broadcast", "native+pt-reclaim", "native+secondary-mmu"):
        env = ENVIRONMENTS[name]
        for seed in range(25):
            prog = generate(RandomDraw(seed), env.gen_config(32))
            res = run_lockstep(prog, strategies, registry.platform(env.platform),
                               lambda prog=prog, seed=seed, env=env: make_choices("random", seed, env, prog, 160))
            assert res.divergences == [], (name, seed, [d.summary for d in res.divergences])


def test_skipped_switch_makes_pages_racy():
    """A switch to an mm that may already have exited is skipped at run time, so
    the CPU's next operations may act on the mm it was running: such pages are
    not schedule-robust (a false divergence found by `shootdown explore`)."""
    from oracle.divergence import robust_pages
    prog = _program("""
shootdown: 1
cpus: 3
mms: 2
start: [1, 0, 0]
vmas: [{mm: 0, start: 0x200000, len: 0x200000}, {mm: 1, start: 0x200000, len: 0x200000}]
ops:
  - {cpu: 0, op: exit}
  - {cpu: 2, op: switch, mm: 1}
  - {cpu: 2, op: madvise, addr: 0x200000, len: 0x200000}
  - {cpu: 1, op: access, addr: 0x202000, write: true}
""")
    robust = robust_pages(prog)
    assert robust[(0, 0x202000)] is False   # CPU2's madvise may hit mm0 if its switch is skipped
    assert (1, 0x202000) not in robust or robust[(1, 0x202000)] is False  # mm1 exits


def test_kvm_access_makes_pages_racy():
    """kvm_access faults the page in on an spte miss (kvm_fault -> slow GUP), so
    it mutates the mapping like a user access: a page it may touch from another
    CPU than an mmap/munmap of the same page is not schedule-robust."""
    from oracle.divergence import robust_pages
    prog = _program("""
shootdown: 1
cpus: 2
start: [0, 0]
env: {kvm: true}
vmas: [{mm: 0, start: 0x200000, len: 0x200000}]
ops:
  - {cpu: 0, op: kvm_access, addr: 0x400000}
  - {cpu: 1, op: mmap, addr: 0x400000, len: 0x200000}
""")
    assert robust_pages(prog)[(0, 0x400000)] is False


def test_no_false_divergence_kvm_access_vs_mmap():
    """Regression: `make fuzz` (seed 0, native+secondary-mmu, iteration 1094)
    reported 'direct and semi-rcu disagree on mm0 0x400000 mapped': CPU0's
    kvm_access faulted the page in before or after CPU2's mmap of its VMA,
    depending on the schedule, and the oracle took the page for robust."""
    from fuzz.engine import fuzz_iter
    from fuzz.envs import ENVIRONMENTS
    from fuzz.session import SWARM
    env = ENVIRONMENTS["native+secondary-mmu"]
    strategies = [registry.strategy(n) for n in registry.STRATEGIES]
    found = list(fuzz_iter(strategies, registry.platform(env.platform), env, "random", seed=0, length=128,
                           start=1094, stop=lambda i: i > 1094, swarm=SWARM))
    assert [f.signature for f in found] == []


# CPU1 switches from mm1 to mm0 and munmaps 0x200000 while CPU2 exits mm0.  If
# the exit comes first, the switch is skipped (mm0 is dying) and the munmap
# hits mm1; otherwise it hits mm0.  Both are correct executions.
SWITCH_TO_DYING_MM = """
shootdown: 1
platform: native
cpus: 3
mms: 2
start: [0, 1, 0]
vmas:
  - {mm: 0, start: 0x200000, len: 0x200000}
  - {mm: 1, start: 0x200000, len: 0x200000}
setup:
  - {cpu: 1, op: populate, addr: 0x200000, len: 0x1000}
ops:
  - {cpu: 1, op: switch, mm: 0}
  - {cpu: 1, op: munmap, addr: 0x200000, len: 0x200000}
  - {cpu: 2, op: exit}
"""


def test_divergence_ignores_pages_whose_mm_depends_on_the_schedule():
    """The cause of the divergences that did not replay (issue: no false
    alarms): an operation after a switch to an mm that may be exiting acts on
    one mm or the other depending on the schedule, so the pages it covers are
    not schedule-robust in either."""
    from dataclasses import replace

    from impls.machine.choices import SchedEntry, Schedule
    from oracle.divergence import compare, robust_pages

    prog = _program(SWITCH_TO_DYING_MM)
    assert robust_pages(prog).get((1, 0x200000)) is False
    switch_first = Schedule(sched=(SchedEntry(1, until="op_end"), SchedEntry(1, until="op_end")))
    exit_first = Schedule(sched=(SchedEntry(2, until="exit:exit_mm"),))
    hs = [run_program(replace(prog, schedule=s), registry.strategy("direct"), registry.platform("native")).history
          for s in (switch_first, exit_first)]
    finals = [next(e for e in h.events if e.kind == "final") for h in hs]
    mapped = [{va for va, _ in f.a["mms"][1]["mapping"]} for f in finals]
    assert (0x200000 in mapped[0]) != (0x200000 in mapped[1]), "the two schedules must differ"
    assert compare(hs, prog) == []


# CPU0 moves [0x200000, 0x202000) away while CPU1 unmaps the page at 0x201000.  If
# the munmap comes first, one VMA no longer covers the old range and do_mremap()
# fails with EFAULT: 0x200000 stays mapped; otherwise it has moved: unmapped.  Both
# are correct executions, yet only CPU0 names 0x200000 (the soak's seed 515151
# found it on native+file: "mm1 0x8000000000 mapped", with a move's destination
# splitting the VMA of another move's source).
MREMAP_VS_MUNMAP = """
shootdown: 1
platform: native
cpus: 2
vmas:
  - {mm: 0, start: 0x200000, len: 0x200000}
setup:
  - {cpu: 0, op: populate, addr: 0x200000, len: 0x2000}
ops:
  - {cpu: 0, op: mremap, addr: 0x200000, len: 0x2000, new_addr: 0x40000000}
  - {cpu: 1, op: munmap, addr: 0x201000, len: 0x1000}
"""


def test_divergence_knows_an_mremap_moves_all_or_nothing():
    """An mremap's old range ends unmapped only if the move succeeds, which
    depends on the VMA layout of the whole range when it runs: a page only the
    moving CPU names is still racy when another CPU may change that layout."""
    from dataclasses import replace

    from impls.machine.choices import SchedEntry, Schedule
    from oracle.divergence import compare, robust_pages

    prog = _program(MREMAP_VS_MUNMAP)
    assert robust_pages(prog).get((0, 0x200000)) is False
    move_first = Schedule(sched=(SchedEntry(0, until="op_end"), SchedEntry(1, until="op_end")))
    munmap_first = Schedule(sched=(SchedEntry(1, until="op_end"), SchedEntry(0, until="op_end")))
    hs = [run_program(replace(prog, schedule=s), registry.strategy("direct"), registry.platform("native")).history
          for s in (move_first, munmap_first)]
    finals = [next(e for e in h.events if e.kind == "final") for h in hs]
    mapped = [{va for va, _ in f.a["mms"][0]["mapping"]} for f in finals]
    assert (0x200000 in mapped[0]) != (0x200000 in mapped[1]), "the two schedules must differ"
    assert compare(hs, prog) == []
    # without another CPU's munmap in the range, the move is certain: still compared
    alone = _program(MREMAP_VS_MUNMAP.replace("addr: 0x201000, len: 0x1000", "addr: 0x300000, len: 0x1000"))
    assert robust_pages(alone).get((0, 0x200000)) is True


# CPU0 maps [0x40000000, 0x40002000) and touches its first page; CPU1 maps the second
# page alone.  MAP_FIXED_NOREPLACE: whichever comes second fails with EEXIST, so
# 0x40000000, which only CPU0 names, is mapped at the end or not (CPU0's access
# then takes SIGSEGV) depending on the schedule (seed 515155 of the soak).
MMAP_VS_MMAP = """
shootdown: 1
platform: native
cpus: 2
vmas:
  - {mm: 0, start: 0x200000, len: 0x200000}
ops:
  - {cpu: 0, op: mmap, addr: 0x40000000, len: 0x2000}
  - {cpu: 0, op: access, addr: 0x40000000, write: true}
  - {cpu: 1, op: mmap, addr: 0x40001000, len: 0x1000}
"""


def test_divergence_knows_an_mmap_maps_all_or_nothing():
    from dataclasses import replace

    from impls.machine.choices import SchedEntry, Schedule
    from oracle.divergence import compare, robust_pages

    prog = _program(MMAP_VS_MMAP)
    assert robust_pages(prog).get((0, 0x40000000)) is False
    cpu0_first = Schedule(sched=(SchedEntry(0, until="op_end"), SchedEntry(0, until="op_end"),
                                 SchedEntry(1, until="op_end")))
    cpu1_first = Schedule(sched=(SchedEntry(1, until="op_end"), SchedEntry(0, until="op_end"),
                                 SchedEntry(0, until="op_end")))
    hs = [run_program(replace(prog, schedule=s), registry.strategy("direct"), registry.platform("native")).history
          for s in (cpu0_first, cpu1_first)]
    finals = [next(e for e in h.events if e.kind == "final") for h in hs]
    mapped = [{va for va, _ in f.a["mms"][0]["mapping"]} for f in finals]
    assert (0x40000000 in mapped[0]) != (0x40000000 in mapped[1]), "the two schedules must differ"
    assert compare(hs, prog) == []
    alone = _program(MMAP_VS_MMAP.replace("addr: 0x40001000, len: 0x1000", "addr: 0x40100000, len: 0x1000"))
    assert robust_pages(alone).get((0, 0x40000000)) is True


# GUP-fast has read the PTE when the collapse clears the PMD; nothing waits for it
# (the planted bug: no sync IPI, no PMD re-check), so it pins the page after the
# collapse's refcount check, and the collapse copies the pinned page away.  With the
# correct strategy the sync IPI waits for the walker, whose PMD re-check fails.
COLLAPSE_AFTER_PTE_READ = """
shootdown: 1
platform: xen-pv
cpus: 2
env: {thp: true}
vmas: [{mm: 0, start: 0x200000, len: 0x200000}]
setup:
  - {cpu: 0, op: access, addr: 0x200000, write: true}
  - {cpu: 0, op: split, addr: 0x200000}
ops:
  - {cpu: 1, op: gup_fast, addr: 0x201000}
  - {cpu: 0, op: collapse, addr: 0x200000}
schedule:
  - {cpu: 1, until: "gup_fast:pte_read"}
  - {cpu: 0, until: "collapse:isolated"}
  - {cpu: 1, until: "gup_fast:pinned"}
  - {cpu: 0, until: op_end}
  - {cpu: 1, until: op_end}
"""


def test_collapse_of_a_pinned_page_is_a_lost_pin():
    """LEAKED-GUP-PIN's collapse clause: a GUP-fast reference taken after the
    PMD was read must make the collapse fail (or be put back), never be
    silently lost."""
    program = corpus.parse(COLLAPSE_AFTER_PTE_READ).program
    bad = run_program(program, registry.strategy(str(MUT / "oracle_collapse_pin_lost.py")),
                      registry.platform("xen-pv"))
    lost = [v for v in bad.verdict.violations if v.check == "leaked-gup-pin"]
    assert lost and "copied pfn" in lost[0].summary, bad.verdict.violations
    assert any(e.kind == "collapse_copy" for e in lost[0].witness)
    for s in ("semi-rcu", "full-rcu"):
        good = run_program(program, registry.strategy(s), registry.platform("xen-pv"))
        assert good.verdict.ok, (s, good.verdict.violations)
        assert good.verdict.behaviours.get("walker-mid-walk-at-collapse"), s
