"""mm/gup.c: GUP-fast and a minimal slow GUP.

``gup_fast()`` walks ``current->mm`` with local IRQs disabled from the PGD to
the PTE, reading each entry once and descending through the local copy
(``p?d_offset_lockless()``); at the PTE level it maps the table with
``pte_offset_map()`` (nested ``rcu_read_lock()``), takes a speculative folio
reference (``try_grab_folio_fast()``: add-unless-zero), then re-checks that
both the PMD and the PTE are unchanged, dropping the reference on mismatch.

IRQs off is what holds page-table frees off: a native flush IPI cannot be
taken until the walk ends, and an IRQ-disabled region is an RCU reader.  The
re-checks close the data-page races only.

At the PMD (``gup_fast_pmd_range()``, v6.15): a value that is not
``pmd_present()`` ends the walk; a leaf (``pmd_leaf()``: a huge PMD, or one
being split, which x86 keeps ``_PAGE_PSE`` for) goes to
``gup_fast_pmd_leaf()``, which refuses it unless ``pmd_access_permitted()``
(the split's not-present value is refused here), references the folio and
re-checks the PMD; only a table pointer goes on to ``gup_fast_pte_range()``.

A strategy may replace ``gup_fast`` (a scheme that changes how the lockless
walker protects itself); the machine calls ``m.S.gup_fast``.
"""

from __future__ import annotations

from .cpu import Cpu, Mm, Step, down_read, local_irq_restore, local_irq_save, pgd_of, rcu_read_lock, up_read
from .page_alloc import DATA, Frame
from .pgtable import (
    entry_pfn,
    entry_present,
    entry_writable,
    index,
    is_table_entry,
    pmd_access_permitted,
    pmd_leaf,
    pmd_present,
    pte_special,
)
from .pgtable_generic import (
    Ptr,
    __pte_offset_map_lock,
    child_of,
    pte_unmap,
    pte_unmap_unlock,
    walk_to_pmd,
    walker_pmd_leaf,
)

WHO = "gup_fast"


def try_grab_folio_fast(cpu: Cpu, page: Frame, addr: int) -> bool:
    """mm/gup.c: try_grab_folio_fast() (FOLL_PIN): a reference unless the
    refcount is already zero."""
    m = cpu.m
    if not m.frames.get_page_unless_zero(page):
        m.h.emit(cpu.id, "gup_grab_failed", addr=addr, pfn=page.pfn)
        return False
    mm = cpu.current_mm
    assert mm is not None  # (gup_fast_op() runs in a user mm)
    m.h.emit(cpu.id, "gup_grab", mm=mm.id, addr=addr, pfn=page.pfn, gen=page.gen)
    return True


def gup_put_folio(cpu: Cpu, page: Frame, addr: int) -> None:
    m = cpu.m
    m.h.emit(cpu.id, "gup_put", addr=addr, pfn=page.pfn, gen=page.gen)
    m.frames.put_page(cpu.id, page, "gup_put_folio")


def gup_fast(cpu: Cpu, mm: Mm, addr: int, write: bool) -> Step:
    """mm/gup.c: gup_fast() -> gup_fast_pgd_range() -> gup_fast_p4d_range()
    -> gup_fast_pud_range() for one page, with local IRQs disabled.  Returns
    the pinned page or None (the caller falls back to slow GUP)."""
    m = cpu.m
    sw_read = m.sw_read
    local_irq_save(cpu)
    yield f"{WHO}:irq_off"
    f, gen = pgd_of(mm)
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
    page = yield from gup_fast_pmd_range(cpu, Ptr(f, gen, index(2, addr)), addr, write)
    local_irq_restore(cpu)
    return page


def gup_fast_pmd_range(cpu: Cpu, pmdp: Ptr, addr: int, write: bool) -> Step:
    """mm/gup.c: gup_fast_pmd_range(): the PMD read once
    (``pmdp_get_lockless()``); not present: give up; a leaf (a huge PMD, or one
    being split): gup_fast_pmd_leaf(); else the PTE table."""
    pmd = cpu.m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, WHO)
    if not pmd_present(pmd):
        return None
    if pmd_leaf(pmd):
        return (yield from gup_fast_pmd_leaf(cpu, pmd, pmdp, addr, write))
    return (yield from gup_fast_pte_range(cpu, pmd, pmdp, addr, write))


def gup_fast_pte_range(cpu: Cpu, pmd: int, pmdp: Ptr, addr: int, write: bool) -> Step:
    """mm/gup.c: gup_fast_pte_range(): map the table from the PMD copy
    (``pte_offset_map(&pmd, addr)``, nested rcu_read_lock()), read the PTE
    once, take a speculative reference, re-check that the PMD and the PTE
    are unchanged, put the folio back on a mismatch."""
    m = cpu.m
    sw_read = m.sw_read
    child = child_of(cpu, pmd)
    if child is None:
        return None
    table, tgen = child  # the table as it was when the PMD was read
    m.h.emit(cpu.id, "walker_map", who=WHO, pfn=table.pfn, gen=tgen, addr=addr)
    yield f"{WHO}:pmd_read"
    rcu_read_lock(cpu)
    idx = index(1, addr)
    pte = sw_read(cpu, table, tgen, idx, WHO)
    page = m.frames.get(entry_pfn(pte)) if entry_present(pte) else None
    if page is None or pte_special(pte) or (write and not entry_writable(pte)):
        pte_unmap(cpu)
        return None
    yield f"{WHO}:pte_read"
    if not try_grab_folio_fast(cpu, page, addr):
        pte_unmap(cpu)
        return None
    yield f"{WHO}:grabbed"
    if pmd != sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, WHO) or pte != sw_read(cpu, table, tgen, idx, WHO):
        gup_put_folio(cpu, page, addr)
        pte_unmap(cpu)
        return None
    pte_unmap(cpu)
    m.h.emit(cpu.id, "walker_unmap", who=WHO, pfn=table.pfn)
    return page


def gup_fast_pmd_leaf(cpu: Cpu, orig: int, pmdp: Ptr, addr: int, write: bool) -> Step:
    """mm/gup.c: gup_fast_pmd_leaf(): a huge PMD read once (``orig``); refuse
    it unless ``pmd_access_permitted()``, reference the folio
    (``try_grab_folio_fast()``), then re-check that the PMD still holds
    ``orig``, putting the folio back otherwise.  Returns the folio or None."""
    m = cpu.m
    walker_pmd_leaf(cpu, WHO, orig, addr)
    if not pmd_access_permitted(orig, write):
        return None
    yield f"{WHO}:pmd_read"
    folio = m.frames.get(entry_pfn(orig))
    if folio is None or not try_grab_folio_fast(cpu, folio, addr):
        return None
    yield f"{WHO}:grabbed"
    if orig != m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, WHO):
        gup_put_folio(cpu, folio, addr)
        return None
    return folio


def get_user_page(cpu: Cpu, mm: Mm, addr: int, who: str) -> Step:
    """mm/gup.c: __get_user_pages() for one page (FOLL_GET), the slow path:
    under the mmap lock, follow_page_pte() under the PTL, faulting the page in
    if needed.  Returns the page with a reference, or None."""
    from .memory import handle_mm_fault
    m = cpu.m
    yield from down_read(cpu, mm.mmap_lock)
    try:
        vma = mm.find_vma(addr)
        if vma is None:
            return None
        huge = m.env.thp or (vma.file is not None and vma.file.kind == "hugetlb")
        for _ in range(3):
            pmdp = walk_to_pmd(cpu, mm, addr, who)
            if pmdp is not None and huge and pmd_leaf(m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, who)):
                # follow_pmd_mask(): a huge PMD (THP), or one being split
                from .huge_memory import follow_huge_pmd
                folio = yield from follow_huge_pmd(cpu, mm, pmdp)
                if folio is not None:
                    return folio
            if pmdp is not None:
                res = yield from __pte_offset_map_lock(cpu, pmdp, addr, who)
                if res is not None:
                    pte, ptl = res
                    val = m.sw_read(cpu, pte.table, pte.gen, index(1, addr), who)
                    page = m.frames.get(entry_pfn(val)) if entry_present(val) else None
                    if page is not None and page.state == DATA:
                        page.refcount += 1
                        pte_unmap_unlock(cpu, ptl)
                        return page
                    pte_unmap_unlock(cpu, ptl)
            yield from handle_mm_fault(cpu, mm, addr, True)
        return None
    finally:
        up_read(cpu, mm.mmap_lock)


def gup_fast_op(cpu: Cpu, op) -> Step:
    """The ``gup_fast`` operation: pin_user_pages_fast() of one page, hold
    the pin across a preemption point (the I/O), unpin_user_page()."""
    m = cpu.m
    mm = cpu.current_mm
    if mm is None:
        return "skipped: kernel thread"
    # the walk's window opens here: the oracle's GUP contract (I6) is "the
    # page returned was mapped at the address at some instant of the walk"
    m.h.emit(cpu.id, "gup_start", mm=mm.id, addr=op.addr)
    page = yield from m.S.gup_fast(cpu, mm, op.addr, op.write)
    if page is None:
        return "fallback to slow GUP"
    m.h.emit(cpu.id, "gup_return", addr=op.addr, pfn=page.pfn, gen=page.gen)
    yield "gup_fast:pinned"
    m.h.emit(cpu.id, "gup_unpin", addr=op.addr, pfn=page.pfn, gen=page.gen)
    m.frames.put_page(cpu.id, page, "unpin_user_page")
    return f"pinned pfn {page.pfn:#x}"
