"""Planted bug: RCU table freeing whose ``tlb_remove_table_sync_one()`` does
nothing, as collapse_huge_page() was before 2ba99c5e0881: the collapse
unhooks the PTE table with ``pmdp_collapse_flush()`` and keeps it (deposited)
without waiting for the IRQ-off GUP-fast walkers that may still be reading
it.

Kernel: 2ba99c5e0881 "mm/khugepaged: fix GUP-fast interaction by sending
IPI" (Jann Horn, Nov 2022, v6.1): "lockless_pages_from_mm() still requires
that the page table is not concurrently freed or reused to store non-PTE
data ... deposited page tables can be freed when a THP page somewhere in the
mm is removed ... Fix it by sending IPIs (if the architecture uses
semi-RCU-style page table freeing) before freeing/reusing page tables."  On a
platform whose flush is an IPI the collapse's flush_tlb_range() waits for the
walker anyway (x86 bare metal); with INVLPGB nothing does: a later zap of the
huge PMD frees the deposited table with ``pte_free()`` while a walker that
read the old PMD is still in it (UAF-TABLE).

Built from the correct full-RCU strategy: only ``tlb_remove_table_sync_one``
(the !MMU_GATHER_RCU_TABLE_FREE empty inline) differs.
"""

from pathlib import Path

from impls.machine.plugin import load_module_file
from impls.pt_reclaim import mmu_gather as correct

NAME = "khugepaged-no-sync-ipi"
PLANTED = {"env": "broadcast+thp", "kind": "strategy", "check": "table-uaf"}


def tlb_remove_table_sync_one(cpu):
    """include/asm-generic/tlb.h: tlb_remove_table_sync_one()."""
    return  # BUG: no IPI: IRQ-off walkers of the collapsed table are not waited for
    yield  # noqa: B901 (a generator hook)


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
