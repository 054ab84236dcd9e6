"""Planted bug: PT_RECLAIM with the semi-RCU single-table fallback, "sync IPI,
then free at once", instead of ``call_rcu()``.

Kernel: the objection of seed S2 (Jann Horn / Qi Zheng on "[PATCH v2 6/7]
x86: mm: free page table pages by RCU instead of semi RCU", Nov 2024): an
IPI cannot be synchronized with the ``rcu_read_lock()`` of
``pte_offset_map()``; a walker with IRQs on takes it at once and keeps
walking the table PT_RECLAIM just freed.  718b13861d22 (v6.14) and the
generic ``__tlb_remove_table_one()`` under ``CONFIG_PT_RECLAIM`` therefore
use ``call_rcu(&ptdesc->pt_rcu_head, ...)``.  This mutant is the full-RCU
strategy with that one path reverted to ``tlb_remove_table_one()`` =
``tlb_remove_table_sync_one()`` + ``__tlb_remove_table()``.
"""

from pathlib import Path

from impls.machine.kernel import gfp_nowait_fails, smp_call_function
from impls.machine.plugin import load_module_file
from impls.pt_reclaim import mmu_gather as correct
from impls.pt_reclaim.mmu_gather import (
    MAX_TABLE_BATCH,
    MmuTableBatch,
    __tlb_remove_table,
    tlb_table_flush,
    tlb_table_invalidate,
)

NAME = "full-rcu-sync-ipi-fallback"
PLANTED = {"env": "native+pt-reclaim+batch-fail", "kind": "strategy", "check": "table-uaf"}


def tlb_remove_table_smp_sync(cpu, info):
    """Simply deliver the interrupt."""


def tlb_remove_table(tlb, table):
    """mm/mmu_gather.c: tlb_remove_table()."""
    if tlb.batch is None:
        if gfp_nowait_fails(tlb, "mmu_table_batch"):
            yield from tlb_table_invalidate(tlb)
            # BUG: semi-RCU's tlb_remove_table_one(): an IPI, not a grace period
            yield from smp_call_function(tlb.cpu, tlb_remove_table_smp_sync, None, True,
                                         "tlb_remove_table_sync_one")
            __tlb_remove_table(tlb.cpu, table)
            return
        tlb.batch = MmuTableBatch()
    tlb.batch.tables.append(table)
    tlb.m.h.emit(tlb.cpu.id, "table_batch", pfn=table.pfn, gen=table.gen)
    if len(tlb.batch.tables) == MAX_TABLE_BATCH:
        yield from tlb_table_flush(tlb)


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
