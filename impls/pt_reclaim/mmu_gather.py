"""Full RCU table freeing (``full-rcu``): ``call_rcu()`` on both the batch
path and the single-table path.

Kernel: ``CONFIG_PT_RECLAIM`` (v6.14+, 718b13861d22 "x86: mm: free page table
pages by RCU instead of semi RCU", Qi Zheng); mm/mmu_gather.c
``__tlb_remove_table_one()`` = ``call_rcu(&ptdesc->pt_rcu_head,
__tlb_remove_table_one_rcu)`` (moved there from arch/x86 by 9c8c02df3f87's
series).  The IPI of the semi-RCU fallback was dropped in v3 of the series:
IRQ-off GUP-fast is an RCU reader too (seed S2).

Ordering: unhook (caller) < ``tlb_table_invalidate()`` (hardware walkers) <
``call_rcu()`` < grace period end < free.

Hardware walkers: invalidated before the hand-off, as in semi-RCU.

IRQ-off and RCU-only software walkers: both are RCU readers; every free,
batched or single, waits for a full grace period after the unhook, so a walker
that loaded the old PMD can still read the detached table.  Writers must still
re-check the PMD under the PTL (``pte_offset_map_lock()``).

Batch allocation failure: the table is freed on its own after a grace period
(``pt_rcu_head`` shares storage with ``pt_list``/``pmd_huge_pte``, unused for
PTE tables at that point).

THP (mm/khugepaged.c, mm/huge_memory.c, v6.15): ``collapse_huge_page()``
keeps the PTE table it unhooks (deposited) and ``zap_huge_pmd()`` frees a
deposited table with ``pte_free()``, at once: not through ``call_rcu()``.
PT_RECLAIM left that path alone; the walkers are held off at the collapse,
by ``tlb_remove_table_sync_one()`` after ``pmdp_collapse_flush()``, which is
still the MMU_GATHER_RCU_TABLE_FREE IPI under PT_RECLAIM (the 2026
``synchronize_rcu()`` fallback, 1fb3d8c20bfa, replaced only the batch
fallback's use of it).  An RCU-only walker cannot hold the old table: the
collapse runs under the mmap write lock and the anon_vma lock.
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

NAME = "full-rcu"
KERNEL = "PT_RECLAIM + MMU_GATHER_RCU_TABLE_FREE (x86-64 v6.14+)"
SAFE_ON = ("native", "native+pt-reclaim", "xen-pv", "broadcast", "native+batch-fail",
           "xen-pv+batch-fail", "broadcast+batch-fail", "native+pt-reclaim+batch-fail",
           "native+lazy",
           "native+secondary-mmu", "native+switch", "native+file", "xen-pv+file",
           "broadcast+file", "arm64", "arm64+batch-fail",
           "native+thp", "native+thp+lazy", "xen-pv+thp", "broadcast+thp",
           "native+hugetlb", "xen-pv+hugetlb", "broadcast+hugetlb", "arm64+hugetlb")


class MmuTableBatch:
    """struct mmu_table_batch."""

    __slots__ = ("tables",)

    def __init__(self) -> None:
        self.tables: list = []


def tlb_remove_table_smp_sync(cpu, info) -> None:
    """Simply deliver the interrupt."""


def tlb_remove_table_sync_one(cpu):
    """mm/mmu_gather.c (MMU_GATHER_RCU_TABLE_FREE): an IPI to every other
    CPU, waiting for each; enough for IRQ-off walkers, not an RCU grace
    period.  Under PT_RECLAIM only collapse_huge_page() calls it."""
    yield from smp_call_function(cpu, tlb_remove_table_smp_sync, None, True,
                                 "tlb_remove_table_sync_one")


def __tlb_remove_table(cpu, table) -> None:
    """include/asm-generic/tlb.h: __tlb_remove_table() = pagetable_dtor_free()."""
    pagetable_free(cpu, table, "__tlb_remove_table")


def tlb_remove_table_rcu(cpu, batch: MmuTableBatch) -> None:
    for table in batch.tables:
        __tlb_remove_table(cpu, table)


def __tlb_remove_table_one_rcu(cpu, table) -> None:
    __tlb_remove_table(cpu, table)


def __tlb_remove_table_one(tlb: MmuGather, table) -> None:
    """mm/mmu_gather.c (CONFIG_PT_RECLAIM): call_rcu() on the ptdesc."""
    trace(tlb.cpu, f"__tlb_remove_table_one(pfn {table.pfn:#x}): call_rcu")
    call_rcu(tlb.cpu, __tlb_remove_table_one_rcu, table, "__tlb_remove_table_one_rcu")


def tlb_table_invalidate(tlb: MmuGather):
    if tlb_needs_table_invalidate(tlb):
        yield from tlb_flush_mmu_tlbonly(tlb)


def tlb_table_flush(tlb: MmuGather):
    if tlb.batch is not None:
        yield from tlb_table_invalidate(tlb)
        call_rcu(tlb.cpu, tlb_remove_table_rcu, tlb.batch, "tlb_remove_table_rcu")
        tlb.batch = None


def tlb_remove_table(tlb: MmuGather, table):
    """mm/mmu_gather.c: tlb_remove_table()."""
    if tlb.batch is None:
        if gfp_nowait_fails(tlb, "mmu_table_batch"):
            yield from tlb_table_invalidate(tlb)
            __tlb_remove_table_one(tlb, table)
            return
        tlb.batch = MmuTableBatch()
    tlb.batch.tables.append(table)
    tlb.m.h.emit(tlb.cpu.id, "table_batch", pfn=table.pfn, gen=table.gen)
    if len(tlb.batch.tables) == MAX_TABLE_BATCH:
        yield from tlb_table_flush(tlb)


def pte_free_tlb(tlb: MmuGather, pte, address: int):
    """pte_free_tlb() -> ___pte_free_tlb(): paravirt_release_pte();
    tlb_remove_ptdesc()."""
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


def tlb_flush_mmu(tlb: MmuGather):
    """mm/mmu_gather.c: tlb_flush_mmu() = tlbonly, then tlb_flush_mmu_free():
    the table batch to RCU, then the data pages."""
    yield from tlb_flush_mmu_tlbonly(tlb)
    yield from tlb_table_flush(tlb)
    tlb_batch_pages_flush(tlb)
