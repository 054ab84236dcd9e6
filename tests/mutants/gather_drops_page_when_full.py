"""Planted bug: when the page batch is full, ``__tlb_remove_page_size()``
returns true *without* queueing the page, and the caller (``zap_pte_range()``,
which has already cleared the PTE and dropped the rmap) does not queue it
again: the page is never freed.

Kernel: "[RFC PATCH 2/4] mm: Change the interface for __tlb_remove_page"
(Aneesh Kumar K.V, linux-mm, May 2016) made a true return mean "not queued:
flush and retry", and ``zap_pte_range()`` carried the page over in
``pending_page`` to queue it after the flush; later in 2016 the interface went
back to "queued; flush now" and ``pending_page`` was removed.  Mixing the two
conventions (this mutant: the 'not queued' callee with today's caller) leaks
every page that hits a full batch.  The accounting check sees a page with a
reference but no mapping at quiescence; run in lockstep with a correct
strategy, the differential check sees a different number of leaked pages.

Built from the correct full-RCU strategy (so that only data pages go through the
page batch: the leak is a user page, which the differential check sees too).
"""

from pathlib import Path

from impls.machine.kernel import PAGE_SIZE
from impls.machine.mmu_gather import tlb_next_batch
from impls.machine.page_alloc import TABLE
from impls.machine.plugin import load_module_file
from impls.pt_reclaim import mmu_gather as correct

NAME = "gather-drops-page-when-full"
PLANTED = {"env": "native+lazy", "kind": "strategy", "check": "accounting", "also": ("divergence",)}


def __tlb_remove_page_size(tlb, page, page_size=PAGE_SIZE):
    """mm/mmu_gather.c: __tlb_remove_page_size()."""
    mx, pages = tlb.batches[tlb.active]
    if len(pages) >= mx - 1 and not tlb_next_batch(tlb):
        return True  # BUG: "not queued, flush and retry" -- but nobody retries
    pages.append(page)
    tlb.m.h.emit(tlb.cpu.id, "tlb_batch_page", pfn=page.pfn, gen=page.gen, table=page.state == TABLE)
    return False


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
