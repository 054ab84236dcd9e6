"""Behaviour events: the "sometimes" facts that show a run got somewhere
interesting.  They guard against vacuous green (a fuzzer that never put a
walker inside a table when it was unhooked proves nothing) and serve the
coverage-guided engines as coverage."""

from __future__ import annotations

from collections.abc import Callable

from impls.machine.history import Event

from .shadow import Shadow

BEHAVIOURS: dict[str, str] = {
    "walker-mid-walk-at-unhook": "a lockless walker had a table mapped when the table was unhooked",
    "table-freed-under-walker": "a table was freed while a lockless walker had it mapped",
    "table-batch-alloc-failed": "tlb_remove_table() took the single-table fallback",
    "gather-batch-full": "the mmu_gather page batch filled up: a forced flush",
    "lazy-cpu-table-flush": "a lazy-TLB CPU took a table-freeing flush and left the mm",
    "ipi-waited-on-irq-off": "an IPI was sent to a CPU that had IRQs disabled",
    "xen-mc-deferred": "a Xen multicall (flush, pin change or CR3 switch) was deferred by a lazy mode",
    "rcu-gp-waited-on-reader": "an RCU grace period had to wait for a reader",
    "gup-recheck-failed": "GUP-fast dropped its reference after a re-check mismatch",
    "pt-reclaim-freed-table": "PT_RECLAIM reclaimed an empty PTE table",
    "ptl-dropped-mid-zap": "zap_pte_range() dropped the PTL midway",
    "pmd-changed-retry": "pte_offset_map_lock() found the PMD changed and retried",
    "speculative-walk-lazy": "a lazy-TLB CPU walked the page tables speculatively",
    "kvm-fault-retried": "a KVM fault raced with an invalidation and retried",
    "broadcast-flush": "a broadcast flush completed (INVLPGB with TLBSYNC, arm64 TLBI with DSB ISH)",
    "mm-freed": "an mm was torn down and its pgd freed",
    "free-held-by-speculative-ref": "a free only dropped a reference: a speculative GUP-fast "
    "reference kept the page allocated until its put",
    "gup-returned-refaulted-page": "GUP-fast returned a page allocated during its walk (the ABA "
    "its re-check accepts: the page mapped at the address when it re-checked)",
    "flush-ipi-to-switching-cpu": "should_flush_tlb() targeted a CPU inside switch_mm_irqs_off() "
    "(loaded_mm == LOADED_MM_SWITCHING)",
    "asid-reloaded-without-flush": "a CPU loaded an ASID it had used before without flushing it "
    "(its entries survived the switch away and back)",
    "cpumask-trimmed": "a CPU that ran another mm left mm_cpumask in flush_tlb_func()",
    "rmap-zap-foreign-mm": "an rmap zap (truncate) gathered and flushed an mm its CPU was not running",
    "moved-pte-cached-at-old-address": "mremap moved a PTE while a CPU still had a TLB entry for "
    "the old address (the flush before the PTLs are dropped is what removes it)",
    "moved-table-cached-at-old-address": "mremap moved a whole PTE table (move_normal_pmd()) while "
    "a CPU still cached the old PMD's pointer to it in its paging-structure cache",
    "truncate-unmapped-refaulted-page": "a hole punch found a page a racing fault had mapped again "
    "after the range was unmapped, and unmapped it once more (truncate_cleanup_folio())",
    "xen-type-change-flush": "Xen flushed vCPUs when a released page-table page became writable "
    "(_get_page_type(), filtered by its TLB-flush clock)",
    # THP (env thp)
    "thp-fault-huge": "a fault mapped a huge PMD (do_huge_pmd_anonymous_page())",
    "thp-collapsed": "a collapse (MADV_COLLAPSE or khugepaged) installed a huge PMD",
    "walker-mid-walk-at-collapse": "a lockless walker had a PTE table mapped when a collapse "
    "cleared its PMD (pmdp_collapse_flush())",
    "collapse-refused-pinned": "a collapse found a page with a reference its mappings do not "
    "explain (a GUP pin) and put the PTE table back (SCAN_PAGE_COUNT)",
    "walker-saw-huge-pmd": "a lockless walker (GUP-fast, pte_offset_map()) met a huge PMD",
    "walker-saw-split-pmd": "a lockless walker met the not-present value of a huge PMD being "
    "split (pmdp_invalidate())",
    "huge-pmd-split": "a huge PMD was split into a PTE table (__split_huge_pmd_locked())",
    "deposited-table-freed": "a deposited PTE table was freed with pte_free() (zap_huge_pmd())",
    # hugetlb PMD sharing (files: hugetlb)
    "hugetlb-pmd-shared": "a hugetlb fault pointed its PUD at another mm's PMD table (huge_pmd_share())",
    "walker-in-unshared-table": "an mm unshared a hugetlb PMD table (huge_pmd_unshare()) while a "
    "GUP-fast walk was in progress on another CPU or a CPU's paging-structure cache pointed at the table",
    "hugetlb-table-fully-unshared": "a hugetlb PMD table lost its last other sharer (fully_unshared_tables: "
    "its owner may now reuse or free it)",
}


class Behaviours:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.mapped: dict[int, tuple[int, int]] = {}
        self.gup_started: dict[int, int] = {}

    def hit(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def handlers(self) -> dict[str, Callable[[Event, Shadow], None]]:
        return {k: getattr(self, "_" + k) for k in (
            "walker_map", "walker_unmap", "op_end", "entry_write", "free", "alloc_fail", "switch_mm",
            "ipi_send", "xen_mc_deferred", "gp_end", "gup_put", "pt_reclaim", "need_resched",
            "pmd_changed", "hw_read", "tlbsync", "mmdrop", "free_held", "gup_start", "gup_return",
            "flush_ipi_switching", "cr3_load", "cpumask_clear", "rmap_zap", "folio_still_mapped",
            "xen_type_change_flush", "ptes_moved", "table_moved", "dsb_ish", "collapse",
            "walker_pmd_leaf", "thp_split_pmd", "pt_share", "pt_unshare")}

    def _walker_map(self, ev: Event, sh: Shadow) -> None:
        self.mapped[ev.cpu] = (ev.a["pfn"], ev.a["gen"])

    def _walker_unmap(self, ev: Event, sh: Shadow) -> None:
        self.mapped.pop(ev.cpu, None)

    def _op_end(self, ev: Event, sh: Shadow) -> None:
        self.mapped.pop(ev.cpu, None)
        self.gup_started.pop(ev.cpu, None)
        res = ev.a.get("result")
        if isinstance(res, str) and res.startswith("retry: invalidation"):
            self.hit("kvm-fault-retried")

    def _entry_write(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        if a["old"] and self.mapped and sh.level.get(a["pfn"], 1) == 2:
            child = a["old"] >> 12
            key = (child, sh.gen.get(child, 0))
            if any(v == key for c, v in self.mapped.items() if c != ev.cpu):
                self.hit("walker-mid-walk-at-unhook")
                if a["why"].startswith("pmdp_collapse_flush"):
                    self.hit("walker-mid-walk-at-collapse")
        elif a["why"].startswith("set_pmd_at (huge fault)"):
            self.hit("thp-fault-huge")
        if a["old"] and a["why"].startswith("pud_clear (huge_pmd_unshare)"):
            child = a["old"] >> 12
            key = (child, sh.gen.get(child, 0))
            if any(c != ev.cpu for c in self.gup_started) or any(
                    v[:2] == key for agent, psc in sh.psc.items() if agent >= 0 for v in psc.values()):
                self.hit("walker-in-unshared-table")

    def _free(self, ev: Event, sh: Shadow) -> None:
        if self.mapped:
            key = (ev.a["pfn"], ev.a["gen"])
            if any(v == key for v in self.mapped.values()):
                self.hit("table-freed-under-walker")
        if ev.a["via"] == "pte_free":
            self.hit("deposited-table-freed")

    def _collapse(self, ev: Event, sh: Shadow) -> None:
        res = ev.a["result"]
        if res == "SCAN_SUCCEED":
            self.hit("thp-collapsed")
        elif res == "SCAN_PAGE_COUNT":
            self.hit("collapse-refused-pinned")

    def _walker_pmd_leaf(self, ev: Event, sh: Shadow) -> None:
        self.hit("walker-saw-split-pmd" if ev.a["what"] == "invalid-huge" else "walker-saw-huge-pmd")

    def _thp_split_pmd(self, ev: Event, sh: Shadow) -> None:
        self.hit("huge-pmd-split")

    def _alloc_fail(self, ev: Event, sh: Shadow) -> None:
        self.hit("table-batch-alloc-failed" if ev.a["what"] == "mmu_table_batch" else "gather-batch-full")

    def _switch_mm(self, ev: Event, sh: Shadow) -> None:
        if ev.a["why"] == "flush_tlb_func: lazy":
            self.hit("lazy-cpu-table-flush")

    def _ipi_send(self, ev: Event, sh: Shadow) -> None:
        if any(sh.irq_off.get(t, 0) > 0 for t in ev.a["targets"]):
            self.hit("ipi-waited-on-irq-off")

    def _xen_mc_deferred(self, ev: Event, sh: Shadow) -> None:
        self.hit("xen-mc-deferred")

    def _gp_end(self, ev: Event, sh: Shadow) -> None:
        if ev.a["waited"]:
            self.hit("rcu-gp-waited-on-reader")

    def _gup_put(self, ev: Event, sh: Shadow) -> None:
        self.hit("gup-recheck-failed")

    def _pt_reclaim(self, ev: Event, sh: Shadow) -> None:
        if ev.a["result"] == "cleared":
            self.hit("pt-reclaim-freed-table")

    def _need_resched(self, ev: Event, sh: Shadow) -> None:
        self.hit("ptl-dropped-mid-zap")

    def _pmd_changed(self, ev: Event, sh: Shadow) -> None:
        self.hit("pmd-changed-retry")

    def _hw_read(self, ev: Event, sh: Shadow) -> None:
        if ev.a["via"] == "speculative" and sh.lazy.get(ev.cpu):
            self.hit("speculative-walk-lazy")

    def _tlbsync(self, ev: Event, sh: Shadow) -> None:
        self.hit("broadcast-flush")

    def _mmdrop(self, ev: Event, sh: Shadow) -> None:
        self.hit("mm-freed")

    def _free_held(self, ev: Event, sh: Shadow) -> None:
        self.hit("free-held-by-speculative-ref")

    def _flush_ipi_switching(self, ev: Event, sh: Shadow) -> None:
        self.hit("flush-ipi-to-switching-cpu")

    def _cr3_load(self, ev: Event, sh: Shadow) -> None:
        if not ev.a.get("flush", True) and (ev.cpu, ev.a.get("asid", 0)) in sh.ctx_store:
            self.hit("asid-reloaded-without-flush")

    def _cpumask_clear(self, ev: Event, sh: Shadow) -> None:
        self.hit("cpumask-trimmed")

    def _rmap_zap(self, ev: Event, sh: Shadow) -> None:
        self.hit("rmap-zap-foreign-mm")

    def _ptes_moved(self, ev: Event, sh: Shadow) -> None:
        lo, hi = ev.a["old"] >> 12, ev.a["end"] >> 12
        if any(lo <= vpn < hi for agent, tlb in sh.tlb.items() if agent >= 0 for vpn in tlb):
            self.hit("moved-pte-cached-at-old-address")

    def _table_moved(self, ev: Event, sh: Shadow) -> None:
        key = (ev.a["pfn"], ev.a["gen"])
        if any(v[:2] == key for agent, psc in sh.psc.items() if agent >= 0 for v in psc.values()):
            self.hit("moved-table-cached-at-old-address")

    def _folio_still_mapped(self, ev: Event, sh: Shadow) -> None:
        self.hit("truncate-unmapped-refaulted-page")

    def _dsb_ish(self, ev: Event, sh: Shadow) -> None:
        self.hit("broadcast-flush")

    def _xen_type_change_flush(self, ev: Event, sh: Shadow) -> None:
        self.hit("xen-type-change-flush")

    def _pt_share(self, ev: Event, sh: Shadow) -> None:
        self.hit("hugetlb-pmd-shared")

    def _pt_unshare(self, ev: Event, sh: Shadow) -> None:
        if ev.a["count"] <= 0:
            self.hit("hugetlb-table-fully-unshared")

    def _gup_start(self, ev: Event, sh: Shadow) -> None:
        self.gup_started[ev.cpu] = ev.seq

    def _gup_return(self, ev: Event, sh: Shadow) -> None:
        start = self.gup_started.pop(ev.cpu, None)
        alloc = sh.last_alloc.get(ev.a["pfn"])
        if start is not None and alloc is not None and alloc.seq > start:
            self.hit("gup-returned-refaulted-page")
