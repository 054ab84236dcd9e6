"""Planted bug: ``tlb_unshare_pmd_ptdesc()`` drops the share count and sets
the flags but does not add the unshared PUD's range to the gather
(``tlb_flush_pmd_range(tlb, addr & PUD_MASK, PUD_SIZE)``): the unsharer's
flush covers only what else was gathered, and its CPUs keep TLB and
paging-structure entries reached through the PUD entry it cleared.

Kernel: a4a118f2eead "hugetlbfs: flush TLBs correctly after
huge_pmd_unshare" (Nadav Amit, Nov 2021, CVE-2021-4002): "When
__unmap_hugepage_range() calls to huge_pmd_unshare() succeed, a TLB flush is
missing. This TLB flush must be performed before releasing the i_mmap_rwsem,
in order to prevent an unshared PMDs page from being released and reused
before the TLB flush took place" -- the fix added the tlb_flush_pmd_range()
that 8ce720d5bd91 (2025) moved into tlb_unshare_pmd_ptdesc().  Once the last
sharer frees the table, a CPU of the unsharer's mm may still walk it
(ORDERING: the unhook was never followed by an invalidation there).

Built from the correct full-RCU strategy (the hook is generic mmu_gather
code, the same in every configuration).
"""

from pathlib import Path

from impls.machine.plugin import load_module_file
from impls.pt_reclaim import mmu_gather as correct

NAME = "hugetlb-unshare-no-flush-range"
PLANTED = {"env": "native+hugetlb", "kind": "strategy", "check": "ordering"}


def tlb_unshare_pmd_ptdesc(tlb, pt, addr):
    """include/asm-generic/tlb.h: tlb_unshare_pmd_ptdesc() before a4a118f2eead."""
    pt.share_count -= 1  # ptdesc_pmd_pts_dec()
    # BUG: no "tlb_flush_pmd_range(tlb, addr & PUD_MASK, PUD_SIZE);"
    if pt.share_count <= 0:
        tlb.fully_unshared_tables = True
    tlb.unshared_tables = True
    tlb.m.h.emit(tlb.cpu.id, "pt_unshare", pfn=pt.pfn, gen=pt.gen, mm=tlb.mm.id, count=pt.share_count)


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
