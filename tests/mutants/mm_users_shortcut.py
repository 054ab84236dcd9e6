"""Planted bug: the pre-2018 shortcut in ``tlb_remove_table()``: "when there
are less than two users of this mm there cannot be a concurrent page-table
walk", so the table is freed at once, before any TLB flush.

Kernel: mm/memory.c ``tlb_remove_table()`` (v3.0..v4.18)::

    if (atomic_read(&tlb->mm->mm_users) < 2) {
            __tlb_remove_table(table);
            return;
    }

285994a62c80 "arm64: Invalidate the TLB corresponding to intermediate page
table levels" (Catalin Marinas, 2015; Fixes 5e5f6dc10546) already hit it:
"When the mm->mm_users < 2, tlb_remove_table() does not do any batching and
page table pages are freed before tlb_finish_mmu() which performs the actual
TLB invalidation".  The shortcut was removed by "mm/tlb: Remove
tlb_remove_table() non-concurrent condition" (Peter Zijlstra, the 2018
'tlb-fixes' merge 706a1ea65e6f): the hardware walker (this CPU's own
paging-structure cache, speculative walks, lazy-TLB CPUs) is a concurrent
reader whatever ``mm_users`` says, and ``exit_mmap()`` runs with
``mm_users == 0``.

MODEL: ``mm_users`` is the number of CPUs whose current task runs the mm.

Built from the correct semi-RCU strategy.
"""

from pathlib import Path

from impls.machine.plugin import load_module_file
from impls.xen_semi_rcu import mmu_gather as correct
from impls.xen_semi_rcu.mmu_gather import __tlb_remove_table

NAME = "mm-users-shortcut"
PLANTED = {"env": "native", "kind": "strategy", "check": "stale-psc"}


def mm_users(tlb) -> int:
    return sum(1 for c in tlb.m.cpus if c.current_mm is tlb.mm)


def tlb_remove_table(tlb, table):
    """mm/memory.c (v4.18): tlb_remove_table()."""
    if mm_users(tlb) < 2:  # BUG: "there cannot be a concurrent page-table walk"
        __tlb_remove_table(tlb.cpu, table)
        return
    yield from correct.tlb_remove_table(tlb, table)


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
