"""Planted bug: ``__tlb_remove_page_size()`` frees the batch on the spot when
it is full and no further batch page can be allocated, instead of telling the
caller to flush the TLB first.

Kernel: the mmu_gather contract since the 2011 rework (seed S4, "mm:
mmu_gather rework", Peter Zijlstra; mainline d16dfc550f53) is that a full
batch makes ``__tlb_remove_page*()`` return true and the caller runs
``tlb_flush_mmu()`` (flush, *then* free): ``tlb_remove_page_size()`` does so
at once, ``zap_pte_range()`` breaks out, flushes the TLB under the PTL and
frees after dropping it (1cf35d47712d).  A batch that frees itself when full
(``tlb_next_batch()`` failed: ``GFP_NOWAIT`` allocation failure or
``MAX_GATHER_BATCH_COUNT``) releases pages whose PTEs were cleared but whose
TLB entries are still live on every CPU running the mm.

Built from the correct native direct-free strategy.
"""

from pathlib import Path

from impls.machine import mmu_gather as generic
from impls.machine.kernel import PAGE_SIZE, tlb_batch_pages_flush
from impls.machine.plugin import load_module_file
from impls.native import mmu_gather as correct

NAME = "batch-full-frees-now"
PLANTED = {"env": "native", "kind": "strategy", "check": "ordering", "also": ("stale-psc",)}


def __tlb_remove_page_size(tlb, page, page_size=PAGE_SIZE):
    """mm/mmu_gather.c: __tlb_remove_page_size()."""
    if generic.__tlb_remove_page_size(tlb, page, page_size):
        tlb_batch_pages_flush(tlb)  # BUG: "make room" by freeing now; no TLB flush yet
    return False


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
