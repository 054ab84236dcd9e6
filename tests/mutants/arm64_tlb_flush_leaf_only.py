"""Planted bug: arm64's ``tlb_flush()`` issues last-level invalidations
(``TLBI VALE1IS``) whatever the gather says, also when page tables were
freed: the leaf entries go, but every CPU's walk cache keeps pointing at the
freed tables.

Kernel: arch/arm64/include/asm/tlb.h ``tlb_flush()`` derives ``last_level``
from the gather's table flags since f270ab88fdf2 "arm64: tlb: Adjust stride
and type of TLBI according to mmu_gather" (Will Deacon, v4.20), because
``VALE1IS`` does not touch the walk cache.  The same hole reopened in 2026 for
the hugetlb unshare flag: "arm64: tlb: Flush walk cache when unsharing PMD
tables" (Zeng Heng; Fixes: 8ce720d5bd91) -- "unshared_tables was not
considered, so the unshare still went down the VALE1IS path, and stale
PMD-level entries may remain in the hardware walk cache".  This mutant
considers no table flag at all.

Built from the correct arm64 platform.
"""

from pathlib import Path

from impls.machine.mmu_gather import tlb_get_unmap_shift
from impls.machine.plugin import load_module_file
from impls.platforms import arm64 as correct

NAME = "arm64-tlb-flush-leaf-only"
PLANTED = {"env": "arm64", "kind": "platform", "check": "stale-psc", "strategy": "full-rcu",
           "also": ("ordering",)}


def tlb_flush(tlb):
    """arch/arm64/include/asm/tlb.h: tlb_flush()."""
    last_level = True  # BUG: not !(tlb->freed_tables || tlb->unshared_tables)
    stride_shift = tlb_get_unmap_shift(tlb)
    if tlb.fullmm:
        if not last_level:
            yield from flush_tlb_mm(tlb.cpu, tlb.mm)  # noqa: F821 (rebound)
        return
    yield from __flush_tlb_range(tlb.cpu, tlb.mm, tlb.start, tlb.end, stride_shift, last_level)  # noqa: F821


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
