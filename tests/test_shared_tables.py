"""Tables with several owners, in the oracle: the shadow knows every link of a
table, and the ordering check owes an invalidation to the CPUs of *every* mm
that could have cached a table or a page before its free (the union over the
sharers), each at the address the entry had in that mm.

These are oracle unit tests on small hand-built histories; the machine paths
that produce shared and moved tables (hugetlb PMD sharing, mremap, page-cache
pages mapped in several mms) have their own tests and litmus files.
"""

from __future__ import annotations

from impls.machine.history import HW, History
from impls.machine.page_alloc import DATA, TABLE
from impls.machine.pgtable import mk_pte, mk_table
from oracle import check_history
from oracle.shadow import Shadow


def _shared_pmd_history(flush_cpu0: bool) -> History:
    """mm0 and mm1 link one PMD table (pfn 5) from their PUD tables, at 1 GiB
    in mm0 and at 2 GiB in mm1.  CPU0 runs mm0, CPU1 runs mm1.  mm0 unshares
    (clears its PUD entry); mm1 later unhooks and frees the table, flushing
    only its own CPU.  Unless CPU0 invalidated after mm0's unshare, the free
    is early: CPU0's paging-structure cache may still point at the table."""
    h = History("s", "native")
    h.emit(HW, "boot", cpus=2, mms=2, platform="native", strategy="s", pt_reclaim="off", kvm=False,
           iommu=False)
    for pfn, level, mm in ((1, 4, 0), (2, 4, 1), (3, 3, 0), (4, 3, 1), (5, 2, 0)):
        h.emit(HW, "alloc", pfn=pfn, gen=1, state=TABLE, level=level, mm=mm, va=0)
    h.emit(0, "entry_write", pfn=1, gen=1, idx=0, old=0, new=mk_table(3), why="populate")
    h.emit(1, "entry_write", pfn=2, gen=1, idx=0, old=0, new=mk_table(4), why="populate")
    h.emit(0, "entry_write", pfn=3, gen=1, idx=1, old=0, new=mk_table(5), why="populate")
    h.emit(1, "entry_write", pfn=4, gen=1, idx=2, old=0, new=mk_table(5), why="huge_pmd_share")
    h.emit(0, "cr3_load", pfn=1, gen=1, mm=0)
    h.emit(1, "cr3_load", pfn=2, gen=1, mm=1)
    h.emit(0, "switch_mm", mm=0, lazy=False, why="boot", flush=True)
    h.emit(1, "switch_mm", mm=1, lazy=False, why="boot", flush=True)
    h.emit(0, "entry_write", pfn=3, gen=1, idx=1, old=mk_table(5), new=0, why="pud_clear (huge_pmd_unshare)")
    if flush_cpu0:
        h.emit(0, "tlb_inv", start=1 << 30, end=2 << 30, stride=21, psc=True, why="flush 1")
    h.emit(1, "entry_write", pfn=4, gen=1, idx=2, old=mk_table(5), new=0, why="pud_clear (free_pmd_range)")
    h.emit(1, "tlb_inv", start=2 << 30, end=3 << 30, stride=21, psc=True, why="flush 2")
    h.emit(1, "free", pfn=5, gen=1, state=TABLE, level=2, via="__tlb_remove_table", pinned=False,
           xen_pinned=False, ro=False, live=0)
    return h


def test_placements_are_the_union_over_the_links():
    sh = Shadow()
    h = _shared_pmd_history(True)
    for ev in h.events[:14]:  # up to both links
        sh.apply(ev)
    assert sorted(sh.placements(5)) == [(0, 1 << 30), (1, 2 << 30)]
    assert sh.mms_of(5) == {0, 1}
    for ev in h.events[14:15]:  # mm0 unshares
        sh.apply(ev)
    assert sh.placements(5) == ((1, 2 << 30),)


def test_a_free_owes_the_cpus_of_every_sharer():
    v = check_history(_shared_pmd_history(flush_cpu0=False))
    assert v.checks() == ["ordering"], [x.summary for x in v.violations]
    x = v.violations[0]
    assert x.extra["cpus"] == (0,)
    assert "mm0 va 0x40000000" in x.summary and "mm1 va 0x80000000" not in x.summary
    # the witness names both unhooks: mm0's unshare and mm1's free path
    whys = [e.a.get("why") for e in x.witness if e.kind == "entry_write"]
    assert whys == ["pud_clear (huge_pmd_unshare)"]


def test_the_union_is_paid_when_each_sharer_flushed():
    v = check_history(_shared_pmd_history(flush_cpu0=True))
    assert v.checks() == []


def test_a_page_mapped_in_two_mms_owes_both():
    """A page-cache page mapped by mm0 (CPU0) and mm1 (CPU1): each zap adds
    its CPUs; a free after only mm1's flush is early for CPU0."""
    h = History("s", "native")
    h.emit(HW, "boot", cpus=2, mms=2, platform="native", strategy="s", pt_reclaim="off", kvm=False,
           iommu=False)
    for pfn, level, mm in ((1, 4, 0), (2, 4, 1), (3, 1, 0), (4, 1, 1)):
        h.emit(HW, "alloc", pfn=pfn, gen=1, state=TABLE, level=level, mm=mm, va=0x200000)
    h.emit(HW, "alloc", pfn=9, gen=1, state=DATA, level=0, mm=0, va=0)
    h.emit(0, "cr3_load", pfn=1, gen=1, mm=0)
    h.emit(1, "cr3_load", pfn=2, gen=1, mm=1)
    h.emit(0, "entry_write", pfn=3, gen=1, idx=0, old=0, new=mk_pte(9, True), why="set_pte_at (fault)")
    h.emit(1, "entry_write", pfn=4, gen=1, idx=0, old=0, new=mk_pte(9, True), why="set_pte_at (fault)")
    h.emit(0, "entry_write", pfn=3, gen=1, idx=0, old=mk_pte(9, True), new=0, why="zap")
    h.emit(1, "entry_write", pfn=4, gen=1, idx=0, old=mk_pte(9, True), new=0, why="zap")
    h.emit(1, "tlb_inv_all", why="flush")
    h.emit(1, "free", pfn=9, gen=1, state=DATA, level=0, via="truncate", pinned=False, xen_pinned=False,
           ro=False, live=0)
    v = check_history(h)
    assert "ordering" in v.checks()
    assert next(x for x in v.violations if x.check == "ordering").extra["cpus"] == (0,)


# -- the gather state of hugetlb unsharing (8ce720d5bd91) -----------------------------

def _drive(m, gen):
    """Run a kernel generator on CPU0 to completion, delivering the IPIs it
    waits for on the other CPUs (they are idle with IRQs on)."""
    from impls.machine.smp import deliver_ipi
    for _ in range(1000):
        try:
            next(gen)
        except StopIteration:
            return
        for c in m.cpus[1:]:
            while c.ipi:
                deliver_ipi(c)
    raise AssertionError("did not finish")


def _gather_on(strategy: str):
    from impls import registry
    from impls.machine.machine import Machine
    from impls.machine.mmu_gather import tlb_gather_mmu
    from impls.machine.program import Program
    m = Machine(Program(cpus=2, start=(0, 0)), registry.strategy(strategy), registry.platform("native"))
    m.boot()
    table = m.frames.alloc(0, TABLE, level=2, mm=0, va=1 << 30)
    table.share_count = 1
    return m, tlb_gather_mmu(m.cpus[0], m.mms[0]), table


def test_unsharing_sets_the_gather_flags_and_the_flush_syncs_gup_fast():
    from impls.machine.mmu_gather import tlb_flush_unshared_tables, tlb_unshare_pmd_ptdesc
    for strategy, sync_ipis in (("direct", 0), ("semi-rcu", 1), ("full-rcu", 1)):
        m, tlb, table = _gather_on(strategy)
        tlb_unshare_pmd_ptdesc(tlb, table, (1 << 30) + 0x1000)
        assert table.share_count == 0
        assert tlb.unshared_tables and tlb.fully_unshared_tables and tlb.cleared_pmds
        assert (tlb.start, tlb.end) == (1 << 30, 2 << 30)
        _drive(m, tlb_flush_unshared_tables(tlb))
        assert not tlb.unshared_tables and not tlb.fully_unshared_tables
        kinds = [(e.kind, e.a.get("what")) for e in m.h.events]
        assert ("flush_begin", None) in kinds, strategy
        # the sync IPI: the RCU strategies' (their GUP-fast protection is not
        # the flush), none for direct free (its flush was the IPI)
        assert kinds.count(("ipi_send", "tlb_remove_table_sync_one")) == sync_ipis, strategy


def test_a_partial_unshare_flushes_without_the_sync():
    from impls.machine.mmu_gather import tlb_flush_unshared_tables, tlb_unshare_pmd_ptdesc
    m, tlb, table = _gather_on("semi-rcu")
    table.share_count = 2
    tlb_unshare_pmd_ptdesc(tlb, table, 1 << 30)
    assert tlb.unshared_tables and not tlb.fully_unshared_tables
    _drive(m, tlb_flush_unshared_tables(tlb))
    assert not any(e.kind == "ipi_send" and e.a["what"] == "tlb_remove_table_sync_one" for e in m.h.events)


def test_finishing_a_gather_with_an_unsynced_unshare_is_a_kernel_bug():
    from impls.machine.mmu_gather import tlb_finish_mmu, tlb_unshare_pmd_ptdesc
    m, tlb, table = _gather_on("full-rcu")
    tlb_unshare_pmd_ptdesc(tlb, table, 1 << 30)
    _drive(m, tlb_finish_mmu(tlb))
    bugs = [e.a["what"] for e in m.h.events if e.kind == "bug"]
    assert bugs and "fully_unshared_tables" in bugs[0]


# -- file mappings, the page cache and the rmap zap --------------------------------------

def _run(src: str, strategy: str = "direct", platform: str | None = None):
    from fuzz import corpus
    from fuzz.run import run_program
    from impls import registry
    p = corpus.parse(src, "<test>").program
    return run_program(p, registry.strategy(strategy), registry.platform(platform or p.platform))


def _litmus(name: str) -> str:
    from pathlib import Path
    return (Path(__file__).resolve().parent.parent / "corpus" / name).read_text()


def test_truncate_flushes_every_mm_mapping_the_page_before_freeing_it():
    r = _run(_litmus("truncate+access+rmapzap.yaml"))
    ev = r.history.events
    assert r.verdict.checks() == []
    assert r.verdict.behaviours.get("rmap-zap-foreign-mm") == 2
    zaps = [e for e in ev if e.kind == "rmap_zap"]
    assert [(e.a["mm"], e.a["running"]) for e in zaps] == [(0, 2), (1, 2)]
    # each zap's flush IPIs the CPU running that mm (CPU2 runs neither)
    flushes = [e for e in ev if e.kind == "flush_begin"]
    assert [(e.a["mm"], e.a["mask"]) for e in flushes[:2]] == [(0, (0,)), (1, (1,))]
    free = next(e for e in ev if e.kind == "free" and e.a["via"].startswith("shmem_undo_range"))
    recv = [e.seq for e in ev if e.kind == "ipi_recv"]
    assert len(recv) >= 2 and max(recv[:2]) < free.seq
    # the accesses afterwards fault a new page in, in the hole (the second finds it cached)
    assert sum(1 for e in ev if e.kind == "pagecache_add") == 2


def test_the_page_cache_keeps_a_page_alive_past_munmap():
    src = """
shootdown: 1
cpus: 1
files: [shmem]
vmas: [{mm: 0, start: 0x600000, len: 0x200000, file: 0}]
setup:
  - {cpu: 0, op: access, addr: 0x600000, write: true}
ops:
  - {cpu: 0, op: munmap, addr: 0x600000, len: 0x200000}
"""
    r = _run(src)
    assert r.verdict.checks() == []
    final = r.history.events[-1]
    cached = [f for f in final.a["frames"] if f[9]]
    assert len(cached) == 1 and cached[0][4] == 1 and cached[0][5] == 0  # ref: the cache's only
    assert any(e.kind == "vma_unlink_file" for e in r.history.events)


def test_a_fault_in_a_hole_being_punched_waits_then_refaults():
    src = """
shootdown: 1
cpus: 2
mms: 2
start: [0, 1]
files: [shmem]
vmas:
  - {mm: 0, start: 0x600000, len: 0x200000, file: 0}
setup:
  - {cpu: 0, op: access, addr: 0x600000, write: true}
  - {cpu: 0, op: madvise, addr: 0x600000, len: 0x1000}
ops:
  - {cpu: 1, op: truncate, file: 0, offset: 0, len: 0x1000}
  - {cpu: 0, op: access, addr: 0x600000}
schedule:
  - {cpu: 1, until: "truncate:punching"}
  - {cpu: 0, steps: 30}
  - {cpu: 1, until: op_end}
"""
    r = _run(src, "full-rcu")
    kinds = [e.kind for e in r.history.events]
    assert r.verdict.checks() == []
    assert "fault_waits_for_punch" in kinds
    assert kinds.index("punch_end") < len(kinds) - kinds[::-1].index("pagecache_add")


def test_a_page_refaulted_during_a_punch_is_unmapped_again():
    """The fault found the page in the cache and locked it before the punch
    began; it maps the page after unmap_mapping_range() passed its PTE, so
    shmem_undo_range() finds the folio mapped once it gets the lock, and
    truncate_cleanup_folio() zaps it again (unmap_mapping_folio())."""
    src = """
shootdown: 1
cpus: 2
mms: 2
start: [0, 1]
files: [shmem]
vmas:
  - {mm: 0, start: 0x600000, len: 0x200000, file: 0}
setup:
  - {cpu: 0, op: access, addr: 0x600000, write: true}
  - {cpu: 0, op: madvise, addr: 0x600000, len: 0x1000}
ops:
  - {cpu: 0, op: access, addr: 0x600000}
  - {cpu: 1, op: truncate, file: 0, offset: 0, len: 0x1000}
schedule:
  - {cpu: 0, until: "fault:pmd_read"}
  - {cpu: 1, until: folio_lock}
  - {cpu: 0, until: op_end}
  - {cpu: 1, until: op_end}
"""
    for strategy in ("direct", "semi-rcu", "full-rcu"):
        r = _run(src, strategy)
        assert r.verdict.checks() == [], [v.summary for v in r.verdict.violations]
        assert r.verdict.behaviours.get("truncate-unmapped-refaulted-page") == 1
        final = r.history.events[-1]
        assert final.a["mms"][0]["mapping"] == ()  # unmapped again, and out of the cache
        assert not any(f[9] for f in final.a["frames"])


# -- VM_PFNMAP ------------------------------------------------------------------------------

PFN = """
shootdown: 1
cpus: 2
files: [device]
vmas: [{mm: 0, start: 0xc0000000, len: 0x200000, file: 0}]
setup:
  - {cpu: 0, op: access, addr: 0xc0000000, write: true}
ops:
  - {cpu: 1, op: gup_fast, addr: 0xc0000000}
"""


def test_a_pfnmap_frame_has_no_refcount_rss_or_gup():
    r = _run(PFN)
    assert r.verdict.checks() == []
    ev = r.history.events
    pte = next(e for e in ev if e.kind == "entry_write" and e.a["why"] == "set_pte_at (insert_pfn)")
    from impls.machine.pgtable import pte_special
    assert pte_special(pte.a["new"])
    results = [e.a["result"] for e in ev if e.kind == "op_end" and e.a["op"] >= 0]
    assert results == ["fallback to slow GUP"]  # gup_fast_pte_range(): pte_special() -> no
    final = ev[-1].a
    assert final["mms"][0]["rss"] == 0 and len(final["mms"][0]["mapping"]) == 1
    from impls.machine.page_alloc import IOMEM
    assert [f[4] for f in final["frames"] if f[2] == IOMEM] == [1]  # the driver's, not the PTE's


def test_revoke_flushes_before_the_frames_go():
    r = _run(_litmus("revoke+access+pfnmap.yaml"))
    assert r.verdict.checks() == []
    ev = r.history.events
    recv = next(e for e in ev if e.kind == "ipi_recv" and e.cpu == 1 and e.a["src"] == 2)
    free = next(e for e in ev if e.kind == "free" and e.a["via"] == "device revoked")
    assert recv.seq < free.seq
    assert r.verdict.behaviours.get("rmap-zap-foreign-mm") == 1
