"""Planted bug: ``tlb_flush_unshared_tables()`` leaves the unsharer's TLB
flush to ``tlb_finish_mmu()``: it only syncs GUP-fast after a full unshare.
The flush then comes after ``i_mmap_rwsem`` was dropped, when the table's
remaining owner may already have freed it.

Kernel: a4a118f2eead "hugetlbfs: flush TLBs correctly after
huge_pmd_unshare" (Nadav Amit, 2021, CVE-2021-4002): "We could defer the
flush until now, since by holding i_mmap_rwsem we guaranteed that the last
reference would not be dropped. But we must do the flushing before we
return, as otherwise i_mmap_rwsem will be dropped and the last reference to
the shared PMDs page might be dropped as well" (the ``force_flush`` /
``tlb_flush_mmu_tlbonly()`` at the end of __unmap_hugepage_range()).
8ce720d5bd91 (2025) kept the rule: "we disallow deferring flushing to
tlb_finish_mmu() and instead require an explicit earlier call to
tlb_flush_unshared_tables()".  ORDERING: the table is freed by the last
sharer before the unsharer's CPUs were invalidated.

Built from the correct full-RCU strategy.
"""

from pathlib import Path

from impls.machine.plugin import load_module_file
from impls.pt_reclaim import mmu_gather as correct

NAME = "hugetlb-unshare-flush-deferred"
PLANTED = {"env": "arm64+hugetlb", "kind": "strategy", "check": "ordering"}


def tlb_flush_unshared_tables(tlb):
    """include/asm-generic/tlb.h: tlb_flush_unshared_tables() without its flush."""
    # BUG: no "if (tlb->unshared_tables) tlb_flush_mmu_tlbonly(tlb);"
    if tlb.fully_unshared_tables:
        yield from tlb.m.S.tlb_remove_table_sync_one(tlb.cpu)
        tlb.fully_unshared_tables = False


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
