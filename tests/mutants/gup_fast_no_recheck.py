"""Planted bug: GUP-fast without the re-check after its speculative
reference: it returns the page it read from the PTE even if the PTE (or the
PMD) changed before ``try_grab_folio_fast()`` took the reference.

Kernel: the re-check is as old as the generic fast GUP, 2667f50e8b81 "mm:
introduce a general RCU get_user_pages_fast()" (Steve Capper, v3.18):
``if (unlikely(pte_val(pte) != pte_val(*ptep))) { put_page(head); goto
pte_unmap; }``; 70cbc3cc78a9 "mm: gup: fix the fast GUP race against THP
collapse" (Yang Shi, v6.0) added the PMD half.  (x86's own pre-2017
``gup_pte_range()`` had no re-check and relied on the IPI alone: a reference
taken with IRQs off could not race with the free of the page.)  Where the
flush does not wait for the walker (Xen PV, INVLPGB) a concurrent ``munmap()``
clears the PTE, flushes and frees the data page at once; the frame is
reallocated before the walker's add-unless-zero, which then succeeds, and the
caller is handed a pin on somebody else's page.

Built from the correct full-RCU strategy: only ``gup_fast`` (the machine's
mm/gup.c copy, one change) differs.
"""

from pathlib import Path

from impls.machine.cpu import local_irq_restore, local_irq_save, rcu_read_lock
from impls.machine.gup import WHO, try_grab_folio_fast
from impls.machine.pgtable import entry_pfn, entry_present, entry_writable, index, is_table_entry
from impls.machine.pgtable_generic import Ptr, child_of, pte_unmap
from impls.machine.plugin import load_module_file
from impls.pt_reclaim import mmu_gather as correct

NAME = "gup-fast-no-recheck"
PLANTED = {"env": "xen-pv", "kind": "strategy", "check": "leaked-gup-pin"}


def gup_fast(cpu, mm, addr, write):
    """mm/gup.c: gup_fast() -> gup_fast_pgd_range() -> ... ->
    gup_fast_pte_range() for one page.  Returns the pinned page or None."""
    m = cpu.m
    sw_read = m.sw_read
    local_irq_save(cpu)
    yield f"{WHO}:irq_off"
    f, gen = mm.pgd, mm.pgd_gen
    for level, name in ((4, "pgd"), (3, "pud")):
        val = sw_read(cpu, f, gen, index(level, addr), WHO)
        if not is_table_entry(val):
            local_irq_restore(cpu)
            return None
        child = child_of(cpu, val)
        if child is None:
            local_irq_restore(cpu)
            return None
        f, gen = child
        yield f"{WHO}:{name}_read"
    pmdp = Ptr(f, gen, index(2, addr))
    pmd = sw_read(cpu, f, gen, pmdp.idx, WHO)
    child = child_of(cpu, pmd) if is_table_entry(pmd) else None
    if child is None:
        local_irq_restore(cpu)
        return None
    table, tgen = child  # the table as it was when the PMD was read
    m.h.emit(cpu.id, "walker_map", who=WHO, pfn=table.pfn, gen=tgen, addr=addr)
    yield f"{WHO}:pmd_read"
    # gup_fast_pte_range(): ptem = pte_offset_map(&pmd, addr) maps from the copy
    rcu_read_lock(cpu)
    idx = index(1, addr)
    pte = sw_read(cpu, table, tgen, idx, WHO)
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
    # BUG: no re-check of the PMD and the PTE after the speculative reference
    pte_unmap(cpu)
    m.h.emit(cpu.id, "walker_unmap", who=WHO, pfn=table.pfn)
    local_irq_restore(cpu)
    return page


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
