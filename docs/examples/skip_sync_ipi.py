"""Semi-RCU that skips the redundant sync IPI (``skip-sync-ipi``): Lance
Yang's "mm/mmu_gather: prepare to skip redundant sync IPIs" (v7, 9 Mar 2026,
in the mm tree; not in a release as far as our sources show), on top of the
``tlb_remove_table()`` of ``CONFIG_MMU_GATHER_RCU_TABLE_FREE``,
``!CONFIG_PT_RECLAIM``.

Kernel: mm/mmu_gather.c ``tlb_remove_table_sync_one()`` gains an early
return::

    void tlb_remove_table_sync_one(void)
    {
            if (tlb_table_flush_implies_ipi_broadcast())
                    return;
            smp_call_function(tlb_remove_table_smp_sync, NULL, 1);
    }

``tlb_table_flush_implies_ipi_broadcast()`` defaults to false; on x86 it is a
static key set at boot when ``pv_ops.mmu.flush_tlb_multi`` is
``native_flush_tlb_multi`` and the CPU has no INVLPGB (or a PV backend
declares its flush to be an IPI broadcast).  Here it is the platform's
``IMPLIES_IPI_BROADCAST``, read through
``impls.machine.kernel.flush_implies_ipi_broadcast()``.  The same patch makes
``tlb_remove_table_sync_rcu()`` (the 2026 ``synchronize_rcu()`` fallback,
1fb3d8c20bfa) return early too; this file models the IPI fallback of
v6.14..v6.18, the one the early return was written against.

Ordering (include/asm-generic/tlb.h): unhook (the caller cleared the parent
entry) < ``tlb_table_invalidate()`` (a real flush: ``freed_tables`` is set)
< hand-off: batch -> ``call_rcu()`` -> free after a grace period; single
table -> [sync IPI unless the flush was one] -> free at once.

Hardware walkers: invalidated by ``tlb_table_invalidate()`` before either
free path, exactly as in semi-RCU.

IRQ-off software walkers (GUP-fast): the batch waits for them (an IRQ-off
region is an RCU reader).  On the single-table path, when the platform's
flush is a synchronous IPI, the ``freed_tables`` flush of
``tlb_table_invalidate()`` has just IPI'd every CPU of ``mm_cpumask`` (lazy
ones included, ``on_each_cpu_mask()``) and waited for each: a CPU inside
``local_irq_save()`` could not take it before its walk was over, and a walk
that starts later cannot reach the unhooked table.  That is the barrier
``tlb_remove_table_sync_one()`` would provide a second time.  The flush
reaches only ``mm_cpumask``, where the sync IPI reaches every online CPU;
the difference does not matter for GUP-fast, which walks ``current->mm`` and
so runs only on CPUs that have the mm loaded, and a CPU that loads the mm
sets its bit in ``switch_mm_irqs_off()`` before it can walk: the machine's
switch runs in the kernel's steps (``LOADED_MM_SWITCHING``, the bit, the
``tlb_gen`` read, CR3), IRQs off throughout, and ``should_flush_tlb()`` IPIs
a CPU in that window (environment ``native+switch``).  (MODEL: memory is
sequentially consistent, so the ``smp_mb()`` that orders the bit and
``loaded_mm`` against the ``tlb_gen`` read, 83b0177a6c48, is implicit;
ARCHITECTURE.md, model limits.)  When the flush is not an IPI (Xen PV
hypercall, INVLPGB, RAR), the early return is not taken and the sync IPI is
sent, as in plain semi-RCU.

RCU-only software walkers (``pte_offset_map()`` with IRQs on): the batch path
is safe; the single-table path is not, with or without the early return (a
CPU inside ``rcu_read_lock()`` takes any IPI at once).  Unsafe under
PT_RECLAIM, as semi-RCU (seed S2); the kernel never combines the two
(PT_RECLAIM frees single tables with ``call_rcu()``).

Batch allocation failure (``GFP_NOWAIT``): the single-table path above, the
only place in the mmu_gather where the early return changes anything.

THP collapse (``collapse_huge_page()``, mm/khugepaged.c): the other caller
of ``tlb_remove_table_sync_one()``, right after ``pmdp_collapse_flush()``,
whose ``flush_tlb_range()`` is on x86 ``flush_tlb_mm_range(...,
freed_tables=true)`` (3ef938c35035): with the native flush that IPI'd every
CPU of ``mm_cpumask``, lazy ones included, and waited, so the early return is
safe there for the same reason (``native+thp``, ``native+thp+lazy``); with a
hypercall or INVLPGB flush it is not taken (``xen-pv+thp``,
``broadcast+thp``).  See docs/writing-a-strategy.md section 7.
"""

from __future__ import annotations

from impls.machine.kernel import (
    MAX_TABLE_BATCH,
    PAGE_SIZE,
    MmuGather,
    call_rcu,
    flush_implies_ipi_broadcast,
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

NAME = "skip-sync-ipi"
KERNEL = ("MMU_GATHER_RCU_TABLE_FREE, !PT_RECLAIM, with 'mm/mmu_gather: prepare to skip "
          "redundant sync IPIs' (Lance Yang, v7, Mar 2026)")
# Measured with the simulator (see docs/writing-a-strategy.md): the same set as
# semi-rcu.  Not native+pt-reclaim(+batch-fail): the single-table path frees
# under RCU-only walkers, with or without the IPI.
SAFE_ON = ("native", "xen-pv", "broadcast", "native+batch-fail", "xen-pv+batch-fail",
           "broadcast+batch-fail", "native+lazy", "native+secondary-mmu", "native+switch",
           "native+file", "xen-pv+file", "broadcast+file", "arm64", "arm64+batch-fail",
           "native+thp", "native+thp+lazy", "xen-pv+thp", "broadcast+thp",
           "native+hugetlb", "xen-pv+hugetlb", "broadcast+hugetlb", "arm64+hugetlb")


class MmuTableBatch:
    """struct mmu_table_batch: an rcu_head, nr, tables[MAX_TABLE_BATCH]."""

    __slots__ = ("tables",)

    def __init__(self) -> None:
        self.tables: list = []


def tlb_table_flush_implies_ipi_broadcast(cpu) -> bool:
    """arch/x86/include/asm/tlb.h (2026): did the flush we just did IPI every
    CPU that could be walking this mm, and wait for each?"""
    return flush_implies_ipi_broadcast(cpu)


def __tlb_remove_table(cpu, table) -> None:
    """pagetable_dtor_free(): the table's generation ends."""
    pagetable_free(cpu, table, "__tlb_remove_table")


def tlb_remove_table_rcu(cpu, batch: MmuTableBatch) -> None:
    """The RCU callback: free every table of the batch."""
    for table in batch.tables:
        __tlb_remove_table(cpu, table)


def tlb_remove_table_smp_sync(cpu, info) -> None:
    """Simply deliver the interrupt."""


def tlb_remove_table_sync_one(cpu):
    """mm/mmu_gather.c with the 2026 early return.  Not an RCU grace period:
    only good for walkers that rely on IRQs being disabled.  Every caller
    goes through here: the single-table fallback below and, as the
    strategy's hook, the generic code that calls it (hugetlb unsharing, a THP
    collapse after pmdp_collapse_flush()), so the early return applies there
    too, as in the kernel."""
    if tlb_table_flush_implies_ipi_broadcast(cpu):
        trace(cpu, "tlb_remove_table_sync_one: the flush was an IPI broadcast, skipped")
        return
    yield from smp_call_function(cpu, tlb_remove_table_smp_sync, None, True,
                                 "tlb_remove_table_sync_one")


def tlb_table_invalidate(tlb: MmuGather):
    """Invalidate the hardware walkers' caches before the hand-off (a no-op
    when nothing was gathered since the last flush)."""
    if tlb_needs_table_invalidate(tlb):
        yield from tlb_flush_mmu_tlbonly(tlb)


def tlb_remove_table_one(tlb: MmuGather, table):
    """The single-table fallback: sync (maybe skipped), then free at once."""
    trace(tlb.cpu, f"tlb_remove_table_one(pfn {table.pfn:#x})")
    yield from tlb_remove_table_sync_one(tlb.cpu)
    __tlb_remove_table(tlb.cpu, table)


def tlb_table_flush(tlb: MmuGather):
    """Invalidate, then hand the batch to RCU."""
    if tlb.batch is not None:
        yield from tlb_table_invalidate(tlb)
        call_rcu(tlb.cpu, tlb_remove_table_rcu, tlb.batch, "tlb_remove_table_rcu")
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


# -- the required hooks ------------------------------------------------------------

def pte_free_tlb(tlb: MmuGather, pte, address: int):
    """pte_free_tlb() -> ___pte_free_tlb(): widen the flush range, mark
    freed_tables, tell the hypervisor, queue the table."""
    tlb_flush_pmd_range(tlb, address, PAGE_SIZE)
    tlb.freed_tables = True
    paravirt_release_pte(tlb.cpu, pte)
    yield from tlb_remove_table(tlb, pte)


def pmd_free_tlb(tlb: MmuGather, pmd, address: int):
    """pmd_free_tlb() -> ___pmd_free_tlb()."""
    tlb_flush_pud_range(tlb, address, PAGE_SIZE)
    tlb.freed_tables = True
    paravirt_release_pmd(tlb.cpu, pmd)
    yield from tlb_remove_table(tlb, pmd)


def pud_free_tlb(tlb: MmuGather, pud, address: int):
    """pud_free_tlb() -> ___pud_free_tlb()."""
    tlb_flush_p4d_range(tlb, address, PAGE_SIZE)
    tlb.freed_tables = True
    paravirt_release_pud(tlb.cpu, pud)
    yield from tlb_remove_table(tlb, pud)


def tlb_flush_mmu(tlb: MmuGather):
    """mm/mmu_gather.c: tlb_flush_mmu(): flush, then tlb_flush_mmu_free():
    the table batch to RCU, then the data pages."""
    yield from tlb_flush_mmu_tlbonly(tlb)
    yield from tlb_table_flush(tlb)
    tlb_batch_pages_flush(tlb)
