"""mm/khugepaged.c: collapsing a PTE table's worth of anonymous pages into a
THP, synchronously (``madvise(MADV_COLLAPSE)``) or by khugepaged.

Read: torvalds/linux mm/khugepaged.c at 00f58104202c (v6.11 era) for
``collapse_huge_page()``, ``__collapse_huge_page_isolate()``,
``__collapse_huge_page_copy_succeeded()``, ``hpage_collapse_scan_pmd()`` and
``madvise_collapse()``, and the v6.15 changes to them (the
``folio_maybe_mapped_shared()`` rename, ``is_refcount_suitable()`` counting
file folios): none changes what is modelled here.  mm/pgtable-generic.c
``pmdp_collapse_flush()``; arch/x86 ``flush_tlb_range()`` with
``freed_tables`` since 3ef938c35035.

``collapse_huge_page()``, step by step:

1. drop the mmap read lock, allocate the PMD-order folio, re-take it and
   revalidate the VMA and the PMD (``hugepage_vma_revalidate()``,
   ``find_pmd_or_thp_or_none()``); drop it again;
2. take the mmap lock for **write** and revalidate (``check_pmd_still_valid()``);
   take the anon_vma lock for write (rmap walkers are out);
3. inside the mmu notifiers, under the PMD lock, ``pmdp_collapse_flush()``:
   clear the PMD and ``flush_tlb_range()`` the 2 MiB range;
4. ``tlb_remove_table_sync_one()`` (the strategy's hook; 2ba99c5e0881): wait
   for every IRQ-off walker (GUP-fast) that may still be walking the old PTE
   table, which the collapse is about to reuse and a later zap of the huge
   PMD frees with ``pte_free()``;
5. map the old table from the copy of the PMD (``pte_offset_map_lock(mm,
   &_pmd, ...)``) and isolate every page: a page with a reference its
   mappings do not explain (``is_refcount_suitable()``: a GUP pin) makes the
   collapse fail (``SCAN_PAGE_COUNT``), and the table is put back with
   ``pmd_populate()``.  Any GUP-fast walker that read the old PMD has either
   finished, its reference counted here, or, after its PMD re-check failed,
   put its reference back;
6. copy; clear the old PTEs and put the small pages
   (``__collapse_huge_page_copy_succeeded()``);
7. under the PMD lock, deposit the old table (``pgtable_trans_huge_deposit()``)
   and ``set_pmd_at()`` the huge PMD.

``hpage_collapse_scan_pmd()`` first looks at the PTEs under the PTL and the
mmap read lock (none/writable/refcount), then calls ``collapse_huge_page()``.
khugepaged (``cc->is_khugepaged``) also enforces ``max_ptes_none`` (default
511) and wants a young PTE.

MODEL: the folio allocation never fails; no swap (``__collapse_huge_page_swapin()``),
no zero page, no page lock or LRU isolation (no other party takes them here),
every PTE is young; ``mmap_read_trylock()`` waits; khugepaged's mm list and
sleeps are the ``khugepaged`` operation's arguments; ``hpage_collapse_test_exit()``
(mm_users == 0) is read as "exit_group() started".  File and shmem collapse
(``collapse_file()``, ``retract_page_tables()``, ``collapse_pte_mapped_thp()``,
``pte_free_defer()``) are not modelled.
"""

from __future__ import annotations

from .cpu import (
    Cpu,
    Mm,
    Step,
    down_read,
    down_write,
    rcu_read_lock,
    spin_lock,
    spin_unlock,
    up_read,
    up_write,
)
from .huge_memory import thp_vma_suitable
from .memory import p_populate
from .mmu_notifier import mmu_notifier_invalidate_range_end, mmu_notifier_invalidate_range_start
from .page_alloc import DATA, Frame
from .paravirt import paravirt_release_pte
from .pgtable import (
    HPAGE_PMD_NR,
    HPAGE_PMD_ORDER,
    HPAGE_PMD_SIZE,
    PMD_MASK,
    entry_pfn,
    entry_writable,
    mk_huge_pmd,
    pmd_bad,
    pmd_none,
    pmd_present,
    pmd_trans_huge,
)
from .pgtable_generic import (
    PteMap,
    Ptr,
    __pte_offset_map_lock,
    pgtable_trans_huge_deposit,
    pmdp_collapse_flush,
    pte_lockptr,
    pte_unmap,
    pte_unmap_unlock,
    walk_to_pmd,
)
from .pt_reclaim import pmd_lockptr
from .tlb import read_table_memory

WHO = "khugepaged"

SCAN_FAIL = "SCAN_FAIL"
SCAN_SUCCEED = "SCAN_SUCCEED"
SCAN_PMD_NULL = "SCAN_PMD_NULL"
SCAN_PMD_NONE = "SCAN_PMD_NONE"
SCAN_PMD_MAPPED = "SCAN_PMD_MAPPED"
SCAN_EXCEED_NONE_PTE = "SCAN_EXCEED_NONE_PTE"
SCAN_PAGE_RO = "SCAN_PAGE_RO"
SCAN_LACK_REFERENCED_PAGE = "SCAN_LACK_REFERENCED_PAGE"
SCAN_PAGE_NULL = "SCAN_PAGE_NULL"
SCAN_PAGE_COUNT = "SCAN_PAGE_COUNT"
SCAN_ANY_PROCESS = "SCAN_ANY_PROCESS"
SCAN_VMA_NULL = "SCAN_VMA_NULL"
SCAN_ADDRESS_RANGE = "SCAN_ADDRESS_RANGE"

#: /sys/kernel/mm/transparent_hugepage/khugepaged/max_ptes_none default
KHUGEPAGED_MAX_PTES_NONE = HPAGE_PMD_NR - 1


def hpage_collapse_test_exit(mm: Mm) -> bool:
    """mm_users == 0 (MODEL: from exit_group() on)."""
    return mm.dying or mm.exited


def hugepage_vma_revalidate(mm: Mm, address: int) -> str:
    """mm/khugepaged.c: hugepage_vma_revalidate() for an anonymous VMA."""
    if hpage_collapse_test_exit(mm):
        return SCAN_ANY_PROCESS
    if mm.find_vma(address) is None:
        return SCAN_VMA_NULL
    if not thp_vma_suitable(mm, address):
        return SCAN_ADDRESS_RANGE
    return SCAN_SUCCEED


def find_pmd_or_thp_or_none(cpu: Cpu, mm: Mm, address: int, who: str) -> tuple[str, Ptr | None]:
    """mm/khugepaged.c: find_pmd_or_thp_or_none(): mm_find_pmd(), then the
    PMD read once (pmdp_get_lockless())."""
    pmdp = walk_to_pmd(cpu, mm, address, who)
    if pmdp is None:
        return SCAN_PMD_NULL, None
    pmde = cpu.m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, who)
    if pmd_none(pmde):
        return SCAN_PMD_NONE, pmdp
    if not pmd_present(pmde):
        return SCAN_PMD_NULL, pmdp
    if pmd_trans_huge(pmde):
        return SCAN_PMD_MAPPED, pmdp
    if pmd_bad(pmde):
        return SCAN_PMD_NULL, pmdp
    return SCAN_SUCCEED, pmdp


def is_refcount_suitable(folio: Frame) -> bool:
    """mm/khugepaged.c: is_refcount_suitable() for an anonymous folio outside
    the swap cache: every reference is a mapping's.  A GUP pin, or a
    speculative reference still held, makes it false."""
    return folio.refcount == folio.mapcount


def _ptes(table: Frame) -> list[tuple[int, int]]:
    """The present entries of a PTE table, in index order."""
    return [(i, read_table_memory(table, i)) for i in sorted(table.entries) if read_table_memory(table, i)]


def hpage_collapse_scan_pmd(cpu: Cpu, mm: Mm, address: int, is_khugepaged: bool) -> Step:
    """mm/khugepaged.c: hpage_collapse_scan_pmd(), called with the mmap read
    lock held.  Returns (result, whether the mmap lock is still held)."""
    m = cpu.m
    who = WHO if is_khugepaged else "madvise_collapse"
    result, pmdp = find_pmd_or_thp_or_none(cpu, mm, address, who)
    if result != SCAN_SUCCEED:
        return result, True
    assert pmdp is not None  # (SCAN_SUCCEED comes with the PMD entry)
    res = yield from __pte_offset_map_lock(cpu, pmdp, address, who)
    if res is None:
        return SCAN_PMD_NULL, True
    pte, ptl = res
    m.sw_touch(cpu, pte.table, pte.gen, f"{who}: scan")
    present = _ptes(pte.table)
    result = SCAN_SUCCEED
    writable = False
    if is_khugepaged and HPAGE_PMD_NR - len(present) > KHUGEPAGED_MAX_PTES_NONE:
        result = SCAN_EXCEED_NONE_PTE
    else:
        for _, val in present:
            writable = writable or entry_writable(val)
            page = m.frames.get(entry_pfn(val))
            if page is None or page.state != DATA:
                result = SCAN_PAGE_NULL
                break
            if not is_refcount_suitable(page):
                result = SCAN_PAGE_COUNT
                break
        else:
            # MODEL: every PTE is young, so khugepaged never lacks a referenced page
            result = SCAN_SUCCEED if writable else SCAN_PAGE_RO
    pte_unmap_unlock(cpu, ptl)
    yield f"{who}:scanned"
    if result != SCAN_SUCCEED:
        m.h.emit(cpu.id, "collapse", mm=mm.id, addr=address, result=result, khugepaged=is_khugepaged,
                 stage="scan")
        return result, True
    result = yield from collapse_huge_page(cpu, mm, address, is_khugepaged)
    return result, False  # collapse_huge_page() returns with the mmap lock released


def __collapse_huge_page_isolate(cpu: Cpu, table: Frame, gen: int, is_khugepaged: bool) -> str:
    """mm/khugepaged.c: __collapse_huge_page_isolate() (the PTL held, the
    PMD already cleared and flushed, walkers synchronised)."""
    m = cpu.m
    m.sw_touch(cpu, table, gen, "collapse: isolate")
    present = _ptes(table)
    if is_khugepaged and HPAGE_PMD_NR - len(present) > KHUGEPAGED_MAX_PTES_NONE:
        return SCAN_EXCEED_NONE_PTE
    writable = False
    seen: set[int] = set()
    for _, val in present:
        page = m.frames.get(entry_pfn(val))
        if page is None or page.state != DATA:
            return SCAN_PAGE_NULL
        writable = writable or entry_writable(val)
        if page.order and page.pfn in seen:
            continue  # a large folio is checked once (compound_pagelist)
        seen.add(page.pfn)
        # Check if the page has any GUP (or other external) pins.  The page
        # table that maps the page has been already unlinked from the page
        # table tree and this process cannot get an additional pin on it.
        if not is_refcount_suitable(page):
            return SCAN_PAGE_COUNT
    return SCAN_SUCCEED if writable else SCAN_PAGE_RO


def __collapse_huge_page_copy(cpu: Cpu, mm: Mm, address: int, pte: PteMap, ptl, folio: Frame) -> Step:
    """mm/khugepaged.c: __collapse_huge_page_copy() +
    _copy_succeeded(): copy every page (MODEL: the copy never hits a memory
    error), then clear each old PTE under the PTL, drop its rmap and its
    reference (free_page_and_swap_cache()); a none PTE adds one page to RSS."""
    m = cpu.m
    table, gen = pte.table, pte.gen
    present = _ptes(table)
    m.h.emit(cpu.id, "collapse_copy", mm=mm.id, addr=address, folio=folio.pfn, folio_gen=folio.gen,
             pages=tuple(sorted({(p.pfn, p.gen) for p in (m.frames.get(entry_pfn(v)) for _, v in present)
                                 if p is not None})))
    yield "collapse:copied"
    mm.rss += HPAGE_PMD_NR - len(present)
    i = 0
    while i < len(present):
        idx, val = present[i]
        nr = 1  # MODEL: equal consecutive PTEs (one large folio) cleared as one event
        while i + nr < len(present) and present[i + nr] == (idx + nr, val):
            nr += 1
        src = m.frames.get(entry_pfn(val))
        yield from spin_lock(cpu, ptl, "collapse:ptl")
        m.sw_write(cpu, table, gen, idx, 0, "ptep_clear (collapse)", nr=nr)
        if src is not None:
            src.mapcount -= nr  # folio_remove_rmap_pte()
        spin_unlock(cpu, ptl)
        if src is not None:
            m.frames.put_pages(cpu.id, src, nr, "free_page_and_swap_cache (collapse)")
        i += nr


def collapse_huge_page(cpu: Cpu, mm: Mm, address: int, is_khugepaged: bool) -> Step:
    """mm/khugepaged.c: collapse_huge_page(); called with the mmap read lock
    held, returns with it released."""
    m = cpu.m
    who = WHO if is_khugepaged else "madvise_collapse"
    up_read(cpu, mm.mmap_lock)
    folio = m.frames.alloc(cpu.id, DATA, mm=mm.id, va=address, order=HPAGE_PMD_ORDER)
    yield "collapse:folio_alloc"
    result = yield from _collapse_locked(cpu, mm, address, is_khugepaged, who, folio)
    if result != SCAN_SUCCEED:  # (on success the folio is mapped: folio = NULL)
        m.frames.put_page(cpu.id, folio, "folio_put (collapse failed)")
    m.h.emit(cpu.id, "collapse", mm=mm.id, addr=address, result=result, khugepaged=is_khugepaged,
             stage="collapse")
    return result


def _collapse_locked(cpu: Cpu, mm: Mm, address: int, is_khugepaged: bool, who: str, folio: Frame) -> Step:
    """The part of collapse_huge_page() between out_nolock's labels."""
    yield from down_read(cpu, mm.mmap_lock)
    result = hugepage_vma_revalidate(mm, address)
    if result == SCAN_SUCCEED:
        result, pmdp = find_pmd_or_thp_or_none(cpu, mm, address, who)
    up_read(cpu, mm.mmap_lock)
    if result != SCAN_SUCCEED:
        return result
    assert pmdp is not None  # (SCAN_SUCCEED comes with the PMD entry)
    # Prevent all access to pagetables with the exception of gup_fast later
    # handled by the ptep_clear_flush and the VM handled by the anon_vma
    # lock + PG_lock.
    yield from down_write(cpu, mm.mmap_lock)
    try:
        result = hugepage_vma_revalidate(mm, address)
        if result != SCAN_SUCCEED:
            return result
        # check_pmd_still_valid()
        result, new_pmdp = find_pmd_or_thp_or_none(cpu, mm, address, who)
        if result != SCAN_SUCCEED:
            return result
        if new_pmdp is None or new_pmdp.frame is not pmdp.frame or new_pmdp.gen != pmdp.gen:
            return SCAN_FAIL
        yield from down_write(cpu, mm.anon_vma_lock)  # anon_vma_lock_write()
        try:
            return (yield from _collapse_anon_locked(cpu, mm, address, is_khugepaged, pmdp, folio))
        finally:
            if mm.anon_vma_lock.writer == cpu.id:
                up_write(cpu, mm.anon_vma_lock)
    finally:
        up_write(cpu, mm.mmap_lock)


def _collapse_anon_locked(cpu: Cpu, mm: Mm, address: int, is_khugepaged: bool, pmdp: Ptr,
                          folio: Frame) -> Step:
    """collapse_huge_page() from the mmu notifiers on (mmap write lock and
    anon_vma write lock held)."""
    m = cpu.m
    yield from mmu_notifier_invalidate_range_start(cpu, mm, address, address + HPAGE_PMD_SIZE, "CLEAR")
    pmd_ptl = pmd_lockptr(cpu, mm, pmdp)
    yield from spin_lock(cpu, pmd_ptl, "collapse:pmd_lock")  # probably unnecessary
    # This removes any huge TLB entry from the CPU so we won't allow huge and
    # small TLB entries for the same virtual address.  Parallel GUP-fast is
    # fine since GUP-fast will back off when it detects PMD is changed.
    _pmd = yield from pmdp_collapse_flush(cpu, mm, address, pmdp)
    yield "collapse:pmd_cleared"
    spin_unlock(cpu, pmd_ptl)
    yield from mmu_notifier_invalidate_range_end(cpu, mm, address, address + HPAGE_PMD_SIZE, "CLEAR")
    yield from m.S.tlb_remove_table_sync_one(cpu)
    yield "collapse:synced"

    # pte = pte_offset_map_lock(mm, &_pmd, address, &pte_ptl): from the copy
    table = m.frames.get(entry_pfn(_pmd))
    rcu_read_lock(cpu)
    pte = PteMap(table, table.gen, _pmd) if table is not None else None
    if pte is not None:
        pte_ptl = pte_lockptr(cpu, pte)
        yield from spin_lock(cpu, pte_ptl, "collapse:ptl")
        result = __collapse_huge_page_isolate(cpu, pte.table, pte.gen, is_khugepaged)
        spin_unlock(cpu, pte_ptl)
    else:
        result = SCAN_PMD_NULL
    yield "collapse:isolated"

    if result != SCAN_SUCCEED:
        pte_unmap(cpu)
        yield from spin_lock(cpu, pmd_ptl, "collapse:pmd_lock")
        _bug_on_pmd_not_none(cpu, pmdp)
        # We can only use set_pmd_at when establishing hugepmds and never for
        # establishing regular pmds that points to regular pagetables.  Use
        # pmd_populate for that
        if table is not None:
            p_populate(cpu, mm, pmdp, table)
        spin_unlock(cpu, pmd_ptl)
        return result
    assert pte is not None and table is not None  # (else result is SCAN_PMD_NULL)

    # All pages are isolated and locked so anon_vma rmap can't run anymore.
    up_write(cpu, mm.anon_vma_lock)
    yield from __collapse_huge_page_copy(cpu, mm, address, pte, pte_ptl, folio)
    pte_unmap(cpu)

    yield from spin_lock(cpu, pmd_ptl, "collapse:pmd_lock")
    _bug_on_pmd_not_none(cpu, pmdp)
    folio.mapcount = 1  # folio_add_new_anon_rmap()
    # MODEL: Linux has no hook here: the one hypervisor that pins page tables
    # (Xen PV) never gives its guests THP, so a deposited table is never a
    # pinned one.  For the xen-pv+thp environment the table is released
    # (unpinned, made writable) when it leaves the tree, as ___pte_free_tlb()
    # releases a table it queues; split's pmd_populate() pins it again.
    paravirt_release_pte(cpu, table)
    pgtable_trans_huge_deposit(cpu, mm, pmdp, table)
    m.set_pxd(cpu, pmdp, mk_huge_pmd(folio.pfn, True), "set_pmd_at (collapse)")
    spin_unlock(cpu, pmd_ptl)
    return SCAN_SUCCEED


def _bug_on_pmd_not_none(cpu: Cpu, pmdp: Ptr) -> None:
    if not pmd_none(cpu.m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "collapse")):
        cpu.m.h.emit(cpu.id, "bug", what="collapse_huge_page(): BUG_ON(!pmd_none(*pmd))")


# -- the operations ------------------------------------------------------------------

def madvise_collapse(cpu: Cpu, op) -> Step:
    """The ``collapse`` operation: mm/khugepaged.c madvise_collapse() of the
    2 MiB range containing ``addr`` (``madvise(MADV_COLLAPSE)``, which takes
    the mmap lock for read, process context, ``cc->is_khugepaged`` false)."""
    m = cpu.m
    mm = cpu.current_mm
    if mm is None:
        return "skipped: kernel thread"
    if not m.env.thp:
        return "EINVAL: no THP"
    haddr = op.addr & PMD_MASK
    yield from down_read(cpu, mm.mmap_lock)
    if mm.find_vma(haddr) is None:
        up_read(cpu, mm.mmap_lock)
        return "ENOMEM"
    if not thp_vma_suitable(mm, haddr):
        up_read(cpu, mm.mmap_lock)
        return "EINVAL"
    result, locked = yield from hpage_collapse_scan_pmd(cpu, mm, haddr, False)
    if locked:
        up_read(cpu, mm.mmap_lock)
    return "collapsed" if result in (SCAN_SUCCEED, SCAN_PMD_MAPPED) else result


def khugepaged_scan_op(cpu: Cpu, op) -> Step:
    """The ``khugepaged`` operation: one step of khugepaged_scan_mm_slot() on
    mm ``op.mm`` at ``addr``, run by the khugepaged kernel thread on this CPU
    (the CPU must be running a kernel thread; its loaded mm, maybe lazily
    another one, is left alone)."""
    m = cpu.m
    if not m.env.thp:
        return "skipped: no THP"
    if cpu.current_mm is not None or op.mm is None or not 0 <= op.mm < len(m.mms):
        return "skipped: not khugepaged"
    mm = m.mms[op.mm]
    if hpage_collapse_test_exit(mm):
        return "skipped: mm exiting"
    haddr = op.addr & PMD_MASK
    yield from down_read(cpu, mm.mmap_lock)
    if hpage_collapse_test_exit(mm) or mm.find_vma(haddr) is None or not thp_vma_suitable(mm, haddr):
        up_read(cpu, mm.mmap_lock)
        return "skipped: no suitable vma"
    result, locked = yield from hpage_collapse_scan_pmd(cpu, mm, haddr, True)
    if locked:
        up_read(cpu, mm.mmap_lock)
    return result
