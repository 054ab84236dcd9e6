"""Planted bug (oracle test): pte_free_tlb() & co. do not set
``tlb->freed_tables``, so x86 treats the final flush as a leaf-only flush and
skips lazy-TLB CPUs, whose paging-structure caches still point at the freed
tables.  ``freed_tables`` was added to mmu_gather for exactly this (Will
Deacon / Peter Zijlstra, 2018) and to flush_tlb_mm_range() by 016c4d92cd16.
"""

from impls.machine.kernel import (
    PAGE_SIZE,
    paravirt_release_pmd,
    paravirt_release_pte,
    paravirt_release_pud,
    tlb_flush_p4d_range,
    tlb_flush_pmd_range,
    tlb_flush_pud_range,
)
from impls.native.mmu_gather import KERNEL, paravirt_tlb_remove_table, tlb_flush_mmu  # noqa: F401

NAME = "direct-no-freed-tables"
SAFE_ON = ()


def pte_free_tlb(tlb, pte, address):
    tlb_flush_pmd_range(tlb, address, PAGE_SIZE)  # BUG: no tlb->freed_tables = 1
    paravirt_release_pte(tlb.cpu, pte)
    yield from paravirt_tlb_remove_table(tlb, pte)


def pmd_free_tlb(tlb, pmd, address):
    tlb_flush_pud_range(tlb, address, PAGE_SIZE)
    paravirt_release_pmd(tlb.cpu, pmd)
    yield from paravirt_tlb_remove_table(tlb, pmd)


def pud_free_tlb(tlb, pud, address):
    tlb_flush_p4d_range(tlb, address, PAGE_SIZE)
    paravirt_release_pud(tlb.cpu, pud)
    yield from paravirt_tlb_remove_table(tlb, pud)
