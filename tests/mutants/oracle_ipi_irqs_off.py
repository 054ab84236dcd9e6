"""Planted bug (oracle test): the single-table fallback sends its sync IPI
with IRQs disabled.  kernel/smp.c warns: smp_call_function_many() "can
deadlock when called with interrupts disabled" (two CPUs waiting for each
other's IPI).
"""

from impls.machine.kernel import local_irq_restore, local_irq_save, smp_call_function
from impls.xen_semi_rcu import mmu_gather as _semi
from impls.xen_semi_rcu.mmu_gather import *  # noqa: F401,F403  (the correct strategy, then one change)

NAME = "semi-rcu-ipi-with-irqs-off"
SAFE_ON = ()


def tlb_remove_table_sync_one(cpu):
    local_irq_save(cpu)  # BUG
    yield from smp_call_function(cpu, _semi.tlb_remove_table_smp_sync, None, True,
                                 "tlb_remove_table_sync_one")
    local_irq_restore(cpu)


def tlb_remove_table_one(tlb, table):
    yield from tlb_remove_table_sync_one(tlb.cpu)
    _semi.__tlb_remove_table(tlb.cpu, table)


def tlb_remove_table(tlb, table):
    if tlb.batch is None:
        if _semi.gfp_nowait_fails(tlb, "mmu_table_batch"):
            yield from _semi.tlb_table_invalidate(tlb)
            yield from tlb_remove_table_one(tlb, table)
            return
        tlb.batch = _semi.MmuTableBatch()
    tlb.batch.tables.append(table)


def pte_free_tlb(tlb, pte, address):
    _semi.tlb_flush_pmd_range(tlb, address, _semi.PAGE_SIZE)
    tlb.freed_tables = True
    _semi.paravirt_release_pte(tlb.cpu, pte)
    yield from tlb_remove_table(tlb, pte)
