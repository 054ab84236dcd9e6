"""Planted bug: the mmu_gather's TLB flush does not invalidate secondary TLBs
(``mmu_notifier_arch_invalidate_secondary_tlbs()``), so an IOMMU (SVA) that
walks the CPU page tables keeps IOTLB and paging-structure-cache entries for
pages and tables that are then freed.

Kernel: fd1102f0aade "mm: mmu_notifier fix for tlb_end_vma" (Nicholas Piggin,
2018, part of the 'tlb-fixes' merge 706a1ea65e6f): ``tlb_end_vma()`` flushed
with a bare ``tlb_flush()`` and skipped the ``mmu_notifier_invalidate_range()``
that ``tlb_flush_mmu_tlbonly()`` did, so secondary TLBs were not invalidated
before the pages were freed.  Since 1af5a8109904 (v6.6) the hook is
``mmu_notifier_arch_invalidate_secondary_tlbs()`` at the end of x86
``flush_tlb_mm_range()``; this mutant's flush is that function without its
last line (the model calls the hook there).

Built from the correct native direct-free strategy; safe on every platform
for the CPU side, unsafe for any secondary MMU that walks the CPU tables.
"""

from pathlib import Path

from impls.machine.cpu import local_irq_disable, local_irq_enable, preempt_disable, preempt_enable
from impls.machine.mmu_gather import __tlb_reset_range, tlb_get_unmap_shift
from impls.machine.plugin import load_module_file
from impls.machine.tlbflush import TLB_FLUSH_ALL, cpu_flush_mask, flush_tlb_func, init_flush_tlb_info
from impls.native import mmu_gather as correct

NAME = "secondary-tlbs-not-invalidated"
PLANTED = {"env": "native+secondary-mmu", "kind": "strategy", "check": "stale-secondary"}


def flush_tlb_mm_range(cpu, mm, start, end, stride_shift, freed_tables):
    """arch/x86/mm/tlb.c: flush_tlb_mm_range(), as the model has it, minus the
    secondary-TLB hook."""
    m = cpu.m
    preempt_disable(cpu)
    mm.tlb_gen += 1
    info = init_flush_tlb_info(cpu, mm, start, end, stride_shift, freed_tables, mm.tlb_gen)
    P = m.P
    m.h.emit(cpu.id, "flush_begin", id=info.id, mm=mm.id, start=info.start, end=info.end,
             stride=stride_shift, freed_tables=freed_tables, mask=cpu_flush_mask(cpu, mm.cpumask),
             how=P.name)
    if P.mm_global_asid is not None and P.mm_global_asid(mm):
        yield from P.broadcast_tlb_flush(cpu, info)
    elif mm.cpumask & ~(1 << cpu.id):
        yield from P.flush_tlb_multi(cpu, mm.cpumask, info)
    elif cpu.loaded_mm is mm:
        local_irq_disable(cpu)
        flush_tlb_func(cpu, info)
        local_irq_enable(cpu)
    preempt_enable(cpu)
    m.h.emit(cpu.id, "flush_end", id=info.id)
    # BUG: no mmu_notifier_arch_invalidate_secondary_tlbs(mm, start, end)


def tlb_flush_mmu_tlbonly(tlb):
    """include/asm-generic/tlb.h: tlb_flush_mmu_tlbonly() with x86 tlb_flush()."""
    if not (tlb.freed_tables or tlb.cleared_ptes or tlb.cleared_pmds or tlb.cleared_puds
            or tlb.cleared_p4ds):
        return
    start, end = 0, TLB_FLUSH_ALL
    if not tlb.fullmm and not tlb.need_flush_all:
        start, end = tlb.start, tlb.end
    yield from flush_tlb_mm_range(tlb.cpu, tlb.mm, start, end, tlb_get_unmap_shift(tlb), tlb.freed_tables)
    __tlb_reset_range(tlb)


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
