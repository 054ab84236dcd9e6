"""Behaviour events: the "sometimes" facts that show a run got somewhere
interesting.  They guard against vacuous green (a fuzzer that never put a
walker inside a table when it was unhooked proves nothing) and serve the
coverage-guided engines as coverage."""

from __future__ import annotations

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
    "broadcast-flush": "a broadcast INVLPGB flush completed with TLBSYNC",
    "mm-freed": "an mm was torn down and its pgd freed",
}


class Behaviours:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.mapped: dict[int, tuple[int, int]] = {}

    def hit(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def see(self, ev: Event, sh: Shadow) -> None:
        k = ev.kind
        a = ev.a
        if k == "walker_map":
            self.mapped[ev.cpu] = (a["pfn"], a["gen"])
        elif k == "walker_unmap" or k == "op_end":
            self.mapped.pop(ev.cpu, None)
        elif k == "entry_write":
            if a["old"] and sh.level.get(a["pfn"], 1) == 2:
                child = a["old"] >> 12
                key = (child, sh.gen.get(child, 0))
                if any(v == key for c, v in self.mapped.items() if c != ev.cpu):
                    self.hit("walker-mid-walk-at-unhook")
        elif k == "free":
            key = (a["pfn"], a["gen"])
            if any(v == key for v in self.mapped.values()):
                self.hit("table-freed-under-walker")
        elif k == "alloc_fail":
            self.hit("table-batch-alloc-failed" if a["what"] == "mmu_table_batch" else "gather-batch-full")
        elif k == "switch_mm":
            if a["why"] == "flush_tlb_func: lazy":
                self.hit("lazy-cpu-table-flush")
        elif k == "ipi_send":
            if any(sh.irq_off.get(t, 0) > 0 for t in a["targets"]):
                self.hit("ipi-waited-on-irq-off")
        elif k == "xen_mc_deferred":
            self.hit("xen-mc-deferred")
        elif k == "gp_end":
            if a["waited"]:
                self.hit("rcu-gp-waited-on-reader")
        elif k == "gup_put":
            self.hit("gup-recheck-failed")
        elif k == "pt_reclaim":
            if a["result"] == "cleared":
                self.hit("pt-reclaim-freed-table")
        elif k == "need_resched":
            self.hit("ptl-dropped-mid-zap")
        elif k == "pmd_changed":
            self.hit("pmd-changed-retry")
        elif k == "hw_read":
            if a["via"] == "speculative" and sh.lazy.get(ev.cpu):
                self.hit("speculative-walk-lazy")
        elif k == "op_end" and isinstance(a.get("result"), str) and a["result"].startswith("retry: invalidation"):
            self.hit("kvm-fault-retried")
        elif k == "tlbsync":
            self.hit("broadcast-flush")
        elif k == "mmdrop":
            self.hit("mm-freed")
