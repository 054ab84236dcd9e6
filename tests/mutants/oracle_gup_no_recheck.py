"""Planted bug (oracle test): GUP-fast without the PTE/PMD re-check after
taking its speculative reference.  The PTE re-check is as old as the generic
RCU GUP-fast (2667f50e8b81, 2014), the PMD re-check came with 70cbc3cc78a9
"mm: gup: fix the fast GUP race against THP collapse" (2022).  Without it,
GUP-fast can return a page that was unmapped between the PTE read and the
reference.
"""

from impls.machine.cpu import local_irq_restore, local_irq_save, rcu_read_lock
from impls.machine.gup import WHO, try_grab_folio_fast
from impls.machine.pgtable import entry_pfn, entry_present, entry_writable, index, is_table_entry
from impls.machine.pgtable_generic import child_of, pte_unmap
from impls.native.mmu_gather import *  # noqa: F401,F403  (the correct strategy, then one change)

NAME = "direct-gup-no-recheck"
SAFE_ON = ()


def gup_fast(cpu, mm, addr, write):
    """mm/gup.c gup_fast() with the re-check removed."""
    m = cpu.m
    local_irq_save(cpu)
    yield f"{WHO}:irq_off"
    f, gen = mm.pgd, mm.pgd_gen
    for level in (4, 3):
        val = m.sw_read(cpu, f, gen, index(level, addr), WHO)
        child = child_of(cpu, val) if is_table_entry(val) else None
        if child is None:
            local_irq_restore(cpu)
            return None
        f, gen = child
    pmd = m.sw_read(cpu, f, gen, index(2, addr), WHO)
    child = child_of(cpu, pmd) if is_table_entry(pmd) else None
    if child is None:
        local_irq_restore(cpu)
        return None
    table, tgen = child
    yield f"{WHO}:pmd_read"
    rcu_read_lock(cpu)
    pte = m.sw_read(cpu, table, tgen, index(1, addr), WHO)
    page = m.frames.get(entry_pfn(pte)) if entry_present(pte) else None
    if page is None or (write and not entry_writable(pte)):
        pte_unmap(cpu)
        local_irq_restore(cpu)
        return None
    yield f"{WHO}:pte_read"
    if not try_grab_folio_fast(cpu, page, addr):
        pte_unmap(cpu)
        local_irq_restore(cpu)
        return None
    yield f"{WHO}:grabbed"
    # BUG: no re-check of the PMD and PTE values
    pte_unmap(cpu)
    local_irq_restore(cpu)
    return page
