"""Planted bug: ``tlb_finish_mmu()`` without the forced flush for a nested
gather: when another CPU is batching on the same mm (``mm_tlb_flush_nested()``:
its PTE clears are not flushed yet), this gather flushes only what it cleared
itself.

Kernel: 99baac21e458 "mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem"
(Minchan Kim, 2017) added the check to tlb_finish_mmu() (then
arch_tlb_finish_mmu()): "if there are parallel threads are doing PTE changes
on same range under non-exclusive lock (e.g., mmap_lock read-side) but defer
TLB flush by batching, a thread may return while TLB has stale TLB entries" --
a second zapper finds the PTEs already none, clears nothing, flushes nothing
and returns.  For pages the first zapper's gather still holds a reference,
but a VM_PFNMAP frame has no struct page to hold: a driver revoking its
mapping (``unmap_mapping_range()``) while a munmap of the same VMA has zapped
but not flushed returns, and releases the frame, while a CPU still
translates to it.

Built from the correct full-RCU strategy (the hook is generic mmu_gather code,
the same in every configuration).
"""

from pathlib import Path

from impls.machine.plugin import load_module_file
from impls.pt_reclaim import mmu_gather as correct

NAME = "finish-mmu-without-nested-flush"
PLANTED = {"env": "native+file", "kind": "strategy", "check": "ordering"}


def tlb_finish_mmu(tlb):
    """mm/mmu_gather.c: tlb_finish_mmu(), before 99baac21e458."""
    # BUG: no "if (mm_tlb_flush_nested(tlb->mm)) { tlb->fullmm = 1; __tlb_reset_range(tlb);
    #      tlb->freed_tables = 1; }"
    yield from tlb.m.S.tlb_flush_mmu(tlb)
    tlb.mm.tlb_flush_pending -= 1  # dec_tlb_flush_pending()
    tlb.m.h.emit(tlb.cpu.id, "tlb_finish", mm=tlb.mm.id)


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
