"""Native direct free (``direct``): page-table pages are freed like data
pages, by ``tlb_remove_page()`` after the TLB flush.

Kernel: x86-64, v4.19 .. v6.14, ``!CONFIG_PARAVIRT``, ``!CONFIG_PT_RECLAIM``
(no ``MMU_GATHER_TABLE_FREE``): arch/x86/mm/pgtable.c
``paravirt_tlb_remove_table()`` is ``pagetable_dtor(); tlb_remove_page()``;
with ``CONFIG_PARAVIRT`` on bare metal, ``native_tlb_remove_table()`` did the
same.  Gone from x86 since v6.15 (a37259732a7d, f2c5c2105827); still the
generic ``tlb_remove_table()`` of architectures without MMU_GATHER_TABLE_FREE.

Ordering (include/asm-generic/tlb.h): the caller unhooks the table (clears the
PMD/PUD/PGD entry), ``p?d_free_tlb()`` widens the flush range and sets
``freed_tables``, the page goes into the same batch as data pages, and
``tlb_flush_mmu()`` frees the batch only after ``tlb_flush_mmu_tlbonly()``:
unhook < flush < free.

Hardware walkers: the flush has ``freed_tables``, so x86 IPIs every CPU of
``mm_cpumask``, lazy ones included, and each drops its paging-structure
caches (or switches to init_mm).

IRQ-off software walkers (GUP-fast): safe *only* because the native flush is a
synchronous IPI: a CPU inside ``local_irq_save()`` cannot ack it until its
walk is over, and a walk starting after the IPI cannot reach the unhooked
table.  Unsafe where the flush is not an IPI (Xen PV hypercall, INVLPGB,
RAR, arm64 TLBI): seed S0, the 2012 report.

RCU-only software walkers (``pte_offset_map()`` with IRQs on): not held off at
all; unsafe as soon as tables are freed while such walkers run (PT_RECLAIM,
seed S2).

Batch allocation failure: there is no table batch; a full page batch forces
``tlb_flush_mmu()`` (flush, then free) at once, which keeps the order.

Unsharing a hugetlb PMD table: without MMU_GATHER_RCU_TABLE_FREE,
``tlb_remove_table_sync_one()`` is empty; "the expectation is that the
tlb_flush_mmu_tlbonly() would have issued required IPIs already"
(``tlb_flush_unshared_tables()``), which holds where the flush is an IPI.
THP (mm/khugepaged.c, mm/huge_memory.c, v6.15): ``collapse_huge_page()``
keeps the PTE table it unhooks (deposited); ``zap_huge_pmd()`` later frees a
deposited table with ``pte_free()``, at once.  Without
MMU_GATHER_RCU_TABLE_FREE, ``tlb_remove_table_sync_one()`` is an empty
inline (include/asm-generic/tlb.h): what holds IRQ-off walkers off the old
table is the collapse's own ``flush_tlb_range()`` in
``pmdp_collapse_flush()``, a synchronous IPI to every CPU of ``mm_cpumask``
(and GUP-fast only walks ``current->mm``).  Safe on native; on a platform
whose flush is not an IPI, nothing waits for the walker.
"""

from __future__ import annotations

from impls.machine.kernel import (
    PAGE_SIZE,
    MmuGather,
    paravirt_release_pmd,
    paravirt_release_pte,
    paravirt_release_pud,
    tlb_batch_pages_flush,
    tlb_flush_mmu_tlbonly,
    tlb_flush_p4d_range,
    tlb_flush_pmd_range,
    tlb_flush_pud_range,
    tlb_remove_page,
)

NAME = "direct"
KERNEL = "x86-64 v4.19-v6.14, !PARAVIRT, !PT_RECLAIM: paravirt_tlb_remove_table() = tlb_remove_page()"
SAFE_ON = ("native", "native+batch-fail", "native+lazy",
           "native+secondary-mmu", "native+switch", "native+file", "native+thp", "native+thp+lazy",
           "native+hugetlb")


def paravirt_tlb_remove_table(tlb: MmuGather, table):
    """arch/x86/mm/pgtable.c (!PARAVIRT, !PT_RECLAIM): pagetable_dtor();
    tlb_remove_page() -- the table joins the data-page batch."""
    yield from tlb_remove_page(tlb, table)


def pte_free_tlb(tlb: MmuGather, pte, address: int):
    """include/asm-generic/tlb.h: pte_free_tlb() -> ___pte_free_tlb()."""
    tlb_flush_pmd_range(tlb, address, PAGE_SIZE)
    tlb.freed_tables = True
    paravirt_release_pte(tlb.cpu, pte)
    yield from paravirt_tlb_remove_table(tlb, pte)


def pmd_free_tlb(tlb: MmuGather, pmd, address: int):
    """include/asm-generic/tlb.h: pmd_free_tlb() -> ___pmd_free_tlb()."""
    tlb_flush_pud_range(tlb, address, PAGE_SIZE)
    tlb.freed_tables = True
    paravirt_release_pmd(tlb.cpu, pmd)
    yield from paravirt_tlb_remove_table(tlb, pmd)


def pud_free_tlb(tlb: MmuGather, pud, address: int):
    """include/asm-generic/tlb.h: pud_free_tlb() -> ___pud_free_tlb()."""
    tlb_flush_p4d_range(tlb, address, PAGE_SIZE)
    tlb.freed_tables = True
    paravirt_release_pud(tlb.cpu, pud)
    yield from paravirt_tlb_remove_table(tlb, pud)


def tlb_remove_table_sync_one(cpu):
    """include/asm-generic/tlb.h (!CONFIG_MMU_GATHER_RCU_TABLE_FREE): empty."""
    return
    yield  # pragma: no cover


def tlb_flush_mmu_free(tlb: MmuGather) -> None:
    """mm/mmu_gather.c: tlb_flush_mmu_free() without MMU_GATHER_TABLE_FREE:
    only the page batch, tables included."""
    tlb_batch_pages_flush(tlb)


def tlb_flush_mmu(tlb: MmuGather):
    """mm/mmu_gather.c: tlb_flush_mmu(): flush, then free."""
    yield from tlb_flush_mmu_tlbonly(tlb)
    tlb_flush_mmu_free(tlb)
