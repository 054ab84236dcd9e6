"""Planted bug: RCU table freeing without ``tlb_table_invalidate()``: the
single-table fallback (and a full table batch) hands the table to its free
path without first flushing the paging-structure caches.

Kernel: d86564a2f085 "mm/tlb, x86/mm: Support invalidating TLB caches for
RCU_TABLE_FREE" (Peter Zijlstra, v4.19, the 2018 'tlb-fixes' merge
706a1ea65e6f) added ``tlb_table_invalidate()`` because the RCU free only
waits for software walkers; 0ed1325967ab "mm/mmu_gather: invalidate TLB
correctly on batch allocation failure and flush" (Feb 2020) fixed the same
hole again for powerpc radix, where ``HAVE_RCU_TABLE_NO_INVALIDATE`` had
turned it off although the radix MMU walks the Linux tables in hardware.
This mutant is ``tlb_needs_table_invalidate()`` returning false (the
sparc64 / powerpc-hash answer) on x86.

Built from the correct semi-RCU strategy.
"""

from pathlib import Path

from impls.machine.plugin import load_module_file
from impls.xen_semi_rcu import mmu_gather as correct

NAME = "no-table-invalidate"
PLANTED = {"env": "native+batch-fail", "kind": "strategy", "check": "stale-psc"}


def tlb_needs_table_invalidate(tlb) -> bool:
    return False  # BUG: x86 hardware walks (and caches) the Linux page tables


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
