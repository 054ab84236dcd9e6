"""Planted bug (oracle test): GUP-fast without the PMD half of its re-check
(before 70cbc3cc78a9 "mm: gup: fix the fast GUP race against THP collapse",
v6.0) on a kernel whose collapse does not wait for IRQ-off walkers (before
2ba99c5e0881): a walker that read the PMD before the collapse cleared it
takes its reference after the collapse's refcount check, finds the PTE
unchanged (the copy has not cleared it yet) and returns the page; the
collapse then copies the pinned page away.  Yang Shi's changelog draws
exactly this race ("return the stale page ... discard the stale page").

Two changes to the correct full-RCU strategy, so it is an oracle test case,
not a zoo bug: the LEAKED-GUP-PIN clause "a collapse copied a pinned page".
"""

from pathlib import Path

from impls.machine import gup as machine_gup
from impls.machine.cpu import rcu_read_lock
from impls.machine.gup import WHO, gup_put_folio, try_grab_folio_fast
from impls.machine.pgtable import entry_pfn, entry_present, entry_writable, index
from impls.machine.pgtable_generic import child_of, pte_unmap
from impls.machine.plugin import load_module_file
from impls.pt_reclaim import mmu_gather as correct

NAME = "full-rcu-collapse-pin-lost"
SAFE_ON = ()


def gup_fast_pte_range(cpu, pmd, pmdp, addr, write):
    """mm/gup.c: gup_fast_pte_range() as in v5.19."""
    m = cpu.m
    child = child_of(cpu, pmd)
    if child is None:
        return None
    table, tgen = child
    m.h.emit(cpu.id, "walker_map", who=WHO, pfn=table.pfn, gen=tgen, addr=addr)
    yield f"{WHO}:pmd_read"
    rcu_read_lock(cpu)
    idx = index(1, addr)
    pte = m.sw_read(cpu, table, tgen, idx, WHO)
    page = m.frames.get(entry_pfn(pte)) if entry_present(pte) else None
    if page is None or (write and not entry_writable(pte)):
        pte_unmap(cpu)
        return None
    yield f"{WHO}:pte_read"
    if not try_grab_folio_fast(cpu, page, addr):
        pte_unmap(cpu)
        return None
    yield f"{WHO}:grabbed"
    if pte != m.sw_read(cpu, table, tgen, idx, WHO):  # BUG: the PTE only, not the PMD
        gup_put_folio(cpu, page, addr)
        pte_unmap(cpu)
        return None
    pte_unmap(cpu)
    m.h.emit(cpu.id, "walker_unmap", who=WHO, pfn=table.pfn)
    return page


def tlb_remove_table_sync_one(cpu):
    return  # BUG: collapse_huge_page() does not wait for IRQ-off walkers
    yield  # noqa: B901


_rebind = load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind
_rebind(machine_gup, globals())
_rebind(correct, globals())
