"""Planted bug: unsharing a hugetlb PMD table resets its share count instead
of dropping one share: the table looks exclusively owned
(``!ptdesc_pmd_is_shared()``) while a third mm still links it, so the next
mm to unmap it zaps and frees it through ``free_pgtables()`` under the
sharer that still maps it.

Kernel: 59d9094df3d7 "mm: hugetlb: independent PMD page table shared count"
(Liu Shixin, Dec 2024) replaced the page refcount that
``huge_pmd_unshare()`` used to tell a shared table from an exclusive one by
``pt_share_count``, because a miscount there "can cause the page table
leaked" or freed while in use; 8ce720d5bd91 (2025) moved the decrement into
tlb_unshare_pmd_ptdesc(), with ``VM_WARN_ON_ONCE(!ptdesc_pmd_is_shared(pt))``.
This is a miscount the other way: one unshare forgets every other sharer
(``ptdesc_pmd_pts_init()`` where ``ptdesc_pmd_pts_dec()`` belongs).  The
freed table is still in the third mm's tree (ACCOUNTING: freed while it
still held present entries, or a walker reads it: TABLE-UAF).

Built from the correct full-RCU strategy.
"""

from pathlib import Path

from impls.machine.mmu_gather import tlb_flush_pmd_range
from impls.machine.plugin import load_module_file
from impls.pt_reclaim import mmu_gather as correct

NAME = "hugetlb-share-count-lost"
PLANTED = {"env": "native+hugetlb", "kind": "strategy", "check": "accounting"}

PUD_MASK = ~((1 << 30) - 1)


def tlb_unshare_pmd_ptdesc(tlb, pt, addr):
    """include/asm-generic/tlb.h: tlb_unshare_pmd_ptdesc() with the count reset."""
    pt.share_count = 0  # BUG: ptdesc_pmd_pts_init(pt), not ptdesc_pmd_pts_dec(pt)
    tlb_flush_pmd_range(tlb, addr & PUD_MASK, 1 << 30)
    if pt.share_count <= 0:
        tlb.fully_unshared_tables = True
    tlb.unshared_tables = True
    tlb.m.h.emit(tlb.cpu.id, "pt_unshare", pfn=pt.pfn, gen=pt.gen, mm=tlb.mm.id, count=pt.share_count)


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
