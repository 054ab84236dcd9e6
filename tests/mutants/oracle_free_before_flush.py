"""Planted bug (oracle test): tlb_flush_mmu() frees the batch *before*
flushing the TLB: the mmu_gather order "flush, then free" inverted.

The order was made explicit by 1cf35d47712d "mm: split 'tlb_flush_mmu()'
into tlb flushing and memory freeing parts" (2014); freeing first lets any
CPU that still caches the translations use freed pages and tables.
"""

from impls.machine.kernel import tlb_batch_pages_flush, tlb_flush_mmu_tlbonly
from impls.native.mmu_gather import (  # noqa: F401  (the correct strategy, then one change)
    KERNEL,
    paravirt_tlb_remove_table,
    pmd_free_tlb,
    pte_free_tlb,
    pud_free_tlb,
)

NAME = "direct-free-before-flush"
SAFE_ON = ()


def tlb_flush_mmu(tlb):
    tlb_batch_pages_flush(tlb)            # BUG: free first ...
    yield from tlb_flush_mmu_tlbonly(tlb)  # ... flush second
