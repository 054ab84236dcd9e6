"""mm/pt_reclaim.c (v6.14+): reclaim empty PTE tables in MADV_DONTNEED.

Enabled by the program's ``env.pt_reclaim`` (``on`` or ``v6.14-rc1``).  In
the kernel CONFIG_PT_RECLAIM also selects RCU table freeing; here the two are
kept apart on purpose, so that a program can show what happens when the
reclaim runs with a strategy that does not RCU-free (the question of seed S2).

* fast path, ``try_get_and_clear_pmd()``: with the PTL still held since the
  scan, ``spin_trylock()`` the PMD lock and clear the PMD;
* slow path, ``try_to_free_pte()``: PMD lock, map the table with
  ``pte_offset_map_rw_nolock()``, take the PTL, re-check all
  ``PTRS_PER_PTE`` entries are none, then clear the PMD;
* ``free_pte()``: ``pte_free_tlb()`` (the strategy's), ``mm_dec_nr_ptes()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cpu import Cpu, Mm, Step, spin_lock, spin_trylock, spin_unlock
from .pgtable import PMD_SIZE, entry_pfn
from .pgtable_generic import Ptr, pte_offset_map_rw_nolock, pte_unmap

if TYPE_CHECKING:
    from .mmu_gather import MmuGather


def reclaim_pt_is_enabled(m, start: int, end: int, details) -> bool:
    """mm/pt_reclaim.c: reclaim_pt_is_enabled()."""
    return (m.env.pt_reclaim != "off" and details is not None and details.reclaim_pt
            and end - start >= PMD_SIZE)


def pmd_lockptr(cpu: Cpu, mm: Mm, pmdp: Ptr):
    """x86-64 has split PMD locks: the lock of the PMD *table* page."""
    f = pmdp.frame
    return f.ptl if f.ptl is not None and f.gen == pmdp.gen else mm.page_table_lock


def try_get_and_clear_pmd(cpu: Cpu, mm: Mm, pmdp: Ptr) -> tuple[bool, int]:
    """mm/pt_reclaim.c: try_get_and_clear_pmd(); the caller holds the PTL."""
    m = cpu.m
    pml = pmd_lockptr(cpu, mm, pmdp)
    if not spin_trylock(cpu, pml, m.choices.flip("pmd_trylock_fails:pt_reclaim")):
        m.h.emit(cpu.id, "pt_reclaim", path="fast", result="trylock failed")
        return False, 0
    pmdval = m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "pt_reclaim")
    m.set_pxd(cpu, pmdp, 0, "pmd_clear (try_get_and_clear_pmd)")
    spin_unlock(cpu, pml)
    m.h.emit(cpu.id, "pt_reclaim", path="fast", result="cleared", pfn=entry_pfn(pmdval))
    return True, pmdval


def free_pte(tlb: MmuGather, addr: int, pmdval: int) -> Step:
    """mm/pt_reclaim.c: free_pte()."""
    m = tlb.m
    table = m.frames[entry_pfn(pmdval)]
    yield from m.S.pte_free_tlb(tlb, table, addr)
    tlb.mm.nr_ptes -= 1


def try_to_free_pte(tlb: MmuGather, pmdp: Ptr, addr: int) -> Step:
    """mm/pt_reclaim.c: try_to_free_pte(): the slow path, with a full rescan."""
    m = tlb.m
    cpu = tlb.cpu
    mm = tlb.mm
    pml = pmd_lockptr(cpu, mm, pmdp)
    yield from spin_lock(cpu, pml, "pt_reclaim:pmd_lock")
    res = pte_offset_map_rw_nolock(cpu, pmdp, addr, "pt_reclaim")
    if res is None:
        spin_unlock(cpu, pml)
        m.h.emit(cpu.id, "pt_reclaim", path="slow", result="no table")
        return
    pte, ptl = res
    if ptl is not pml:
        yield from spin_lock(cpu, ptl, "pt_reclaim:ptl")
    m.sw_touch(cpu, pte.table, pte.gen, "pt_reclaim: rescan")
    if any(v for v in pte.table.entries.values()):
        spin_unlock(cpu, ptl)
        pte_unmap(cpu)
        if ptl is not pml:
            spin_unlock(cpu, pml)
        m.h.emit(cpu.id, "pt_reclaim", path="slow", result="not empty")
        return
    pte_unmap(cpu)
    m.set_pxd(cpu, pmdp, 0, "pmd_clear (try_to_free_pte)")
    if ptl is not pml:
        spin_unlock(cpu, ptl)
    spin_unlock(cpu, pml)
    m.h.emit(cpu.id, "pt_reclaim", path="slow", result="cleared", pfn=pte.table.pfn)
    yield from free_pte(tlb, addr, pte.pmdval)
