"""Planted bug (oracle test): semi-RCU whose batch is freed at once instead of
after a grace period (``tlb_remove_table_free()`` = ``__tlb_remove_table_free()``,
the !MMU_GATHER_RCU_TABLE_FREE branch of mm/mmu_gather.c).  On a platform
whose flush is not an IPI (Xen PV, INVLPGB) nothing holds the free off until
an IRQ-disabled GUP-fast walker is done: the 2012 hole again.
"""

from impls.xen_semi_rcu import mmu_gather as _semi
from impls.xen_semi_rcu.mmu_gather import *  # noqa: F401,F403  (the correct strategy, then one change)

NAME = "semi-rcu-no-grace-period"
SAFE_ON = ()


def tlb_remove_table_free(tlb, batch):
    _semi.__tlb_remove_table_free(tlb.cpu, batch)  # BUG: no call_rcu()


def tlb_table_flush(tlb):
    if tlb.batch is not None:
        yield from _semi.tlb_table_invalidate(tlb)
        tlb_remove_table_free(tlb, tlb.batch)
        tlb.batch = None


def tlb_flush_mmu(tlb):
    yield from _semi.tlb_flush_mmu_tlbonly(tlb)
    yield from tlb_table_flush(tlb)
    _semi.tlb_batch_pages_flush(tlb)
