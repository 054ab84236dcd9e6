"""Semi-RCU table freeing (``semi-rcu``): ``tlb_remove_table()`` with
RCU-freed batches and the single-table fallback "sync IPI + immediate free".

Kernel: ``CONFIG_MMU_GATHER_RCU_TABLE_FREE``, ``!CONFIG_PT_RECLAIM``, as x86
PARAVIRT guests (Xen PV, Hyper-V, KVM PV flush) ran it from v4.14 (9e52fc2b50de)
/ v4.19 (48a8b97cfd80, ``pv_ops.mmu.tlb_remove_table = tlb_remove_table``) to
v6.13, and as powerpc/sparc/s390/arm64 ran it before PT_RECLAIM.
mm/mmu_gather.c: ``tlb_remove_table()``, ``tlb_table_flush()``,
``tlb_table_invalidate()`` (d86564a2f085, 0ed1325967ab),
``tlb_remove_table_one()`` = ``tlb_remove_table_sync_one()`` + free.

Ordering: unhook (caller) < ``tlb_table_invalidate()`` (a real TLB flush,
``freed_tables`` set) < hand-off: batch -> ``call_rcu()`` -> free after a grace
period; single table -> ``smp_call_function(..., wait=1)`` -> free at once.

Hardware walkers: invalidated before either free path by
``tlb_table_invalidate()`` (``tlb_needs_table_invalidate()``, the platform's
answer: true on x86 and arm64, where hardware walks the Linux tables).

IRQ-off software walkers (GUP-fast): an IRQ-disabled region is an RCU reader,
so the batch waits for them; the fallback's IPI cannot be taken until they
re-enable IRQs.  Neither depends on the TLB flush being an IPI: safe on Xen PV
and with broadcast flushes.

RCU-only software walkers: the batch path is safe, but the fallback IPI is
taken at once by a CPU inside ``rcu_read_lock()`` with IRQs on, which then
keeps walking a freed table: unsafe once PT_RECLAIM frees tables under such
walkers (Jann Horn's objection, seed S2).

Batch allocation failure (``GFP_NOWAIT``): the single-table fallback above.

THP (mm/khugepaged.c, mm/huge_memory.c, v6.15): ``collapse_huge_page()``
unhooks a PTE table with ``pmdp_collapse_flush()`` and keeps it, deposited,
and ``zap_huge_pmd()`` later frees a deposited table with ``pte_free()``: at
once, no RCU.  What keeps IRQ-off walkers off it is
``tlb_remove_table_sync_one()`` right after the collapse's flush (2ba99c5e0881):
here the IPI of MMU_GATHER_RCU_TABLE_FREE, which no IRQ-off walker of the old
table can acknowledge before it is done with it, whatever the flush was.
``pte_free()`` is the generic one (the machine's default).
"""

from __future__ import annotations

from impls.machine.kernel import (
    MAX_TABLE_BATCH,
    PAGE_SIZE,
    MmuGather,
    call_rcu,
    gfp_nowait_fails,
    pagetable_free,
    paravirt_release_pmd,
    paravirt_release_pte,
    paravirt_release_pud,
    smp_call_function,
    tlb_batch_pages_flush,
    tlb_flush_mmu_tlbonly,
    tlb_flush_p4d_range,
    tlb_flush_pmd_range,
    tlb_flush_pud_range,
    tlb_needs_table_invalidate,
    trace,
)

NAME = "semi-rcu"
KERNEL = "MMU_GATHER_RCU_TABLE_FREE, !PT_RECLAIM (x86 PARAVIRT guests v4.19-v6.13)"
SAFE_ON = ("native", "xen-pv", "broadcast", "native+batch-fail", "xen-pv+batch-fail",
           "broadcast+batch-fail", "native+lazy",
           "native+secondary-mmu", "native+switch", "native+file", "xen-pv+file",
           "broadcast+file", "arm64", "arm64+batch-fail",
           "native+thp", "native+thp+lazy", "xen-pv+thp", "broadcast+thp",
           "native+hugetlb", "xen-pv+hugetlb", "broadcast+hugetlb", "arm64+hugetlb")


class MmuTableBatch:
    """struct mmu_table_batch: an rcu_head, nr, tables[MAX_TABLE_BATCH]."""

    __slots__ = ("tables",)

    def __init__(self) -> None:
        self.tables: list = []


def __tlb_remove_table(cpu, table) -> None:
    """pagetable_dtor_free()."""
    pagetable_free(cpu, table, "__tlb_remove_table")


def __tlb_remove_table_free(cpu, batch: MmuTableBatch) -> None:
    for table in batch.tables:
        __tlb_remove_table(cpu, table)


def tlb_remove_table_rcu(cpu, batch: MmuTableBatch) -> None:
    """The RCU callback (softirq context)."""
    __tlb_remove_table_free(cpu, batch)


def tlb_remove_table_free(tlb: MmuGather, batch: MmuTableBatch) -> None:
    call_rcu(tlb.cpu, tlb_remove_table_rcu, batch, "tlb_remove_table_rcu")


def tlb_remove_table_smp_sync(cpu, info) -> None:
    """Simply deliver the interrupt."""


def tlb_remove_table_sync_one(cpu):
    """Not an RCU grace period: only good for walkers that rely on IRQs being
    disabled.  An IPI to every other online CPU, waiting for each.  Also the
    strategy's hook for collapse_huge_page()."""
    yield from smp_call_function(cpu, tlb_remove_table_smp_sync, None, True,
                                 "tlb_remove_table_sync_one")


def tlb_table_invalidate(tlb: MmuGather):
    if tlb_needs_table_invalidate(tlb):
        yield from tlb_flush_mmu_tlbonly(tlb)


def tlb_remove_table_one(tlb: MmuGather, table):
    trace(tlb.cpu, f"tlb_remove_table_one(pfn {table.pfn:#x}): sync IPI, then free")
    yield from tlb_remove_table_sync_one(tlb.cpu)
    __tlb_remove_table(tlb.cpu, table)


def tlb_table_flush(tlb: MmuGather):
    if tlb.batch is not None:
        yield from tlb_table_invalidate(tlb)
        tlb_remove_table_free(tlb, tlb.batch)
        tlb.batch = None


def tlb_remove_table(tlb: MmuGather, table):
    """mm/mmu_gather.c: tlb_remove_table()."""
    if tlb.batch is None:
        if gfp_nowait_fails(tlb, "mmu_table_batch"):
            yield from tlb_table_invalidate(tlb)
            yield from tlb_remove_table_one(tlb, table)
            return
        tlb.batch = MmuTableBatch()
    tlb.batch.tables.append(table)
    tlb.m.h.emit(tlb.cpu.id, "table_batch", pfn=table.pfn, gen=table.gen)
    if len(tlb.batch.tables) == MAX_TABLE_BATCH:
        yield from tlb_table_flush(tlb)


def pte_free_tlb(tlb: MmuGather, pte, address: int):
    """pte_free_tlb() -> ___pte_free_tlb() -> pv_ops.mmu.tlb_remove_table."""
    tlb_flush_pmd_range(tlb, address, PAGE_SIZE)
    tlb.freed_tables = True
    paravirt_release_pte(tlb.cpu, pte)
    yield from tlb_remove_table(tlb, pte)


def pmd_free_tlb(tlb: MmuGather, pmd, address: int):
    tlb_flush_pud_range(tlb, address, PAGE_SIZE)
    tlb.freed_tables = True
    paravirt_release_pmd(tlb.cpu, pmd)
    yield from tlb_remove_table(tlb, pmd)


def pud_free_tlb(tlb: MmuGather, pud, address: int):
    tlb_flush_p4d_range(tlb, address, PAGE_SIZE)
    tlb.freed_tables = True
    paravirt_release_pud(tlb.cpu, pud)
    yield from tlb_remove_table(tlb, pud)


def tlb_flush_mmu_free(tlb: MmuGather):
    """Tables to their free path first, then the data pages."""
    yield from tlb_table_flush(tlb)
    tlb_batch_pages_flush(tlb)


def tlb_flush_mmu(tlb: MmuGather):
    yield from tlb_flush_mmu_tlbonly(tlb)
    yield from tlb_flush_mmu_free(tlb)
