"""Planted bug: ``pte_free_tlb()`` and friends do not set
``tlb->freed_tables``, so the flush that precedes the free is a leaf-only
flush: on x86 it skips lazy-TLB CPUs (``should_flush_tlb()``), whose
paging-structure caches still point at the freed tables.

Kernel: 22a61c3c4f13 "asm-generic/tlb: Track freeing of page-table
directories in struct mmu_gather" (Peter Zijlstra / Will Deacon, v4.20) added
``freed_tables``; 016c4d92cd16 "x86/mm/tlb: Add freed_tables argument to
flush_tlb_mm_range" (Rik van Riel, v4.20) uses it so that the lazy-TLB
optimisation of the same series only skips lazy CPUs when no page tables are
freed.  A ``p?d_free_tlb()`` that forgets the flag (as the pre-2018
asm-generic macros did, when they only widened the range) gets exactly the
flush of an ordinary munmap and leaves lazy CPUs caching the freed table
(b956575bed91).

Built from the correct native direct-free strategy.
"""

from pathlib import Path

from impls.machine.kernel import (
    PAGE_SIZE,
    paravirt_release_pmd,
    paravirt_release_pte,
    paravirt_release_pud,
    tlb_flush_p4d_range,
    tlb_flush_pmd_range,
    tlb_flush_pud_range,
)
from impls.machine.plugin import load_module_file
from impls.native import mmu_gather as correct
from impls.native.mmu_gather import paravirt_tlb_remove_table

NAME = "no-freed-tables"
PLANTED = {"env": "native+lazy", "kind": "strategy", "check": "ordering", "also": ("stale-psc",)}


def pte_free_tlb(tlb, pte, address):
    tlb_flush_pmd_range(tlb, address, PAGE_SIZE)
    # BUG: tlb->freed_tables = 1 missing
    paravirt_release_pte(tlb.cpu, pte)
    yield from paravirt_tlb_remove_table(tlb, pte)


def pmd_free_tlb(tlb, pmd, address):
    tlb_flush_pud_range(tlb, address, PAGE_SIZE)
    # BUG: tlb->freed_tables = 1 missing
    paravirt_release_pmd(tlb.cpu, pmd)
    yield from paravirt_tlb_remove_table(tlb, pmd)


def pud_free_tlb(tlb, pud, address):
    tlb_flush_p4d_range(tlb, address, PAGE_SIZE)
    # BUG: tlb->freed_tables = 1 missing
    paravirt_release_pud(tlb.cpu, pud)
    yield from paravirt_tlb_remove_table(tlb, pud)


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
