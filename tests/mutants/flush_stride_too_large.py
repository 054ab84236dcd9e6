"""Planted bug: the gather's flush uses the stride of the *largest* page-table
level it cleared instead of the smallest, so a munmap that cleared PTEs and
freed their PTE table flushes one address per 2 MiB and leaves the leaf TLB
entries of the other pages.

Kernel: a6d60245d6d9 "asm-generic/tlb: Track which levels of the page tables
have been cleared" (Will Deacon, v4.20) records ``cleared_ptes/pmds/puds/p4ds``
and ``tlb_get_unmap_shift()`` returns "the smallest granule required for
invalidation"; x86 passes it to ``flush_tlb_mm_range()`` as ``stride_shift``
(016c4d92cd16).  Inverting the priority is the class of bug where a range
flush uses a huge-page stride over normal PTEs (cf. Jann Horn's 2025 fix
"x86/mm: Fix flush_tlb_range() when used for zapping normal PMDs").

Built from the correct native direct-free strategy.
"""

from pathlib import Path

from impls.machine.mmu_gather import __tlb_reset_range
from impls.machine.pgtable import PAGE_SHIFT, PGDIR_SHIFT, PMD_SHIFT, PUD_SHIFT
from impls.machine.plugin import load_module_file
from impls.machine.tlbflush import TLB_FLUSH_ALL, flush_tlb_mm_range
from impls.native import mmu_gather as correct

NAME = "flush-stride-too-large"
PLANTED = {"env": "native", "kind": "strategy", "check": "stale-tlb"}


def tlb_get_unmap_shift(tlb) -> int:
    # BUG: the largest level cleared sets the stride
    for cleared, shift in ((tlb.cleared_p4ds, PGDIR_SHIFT), (tlb.cleared_puds, PUD_SHIFT),
                           (tlb.cleared_pmds, PMD_SHIFT)):
        if cleared:
            return shift
    return PAGE_SHIFT


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
