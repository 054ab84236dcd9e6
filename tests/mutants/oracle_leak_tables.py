"""Planted bug (oracle test): page-table pages are unhooked and released to
the hypervisor hook but never queued for freeing: they leak.  (The accounting
invariant I11: every unhooked table is freed exactly once.)
"""

from impls.machine.kernel import PAGE_SIZE, paravirt_release_pte, tlb_flush_pmd_range
from impls.native.mmu_gather import *  # noqa: F401,F403  (the correct strategy, then one change)

NAME = "direct-leak-pte-tables"
SAFE_ON = ()


def pte_free_tlb(tlb, pte, address):
    tlb_flush_pmd_range(tlb, address, PAGE_SIZE)
    tlb.freed_tables = True
    paravirt_release_pte(tlb.cpu, pte)
    return  # BUG: the table is never queued
    yield  # noqa: B901
