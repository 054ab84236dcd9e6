"""arch/x86/include/asm/pgtable*.h: x86-64 4-level page-table geometry and
entry encoding.

Levels are numbered like the tables they describe: a level-1 table is a PTE
table (its entries map 4 KiB pages), level 2 a PMD table (entries point to PTE
tables), level 3 a PUD table, level 4 the PGD (P4D is folded, as with 4-level
paging).  Entry values use the x86 encoding, ``pfn << 12 | flags``, so a kernel
developer can read ``pmd=0x3067`` at a glance.

PMD entries come in four classes (arch/x86/include/asm/pgtable.h, v6.15):
none; a pointer to a PTE table (``pmd_present() && !pmd_leaf()``); a huge
leaf mapping a 2 MiB folio (``_PAGE_PSE``, ``pmd_trans_huge()``); and the
transient value ``pmdp_invalidate()`` leaves while a huge PMD is split
(``pmd_mkinvalid()``: ``_PAGE_PRESENT`` cleared, ``_PAGE_PSE`` kept, so that
x86 ``pmd_present()`` and ``pmd_trans_huge()`` stay true for it, 027ef6c87853).

MODEL: swap and migration entries (PMD or PTE) and PROT_NONE are not
modelled; neither are 1 GiB PUD leaves.
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
#: _KERNPG_TABLE & ~_PAGE_ACCESSED, what pmd_bad() compares with
_KERNPG_TABLE_NOACC = _PAGE_PRESENT | _PAGE_RW | _PAGE_DIRTY


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


# -- huge PMDs (arch/x86/include/asm/pgtable.h) ----------------------------------

HPAGE_PMD_ORDER = PMD_SHIFT - PAGE_SHIFT
HPAGE_PMD_NR = 1 << HPAGE_PMD_ORDER
HPAGE_PMD_SIZE = PMD_SIZE
HPAGE_PMD_MASK = PMD_MASK


def mk_huge_pmd(pfn: int, writable: bool) -> int:
    """folio_mk_pmd() + pmd_mkdirty() + maybe_pmd_mkwrite(): a huge leaf."""
    return mk_pte(pfn, writable) | _PAGE_PSE


def pmd_none(v: int) -> bool:
    return v == 0


def pmd_present(v: int) -> bool:
    """x86 pmd_present(): true for a table pointer, a huge leaf, and the
    transient pmdp_invalidate() value (_PAGE_PSE is kept: 027ef6c87853)."""
    return bool(v & (_PAGE_PRESENT | _PAGE_PSE))


def pmd_trans_huge(v: int) -> bool:
    """x86 pmd_trans_huge(): _PAGE_PSE (a huge leaf, or one being split)."""
    return bool(v & _PAGE_PSE)


pmd_leaf = pmd_trans_huge  # x86 pmd_leaf(): _PAGE_PSE


def pmd_mkinvalid(v: int) -> int:
    """x86 pmd_mkinvalid(): clear _PAGE_PRESENT (and _PAGE_PROTNONE), keep
    the pfn and _PAGE_PSE: the value pmdp_invalidate() leaves."""
    return v & ~_PAGE_PRESENT


def pmd_access_permitted(v: int, write: bool) -> bool:
    """x86 pmd_access_permitted() -> __pte_access_permitted(): present, user,
    and writable for a write."""
    need = _PAGE_PRESENT | _PAGE_USER | (_PAGE_RW if write else 0)
    return (v & need) == need


def pmd_bad(v: int) -> bool:
    """x86 pmd_bad(): anything but a table pointer's flags (a huge leaf is
    "bad" too, which is why every walker tests pmd_trans_huge() first)."""
    return (v & _PAGE_FLAGS & ~(_PAGE_USER | _PAGE_ACCESSED)) != _KERNPG_TABLE_NOACC


def entry_class(level: int, v: int) -> str:
    """none / table / leaf / huge / invalid-huge (reports and events)."""
    if v == 0:
        return "none"
    if level == 1:
        return "leaf"
    if v & _PAGE_PSE:
        return "huge" if v & _PAGE_PRESENT else "invalid-huge"
    return "table" if v & _PAGE_PRESENT else "non-present"


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
