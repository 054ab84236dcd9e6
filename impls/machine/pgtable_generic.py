"""mm/pgtable-generic.c, include/linux/pgtable.h: mapping a PTE table.

``___pte_offset_map()`` takes ``rcu_read_lock()``, snapshots the PMD and maps
the table it points to; ``pte_unmap()`` drops the RCU lock.  The table stays
allocated for the whole section only if whoever frees it waits for an RCU grace
period (PT_RECLAIM's reason for full RCU, seed S2).  ``__pte_offset_map_lock()``
locks the PTL derived from the snapshot and re-checks ``pmd_same()``, retrying
if the table was detached meanwhile.

The ``pte_walk`` operation models an RCU-only reader of user PTE tables
(``pte_offset_map_ro_nolock()`` users such as rmap and page-table walkers): IRQs
stay enabled, so it takes IPIs while it walks.

``___pte_offset_map()`` returns NULL, as in v6.5+ (0d940a9b270b), for a PMD
that is none, a migration entry, a huge leaf or one being split (x86
``pmd_trans_huge()`` holds for the ``pmdp_invalidate()`` value), or bad; a
walker that meets a huge or splitting PMD records ``walker_pmd_leaf``.

THP helpers (mm/pgtable-generic.c, v6.15): ``pgtable_trans_huge_deposit()``
and ``_withdraw()`` keep the PTE tables deposited for huge PMDs in the PMD
table's ``pmd_huge_pte`` list, FIFO as the kernel's circular list is;
``pmdp_collapse_flush()`` clears a table-pointing PMD and flushes the 2 MiB
range with the platform's ``flush_tlb_range()``; ``pmdp_invalidate()``
leaves the transient not-present huge value and flushes.
"""

from __future__ import annotations

from typing import NamedTuple

from .cpu import Cpu, Mm, Step, down_read, rcu_read_lock, rcu_read_unlock, spin_lock, spin_unlock, up_read
from .page_alloc import Frame, SpinLock
from .pgtable import (
    HPAGE_PMD_SIZE,
    entry_class,
    entry_pfn,
    index,
    is_table_entry,
    pmd_bad,
    pmd_mkinvalid,
    pmd_none,
    pmd_trans_huge,
)


class Ptr(NamedTuple):
    """A pointer to entry ``idx`` of table ``frame``, taken when the frame had
    generation ``gen`` (``pmd_t *pmdp``)."""

    frame: Frame
    gen: int
    idx: int


class PteMap(NamedTuple):
    """A mapped PTE table: the table, the generation the walker saw, and the
    PMD value it was derived from."""

    table: Frame
    gen: int
    pmdval: int


def child_of(cpu: Cpu, val: int) -> tuple[Frame, int] | None:
    """The table an entry value points to, with the generation the frame has
    now (a walker that just read a live entry sees the right generation)."""
    f = cpu.m.frames.get(entry_pfn(val))
    if f is None:
        return None
    return f, f.gen


def __pte_offset_map(cpu: Cpu, pmdp: Ptr, addr: int, who: str) -> PteMap | None:
    """mm/pgtable-generic.c: ___pte_offset_map(): rcu_read_lock(), snapshot
    the PMD, refuse (NULL) none / migration / huge (splitting included) /
    bad values, map the table."""
    rcu_read_lock(cpu)
    pmdval = cpu.m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, who)
    if pmd_none(pmdval):  # MODEL: no migration entries
        rcu_read_unlock(cpu)
        return None
    if pmd_trans_huge(pmdval):
        walker_pmd_leaf(cpu, who, pmdval, addr)
        rcu_read_unlock(cpu)
        return None
    if pmd_bad(pmdval):  # MODEL: pmd_clear_bad() never needed (no bad values)
        rcu_read_unlock(cpu)
        return None
    child = child_of(cpu, pmdval)
    if child is None:
        rcu_read_unlock(cpu)
        return None
    return PteMap(child[0], child[1], pmdval)


def walker_pmd_leaf(cpu: Cpu, who: str, pmdval: int, addr: int) -> None:
    """A walker met a PMD that is a leaf, not a table pointer (a huge leaf,
    or a huge PMD being split): the races the THP paths are about
    (oracle/behaviours.py)."""
    cpu.m.h.emit(cpu.id, "walker_pmd_leaf", who=who, addr=addr, pmd=pmdval, what=entry_class(2, pmdval))


def pte_unmap(cpu: Cpu) -> None:
    rcu_read_unlock(cpu)


def pte_lockptr(cpu: Cpu, pte: PteMap) -> SpinLock:
    """The split PTL lives in the ptdesc of the (snapshotted) table; if that
    frame is no longer a table, the lock memory is stale."""
    f = pte.table
    if f.ptl is not None and f.gen == pte.gen:
        return f.ptl
    return SpinLock("stale ptl", f, pte.gen)


def __pte_offset_map_lock(cpu: Cpu, pmdp: Ptr, addr: int, who: str) -> Step:
    """mm/pgtable-generic.c: __pte_offset_map_lock(): returns (PteMap, ptl) or
    None when the PMD holds no table."""
    m = cpu.m
    while True:
        pte = __pte_offset_map(cpu, pmdp, addr, who)
        if pte is None:
            return None
        yield f"{who}:pmd_read"
        ptl = pte_lockptr(cpu, pte)
        yield from spin_lock(cpu, ptl, f"{who}:ptl")
        if pte.pmdval == m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, who):
            return pte, ptl
        spin_unlock(cpu, ptl)
        pte_unmap(cpu)
        m.h.emit(cpu.id, "pmd_changed", who=who, addr=addr)


def pte_unmap_unlock(cpu: Cpu, ptl: SpinLock) -> None:
    spin_unlock(cpu, ptl)
    pte_unmap(cpu)


def pte_offset_map_rw_nolock(cpu: Cpu, pmdp: Ptr, addr: int, who: str) -> tuple[PteMap, SpinLock] | None:
    """mm/pgtable-generic.c: pte_offset_map_rw_nolock(): map without the PTL;
    the caller must re-check the PMD (or hold the PMD lock)."""
    pte = __pte_offset_map(cpu, pmdp, addr, who)
    if pte is None:
        return None
    return pte, pte_lockptr(cpu, pte)


def walk_to_pmd(cpu: Cpu, mm, addr: int, who: str) -> Ptr | None:
    """pgd_offset() -> p4d/pud_offset() -> pmd_offset() for a walker that
    holds the mmap lock (upper tables cannot go away under it): reads, no
    allocation.  Returns the PMD pointer or None if an upper level is none."""
    m = cpu.m
    f, gen = mm.pgd, mm.pgd_gen
    for level in (4, 3):
        val = m.sw_read(cpu, f, gen, index(level, addr), who)
        if not is_table_entry(val):
            return None
        child = child_of(cpu, val)
        if child is None:
            return None
        f, gen = child
    return Ptr(f, gen, index(2, addr))


def pte_walk(cpu: Cpu, op) -> Step:
    """An RCU-only lockless reader of a PTE table, as the ``pte_offset_map()``
    users that walk a VMA (``walk_page_range()`` callbacks, rmap's
    ``page_vma_mapped_walk()``): the VMA is held (here: the mmap lock for
    read), so the upper tables cannot be freed, but the PTE table itself can,
    by PT_RECLAIM, which frees it while the VMA exists.  The table is mapped
    with ``pte_offset_map_ro_nolock()`` under ``rcu_read_lock()`` with IRQs on,
    and read across a preemption point."""
    m = cpu.m
    mm = cpu.current_mm
    if mm is None:
        return "skipped: kernel thread"
    who = "pte_walk"
    yield from down_read(cpu, mm.mmap_lock)
    try:
        if mm.find_vma(op.addr) is None:
            return "no vma"
        pmdp = walk_to_pmd(cpu, mm, op.addr, who)
        if pmdp is None:
            return "no table"
        yield f"{who}:pmd_located"
        pte = __pte_offset_map(cpu, pmdp, op.addr, who)
        if pte is None:
            return "no table"
        m.h.emit(cpu.id, "walker_map", who=who, pfn=pte.table.pfn, gen=pte.gen, addr=op.addr)
        yield f"{who}:mapped"
        val = m.sw_read(cpu, pte.table, pte.gen, index(1, op.addr), who)
        yield f"{who}:pte_read"
        # pte_offset_map_ro_nolock() users look at neighbouring entries too
        m.sw_read(cpu, pte.table, pte.gen, index(1, op.addr) ^ 1, who)
        pte_unmap(cpu)
        m.h.emit(cpu.id, "walker_unmap", who=who, pfn=pte.table.pfn)
        return f"pte={val:#x}"
    finally:
        up_read(cpu, mm.mmap_lock)


# -- THP: deposited tables, collapse and split flushes (mm/pgtable-generic.c) ------

def pgtable_trans_huge_deposit(cpu: Cpu, mm: Mm, pmdp: Ptr, pgtable: Frame) -> None:
    """mm/pgtable-generic.c: pgtable_trans_huge_deposit() (the PMD lock held):
    keep ``pgtable`` for the huge PMD, on the list headed by the PMD table's
    ``pmd_huge_pte`` (x86-64 has split PMD locks: the list lives in the PMD
    table's ptdesc).  FIFO: the new table becomes the head, linked after the
    old head (``list_add()``)."""
    f = pmdp.frame
    lst = f.pmd_huge_pte
    # [head, rest...] -> list_add(pgtable, head) -> head = pgtable:
    # [pgtable, rest..., old head] (the circular list, from the new head)
    f.pmd_huge_pte = [pgtable, *lst[1:], lst[0]] if lst else [pgtable]
    cpu.m.h.emit(cpu.id, "pgtable_deposit", pmd=pmdp.frame.pfn, pfn=pgtable.pfn, gen=pgtable.gen,
                 mm=mm.id)


def pgtable_trans_huge_withdraw(cpu: Cpu, mm: Mm, pmdp: Ptr) -> Frame:
    """mm/pgtable-generic.c: pgtable_trans_huge_withdraw() (the PMD lock
    held): take the head; the next entry becomes the head."""
    lst = pmdp.frame.pmd_huge_pte
    if not lst:
        cpu.m.h.emit(cpu.id, "bug", what=f"pgtable_trans_huge_withdraw(): nothing deposited on PMD table "
                     f"{pmdp.frame.pfn:#x}")
        raise RuntimeError("withdraw from an empty deposit list")
    pgtable = lst.pop(0)
    cpu.m.h.emit(cpu.id, "pgtable_withdraw", pmd=pmdp.frame.pfn, pfn=pgtable.pfn, gen=pgtable.gen,
                 mm=mm.id)
    return pgtable


def pmdp_collapse_flush(cpu: Cpu, mm: Mm, address: int, pmdp: Ptr) -> Step:
    """mm/pgtable-generic.c: pmdp_collapse_flush(): ``pmdp_huge_get_and_clear()``
    of a PMD that points to a PTE table, then ``flush_tlb_range()`` of the 2 MiB
    range ("collapse entails shooting down ptes not pmd").  Returns the old
    PMD value."""
    m = cpu.m
    pmd = m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "pmdp_collapse_flush")
    m.set_pxd(cpu, pmdp, 0, "pmdp_collapse_flush")
    yield from m.P.flush_tlb_range(cpu, mm, address, address + HPAGE_PMD_SIZE)
    return pmd


def pmdp_invalidate(cpu: Cpu, mm: Mm, address: int, pmdp: Ptr) -> Step:
    """mm/pgtable-generic.c: pmdp_invalidate(): ``pmdp_establish()`` of
    ``pmd_mkinvalid(*pmdp)`` (not present, still huge), then
    ``flush_pmd_tlb_range()`` (x86: ``flush_tlb_range()``).  Returns the old
    value."""
    m = cpu.m
    old = m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "pmdp_invalidate")
    m.set_pxd(cpu, pmdp, pmd_mkinvalid(old), "pmdp_invalidate")
    yield from m.P.flush_tlb_range(cpu, mm, address, address + HPAGE_PMD_SIZE)
    return old
