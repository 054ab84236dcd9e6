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
"""

from __future__ import annotations

from typing import NamedTuple

from .cpu import Cpu, Step, down_read, rcu_read_lock, rcu_read_unlock, spin_lock, spin_unlock, up_read
from .page_alloc import Frame, SpinLock
from .pgtable import entry_pfn, index, is_table_entry


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
    """mm/pgtable-generic.c: ___pte_offset_map()."""
    rcu_read_lock(cpu)
    pmdval = cpu.m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, who)
    if not is_table_entry(pmdval):
        rcu_read_unlock(cpu)
        return None
    child = child_of(cpu, pmdval)
    if child is None:
        rcu_read_unlock(cpu)
        return None
    return PteMap(child[0], child[1], pmdval)


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
