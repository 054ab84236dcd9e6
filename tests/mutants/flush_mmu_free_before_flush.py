"""Planted bug: ``tlb_flush_mmu()`` frees the gathered pages (page-table
pages included) *before* ``tlb_flush_mmu_tlbonly()`` has flushed the TLB.

Kernel: the rule of include/asm-generic/tlb.h is unhook < TLB invalidate <
free.  1cf35d47712d "mm: split 'tlb_flush_mmu()' into tlb flushing and memory
freeing parts" (Linus Torvalds, v3.15) made the two phases separate calls
(``tlb_flush_mmu_tlbonly()`` under the PTL, ``tlb_flush_mmu_free()`` after it);
getting their order backwards on any path (here: every ``tlb_flush_mmu()``,
the forced flush of a full batch and ``tlb_finish_mmu()``) frees pages other
CPUs still translate through their TLBs and tables they still cache, and on
native x86 also frees the table before the flush IPI has waited out a GUP-fast
walker.

Built from the correct native direct-free strategy.
"""

from pathlib import Path

from impls.machine.kernel import tlb_flush_mmu_tlbonly
from impls.machine.plugin import load_module_file
from impls.native import mmu_gather as correct
from impls.native.mmu_gather import tlb_flush_mmu_free

NAME = "flush-mmu-free-before-flush"
PLANTED = {"env": "native", "kind": "strategy", "check": "ordering"}


def tlb_flush_mmu(tlb):
    """mm/mmu_gather.c: tlb_flush_mmu()."""
    tlb_flush_mmu_free(tlb)              # BUG: free first ...
    yield from tlb_flush_mmu_tlbonly(tlb)  # ... then flush


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
