"""Planted bug: x86 ``flush_tlb_range()`` as it was before 3ef938c35035: it
passes ``freed_tables = false``, so when ``pmdp_collapse_flush()`` uses it to
zap a PMD that points to a PTE table, ``native_flush_tlb_multi()`` skips the
lazy-TLB CPUs (``should_flush_tlb()``), whose paging-structure caches may
still point to the table.

Kernel: 3ef938c35035 "x86/mm: Fix flush_tlb_range() when used for zapping
normal PMDs" (Jann Horn, Jan 2025): "On the following path, flush_tlb_range()
can be used for zapping normal PMD entries (PMD entries that point to page
tables) together with the PTE entries in the pointed-to page table:
collapse_pte_mapped_thp / pmdp_collapse_flush / flush_tlb_range ... The
arch-specific code needs to know about this ... lazy TLB mode ... (which
requires IPIs to be sent even to CPUs in lazy TLB mode)".  The collapsed
table is deposited and later freed by ``zap_huge_pmd()`` with ``pte_free()``
before the lazy CPUs that could cache a pointer to it invalidated it
(ORDERING, I5: the flush must reach every CPU with the mm in CR3; STALE-PSC
when one of them did walk into it speculatively).

The native platform with only its ``flush_tlb_range`` hook changed; run with
the correct full-RCU strategy.
"""

from pathlib import Path

from impls.machine.pgtable import PAGE_SHIFT
from impls.machine.plugin import load_module_file
from impls.machine.tlbflush import flush_tlb_mm_range
from impls.platforms import native as correct

NAME = "flush-tlb-range-no-freed-tables"
PLANTED = {"env": "native+thp+lazy", "kind": "platform", "check": "ordering"}


def flush_tlb_range(cpu, mm, start, end):
    """arch/x86/include/asm/tlbflush.h: flush_tlb_range()."""
    yield from flush_tlb_mm_range(cpu, mm, start, end, PAGE_SHIFT, False)  # BUG: freed_tables


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
