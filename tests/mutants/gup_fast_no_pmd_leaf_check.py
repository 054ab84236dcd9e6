"""Planted bug: GUP-fast without the leaf test of ``gup_fast_pmd_range()``:
every present PMD goes to ``gup_fast_pte_range()``, so a huge PMD (or the
not-present value of one being split, which x86 keeps ``_PAGE_PSE`` in) is
followed as a pointer to a PTE table, and the THP folio it maps is read as
page-table memory.

Kernel: the test is as old as huge pages in GUP-fast: x86's
``gup_pmd_range()`` sent ``pmd_large()`` entries to ``gup_huge_pmd()`` since
the hugetlb support of 2008, and the generic RCU GUP-fast, 2667f50e8b81 "mm:
introduce a general RCU get_user_pages_fast()" (v3.18), reads the PMD once
and tests ``pmd_trans_huge() || pmd_huge()`` before ``gup_pte_range()``;
v6.15's ``gup_fast_pmd_range()`` tests ``pmd_leaf()``.  The same classification
error, made by a walker that trusts ``pmd_present()`` alone, is what
1a5a9906d4e8 "mm: thp: fix pmd_bad() triggering in code paths holding
mmap_sem read mode" and 0d940a9b270b "mm/pgtable: allow
pte_offset_map[_lock]() to fail" guard the pte_offset_map() users against.
The primer's BAD-WALK (I9).

Built from the correct full-RCU strategy: only ``gup_fast_pmd_range()`` of
the machine's mm/gup.c copy differs.
"""

from pathlib import Path

from impls.machine import gup as machine_gup
from impls.machine.gup import WHO
from impls.machine.pgtable import pmd_present
from impls.machine.plugin import load_module_file
from impls.pt_reclaim import mmu_gather as correct

NAME = "gup-fast-no-pmd-leaf-check"
PLANTED = {"env": "native+thp", "kind": "strategy", "check": "bad-walk"}


def gup_fast_pmd_range(cpu, pmdp, addr, write):
    """mm/gup.c: gup_fast_pmd_range()."""
    pmd = cpu.m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, WHO)
    if not pmd_present(pmd):
        return None
    # BUG: no pmd_leaf() test: a huge PMD is taken for a table pointer
    return (yield from gup_fast_pte_range(cpu, pmd, pmdp, addr, write))  # noqa: F821 (rebound below)


_rebind = load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind
_rebind(machine_gup, globals())  # gup_fast() & co., calling the gup_fast_pmd_range() above
_rebind(correct, globals())
