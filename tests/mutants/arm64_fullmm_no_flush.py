"""Planted bug: arm64's ``tlb_flush()`` does nothing for a fullmm gather
(``exit_mmap()``), even when page tables are freed: lazy CPUs that still have
the dying mm in TTBR0 keep walk-cache entries to the freed tables.

Kernel: 5a7862e83000 "arm64: tlbflush: avoid flushing when fullmm == 1"
(Will Deacon, v4.3) made ``tlb_flush()`` return at once for fullmm, relying
on the ASID allocator to flush before the ASID is reused.  That covers leaf
entries, not the walk cache of tables freed while a CPU can still walk them:
f270ab88fdf2 "arm64: tlb: Adjust stride and type of TLBI according to
mmu_gather" (v4.20) put back ``if (!last_level) flush_tlb_mm(tlb->mm)``:
"If we're tearing down the address space then we only care about
invalidating the walk-cache".  This mutant is the v4.3 version.

Built from the correct arm64 platform.
"""

from pathlib import Path

from impls.machine.mmu_gather import tlb_get_unmap_shift, tlb_tables_changed
from impls.machine.plugin import load_module_file
from impls.platforms import arm64 as correct

NAME = "arm64-fullmm-no-flush"
PLANTED = {"env": "arm64", "kind": "platform", "check": "ordering", "strategy": "full-rcu",
           "also": ("stale-psc",)}


def tlb_flush(tlb):
    """arch/arm64/include/asm/tlb.h: tlb_flush() of v4.3."""
    if tlb.fullmm:
        return  # BUG: no flush_tlb_mm() when tables were freed
    last_level = not tlb_tables_changed(tlb)
    stride_shift = tlb_get_unmap_shift(tlb)
    yield from __flush_tlb_range(tlb.cpu, tlb.mm, tlb.start, tlb.end, stride_shift, last_level)  # noqa: F821


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
