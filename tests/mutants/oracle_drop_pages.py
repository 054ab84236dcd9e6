"""Planted bug (oracle test): ``__tlb_remove_page_size()`` forgets the page it
is given (never freed), while nothing else looks wrong: the kind of bug only
the differential comparison and the quiescent accounting see.
"""

from impls.native.mmu_gather import *  # noqa: F401,F403  (the correct strategy, then one change)

NAME = "direct-drop-batched-pages"
SAFE_ON = ()


def __tlb_remove_page_size(tlb, page, page_size):
    return False  # BUG: the page is not queued, so never freed
