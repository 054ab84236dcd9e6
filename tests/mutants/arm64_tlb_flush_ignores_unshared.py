"""Planted bug: arm64's ``tlb_flush()`` picks a walk-cache invalidation
from ``freed_tables`` alone: an unshared hugetlb PMD table
(``unshared_tables``) gets last-level TLBIs (``TLBI VALE1IS``), and every
CPU's walk cache keeps the unsharer's PUD entry pointing at the table.

Kernel: c2ff4764e03e "arm64: tlb: Flush walk cache when unsharing PMD
tables" (Zeng Heng, May 2026; Fixes: 8ce720d5bd91): "the
tlb_unshare_pmd_ptdesc() function sets tlb->unshared_tables=true but the
aarch64 tlb_flush() only checked tlb->freed_tables to determine whether to
use TLBF_NONE (vae1is, invalidates walk cache) or TLBF_NOWALKCACHE
(vale1is, leaf-only). This caused the stale PMD page table entry to remain
in the walk cache after unshare".  When the table's last sharer frees it, a
CPU of the unsharer's mm still caches a pointer to it (STALE-PSC, ORDERING).

Built from the correct arm64 platform; run with the correct full-RCU
strategy.
"""

from pathlib import Path

from impls.machine.mmu_gather import tlb_get_unmap_shift
from impls.machine.plugin import load_module_file
from impls.platforms import arm64 as correct

NAME = "arm64-tlb-flush-ignores-unshared"
PLANTED = {"env": "arm64+hugetlb", "kind": "platform", "check": "ordering", "strategy": "full-rcu"}


def tlb_flush(tlb):
    """arch/arm64/include/asm/tlb.h: tlb_flush() before c2ff4764e03e."""
    last_level = not tlb.freed_tables  # BUG: not !(tlb->freed_tables || tlb->unshared_tables)
    stride_shift = tlb_get_unmap_shift(tlb)
    if tlb.fullmm:
        if not last_level:
            yield from flush_tlb_mm(tlb.cpu, tlb.mm)  # noqa: F821 (rebound)
        return
    yield from __flush_tlb_range(tlb.cpu, tlb.mm, tlb.start, tlb.end, stride_shift, last_level)  # noqa: F821


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
