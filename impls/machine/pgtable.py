"""arch/x86/include/asm/pgtable*.h: x86-64 4-level page-table geometry and
entry encoding.

Levels are numbered like the tables they describe: a level-1 table is a PTE
table (its entries map 4 KiB pages), level 2 a PMD table (entries point to PTE
tables), level 3 a PUD table, level 4 the PGD (P4D is folded, as with 4-level
paging).  Entry values use the x86 encoding, ``pfn << 12 | flags``, so a kernel
developer can read ``pmd=0x3067`` at a glance.

MODEL: only the entry classes the checks need are modelled: none, a pointer to
a lower table (``_PAGE_TABLE``), and a present 4 KiB leaf.  Huge leaves,
swap/migration entries and transient-invalid PMDs are not.
"""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PMD_SHIFT = 21
PUD_SHIFT = 30
PGDIR_SHIFT = 39
PTRS_PER_TABLE = 512
PMD_SIZE = 1 << PMD_SHIFT
PUD_SIZE = 1 << PUD_SHIFT
PGDIR_SIZE = 1 << PGDIR_SHIFT
PMD_MASK = ~(PMD_SIZE - 1)
PUD_MASK = ~(PUD_SIZE - 1)
PGDIR_MASK = ~(PGDIR_SIZE - 1)
TASK_SIZE = 1 << 47

#: shift of the VA bits that index a table of the given level
LEVEL_SHIFT = {1: PAGE_SHIFT, 2: PMD_SHIFT, 3: PUD_SHIFT, 4: PGDIR_SHIFT}
LEVEL_NAMES_SHORT = {1: "pte", 2: "pmd", 3: "pud", 4: "pgd"}
#: size of the VA range one table of the given level translates
TABLE_SPAN = {1: PMD_SIZE, 2: PUD_SIZE, 3: PGDIR_SIZE, 4: TASK_SIZE}

_PAGE_PRESENT = 0x001
_PAGE_RW = 0x002
_PAGE_USER = 0x004
_PAGE_ACCESSED = 0x020
_PAGE_DIRTY = 0x040
_PAGE_PSE = 0x080
_PAGE_SPECIAL = 0x200  # _PAGE_BIT_SOFTW1: pte_special(), a PFN mapping with no struct page to use
_PAGE_TABLE = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY
_PAGE_FLAGS = 0xFFF


_INDEX_MASK = PTRS_PER_TABLE - 1


def index(level: int, va: int) -> int:
    """pte_index()/pmd_index()/pud_index()/pgd_index()."""
    return (va >> LEVEL_SHIFT[level]) & _INDEX_MASK


def table_base(level: int, va: int) -> int:
    """First VA translated by the level-``level`` table that covers ``va``."""
    span = TABLE_SPAN[level]
    return va & ~(span - 1)


def mk_table(pfn: int) -> int:
    """pmd_populate()/pud_populate()/pgd_populate() value."""
    return (pfn << PAGE_SHIFT) | _PAGE_TABLE


def mk_pte(pfn: int, writable: bool, special: bool = False) -> int:
    flags = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED
    if writable:
        flags |= _PAGE_RW | _PAGE_DIRTY
    if special:
        flags |= _PAGE_SPECIAL  # pte_mkspecial(): vmf_insert_pfn()
    return (pfn << PAGE_SHIFT) | flags


def pte_special(v: int) -> bool:
    return bool(v & _PAGE_SPECIAL)


def entry_pfn(v: int) -> int:
    return v >> PAGE_SHIFT


def entry_present(v: int) -> bool:
    return bool(v & _PAGE_PRESENT)


def entry_writable(v: int) -> bool:
    return bool(v & _PAGE_RW)


def is_table_entry(v: int) -> bool:
    """pmd_present() && !pmd_leaf(): the entry points to a lower table."""
    return bool(v & _PAGE_PRESENT) and not (v & _PAGE_PSE)


def garbage_entry(pfn: int, gen: int, idx: int) -> int:
    """What a walker reads from a frame that is not (any more) a page table.

    MODEL: user data reinterpreted as an entry; a deterministic pattern that
    looks like a present table/leaf entry pointing at some low pfn, as the
    2012 report describes ("grab page from garbage pte").
    """
    return (((pfn * 7 + gen * 3 + idx) % 13) + 1) << PAGE_SHIFT | _PAGE_TABLE


def fmt_entry(v: int) -> str:
    if v == 0:
        return "none"
    return f"{v:#x}"


def page_align_ok(v: int) -> bool:
    return v % PAGE_SIZE == 0
