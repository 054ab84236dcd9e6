"""Planted bug: ``should_flush_tlb()`` without the ``LOADED_MM_SWITCHING``
case: a CPU inside ``switch_mm_irqs_off()`` whose ``loaded_mm`` still reads
``LOADED_MM_SWITCHING`` is skipped by a flush that does not free tables.

Kernel: fea4e317f9e7 "x86/mm: Eliminate window where TLB flushes may be
inadvertently skipped" (Dave Hansen, 2025, CVE-2025-37964, in v6.15 and the
stable trees): "There is a window in the mm switching code where the new CR3
is set and the CPU should be getting TLB flushes for the new mm.  But
should_flush_tlb() has a bug and suppresses the flush."  The switching CPU
read ``tlb_gen`` before the flush incremented it, so ``choose_new_asid()``
reloaded its PCID without a flush; nobody flushes it afterwards.  The bug came
with 6db2526c1d69 "x86/mm/tlb: Only trim the mm_cpumask once a second" (Rik
van Riel, 2024), which made ``should_flush_tlb()`` skip CPUs whose
``loaded_mm`` is not the flushed mm; this mutant is that version.

Built from the correct native platform (PCIDs on).
"""

from pathlib import Path

from impls.machine.plugin import load_module_file
from impls.platforms import native as correct

NAME = "should-flush-tlb-skips-switching"
PLANTED = {"env": "native+switch", "kind": "platform", "check": "ordering", "strategy": "full-rcu",
           "also": ("stale-tlb",)}


def should_flush_tlb(target, info):
    """arch/x86/mm/tlb.c: should_flush_tlb() of 6db2526c1d69."""
    # Lazy TLB will get flushed at the next context switch.
    if target.is_lazy:
        return False
    # BUG: no "loaded_mm == LOADED_MM_SWITCHING: assume the worst and flush"
    # The target mm is loaded, and the CPU is not lazy.
    if target.loaded_mm is info.mm:
        return True
    # In cpumask, but not the loaded mm? Periodically remove by flushing.
    return info.trim_cpumask


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
