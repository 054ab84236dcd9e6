"""mm/memory.c: the fault path, zapping, and freeing page tables.

* Faults (``__handle_mm_fault()`` -> ``handle_pte_fault()`` ->
  ``do_anonymous_page()``): upper tables are allocated outside any lock and
  installed under ``page_table_lock``/the PMD lock only if still none
  (``__pud_alloc()``, ``__pmd_alloc()``, ``pmd_install()``); the PTE is
  installed under the PTL after ``pte_offset_map_lock()``'s ``pmd_same()``
  re-check and a ``pte_none()`` re-check.
* Zapping (``unmap_vmas()`` -> ``unmap_page_range()`` -> ``zap_pmd_range()`` ->
  ``zap_pte_range()``): PTEs cleared under the PTL in lazy MMU mode, pages
  queued on the mmu_gather, a forced flush when the batch is full (TLB flush
  under the PTL, free after dropping it), PT_RECLAIM's fast and slow paths.
* ``free_pgtables()`` -> ``free_pgd_range()`` -> ``free_p?d_range()``: clear the
  parent entry without locks (the VMAs are detached), then ``p?d_free_tlb()``,
  which is the strategy's.  Before anything is unlinked, ``tlb_free_vmas()``
  flushes if a VM_PFNMAP VMA was zapped; each file VMA is unlinked from its
  file's ``i_mmap`` before its tables are freed.
* The rmap zap, ``unmap_mapping_range()`` (truncate, hole punch, a driver
  revoking its mapping): under the file's ``i_mmap_rwsem`` for read, for each
  VMA of any mm that maps the range, ``zap_page_range_single()``: an
  mmu_gather on *that VMA's mm*, whatever this CPU runs, the notifiers, the
  zap, ``tlb_finish_mmu()``.  No mmap lock of that mm is taken: the VMA's
  tables live until it is unlinked from ``i_mmap``.
* With THP (``env.thp``), __handle_mm_fault() first tries the huge paths of
  huge_memory.py at the PMD, and zap_pmd_range() zaps or splits huge PMDs;
  a split THP's PTEs are zapped in batches of one large folio
  (zap_present_ptes(), folio_pte_batch(), __tlb_remove_folio_pages()).

Read at mainline v6.19 (the THP paths at v6.15).

MODEL: anonymous VMAs are private, file VMAs shared; every anonymous fault
allocates a page (no zero page, no COW); the TLB is filled by the
access after the fault.  No delayed rmap for dirty file pages
(``tlb_delay_rmap()``): the mapcount drops at the zap, not after the flush
(it only matters to folio_mkclean(), not to when a page may be freed, which
the gather's reference decides).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cpu import Cpu, Mm, Step, pgd_of, spin_lock, spin_unlock
from .filemap import folio_unlock, i_mmap_lock_read, i_mmap_unlock_read, shmem_fault, unlink_file_vma
from .hugetlb import hugetlb_fault, is_vm_hugetlb_page, unmap_hugepage_vma
from .mmu_gather import tlb_end_vma, tlb_flush_pte_range, tlb_gather_mmu, tlb_start_vma
from .mmu_notifier import mmu_notifier_invalidate_range_end, mmu_notifier_invalidate_range_start
from .page_alloc import DATA, TABLE, Frame
from .paravirt import arch_enter_lazy_mmu_mode, arch_leave_lazy_mmu_mode, paravirt_alloc
from .pgtable import (
    LEVEL_NAMES_SHORT,
    PAGE_SHIFT,
    PAGE_SIZE,
    PGDIR_MASK,
    PGDIR_SIZE,
    PMD_MASK,
    PMD_SIZE,
    PUD_MASK,
    PUD_SIZE,
    entry_pfn,
    entry_present,
    index,
    is_table_entry,
    mk_pte,
    mk_table,
    pmd_trans_huge,
)
from .pgtable_generic import Ptr, __pte_offset_map_lock, child_of, pte_unmap_unlock, walk_to_pmd
from .pt_reclaim import free_pte, reclaim_pt_is_enabled, try_get_and_clear_pmd, try_to_free_pte
from .tlb import read_table_memory

if TYPE_CHECKING:
    from .mmu_gather import MmuGather

FIRST_USER_ADDRESS = 0
USER_PGTABLES_CEILING = 0


# -- table allocation (fault side) ------------------------------------------

def pte_alloc_one(cpu: Cpu, mm: Mm, level: int, addr: int) -> Frame:
    """pte_alloc_one()/pmd_alloc_one()/pud_alloc_one(): a zeroed table page
    with its constructor (the split PTL)."""
    return cpu.m.frames.alloc(cpu.id, TABLE, level=level, mm=mm.id, va=addr)


def p_populate(cpu: Cpu, mm: Mm, parent: Ptr, new: Frame) -> None:
    """pmd_populate()/pud_populate()/p4d_populate(): paravirt_alloc_p?d()
    (Xen pins the new table if the mm is pinned), then set_p?d()."""
    paravirt_alloc(cpu, mm, new)
    cpu.m.set_pxd(cpu, parent, mk_table(new.pfn), "populate")


def __p_alloc(cpu: Cpu, mm: Mm, parent: Ptr, level: int, addr: int) -> Step:
    """__pud_alloc()/__pmd_alloc() (under page_table_lock) and __pte_alloc()
    -> pmd_install() (under the PMD lock)."""
    m = cpu.m
    new = pte_alloc_one(cpu, mm, level, addr)
    yield f"fault:{LEVEL_NAMES_SHORT[level]}_alloc"
    if level == 1:
        lock = parent.frame.ptl if parent.frame.gen == parent.gen and parent.frame.ptl else mm.page_table_lock
    else:
        lock = mm.page_table_lock
    yield from spin_lock(cpu, lock, "fault:pmd_lock")
    cur = m.sw_read(cpu, parent.frame, parent.gen, parent.idx, "fault")
    if not entry_present(cur):  # Has another populated it?
        if level == 1:
            mm.nr_ptes += 1
        elif level == 2:
            mm.nr_pmds += 1
        else:
            mm.nr_puds += 1
        p_populate(cpu, mm, parent, new)
        populated = True
    else:
        populated = False
    spin_unlock(cpu, lock)
    if not populated:
        m.frames.free(cpu.id, new, "pte_free (lost the populate race)")


def handle_mm_fault(cpu: Cpu, mm: Mm, addr: int, write: bool) -> Step:
    """mm/memory.c: handle_mm_fault(); the caller holds the mmap lock for read.
    Returns a short result string."""
    m = cpu.m
    who = "fault"
    vma = mm.find_vma(addr)
    if vma is not None and is_vm_hugetlb_page(vma):
        return (yield from hugetlb_fault(cpu, mm, vma, addr, write))
    f, gen = pgd_of(mm)
    for level in (4, 3):
        parent = Ptr(f, gen, index(level, addr))
        val = m.sw_read(cpu, f, gen, parent.idx, who)
        if not entry_present(val):
            yield from __p_alloc(cpu, mm, parent, level - 1, addr & ~((1 << (9 * (level - 1) + 12)) - 1))
            val = m.sw_read(cpu, f, gen, parent.idx, who)
            if not is_table_entry(val):
                return "retry"
        child = child_of(cpu, val)
        if child is None:
            return "retry"
        f, gen = child
    pmdp = Ptr(f, gen, index(2, addr))
    if vma is not None and vma.file is not None:
        return (yield from do_fault(cpu, mm, vma, pmdp, addr, write))
    if m.env.thp:
        from .huge_memory import thp_pmd_fault
        res = yield from thp_pmd_fault(cpu, mm, pmdp, addr, write)
        if res is not None:
            return res
    return (yield from do_anonymous_page(cpu, mm, pmdp, addr, write))


def do_fault(cpu: Cpu, mm: Mm, vma, pmdp: Ptr, addr: int, write: bool) -> Step:
    """mm/memory.c: do_fault() -> do_shared_fault()/do_read_fault() for a
    shared file mapping: __do_fault() (the file's ->fault: a locked folio
    with a reference), then finish_fault() maps it under the PTL, then the
    folio is unlocked.  The reference becomes the mapping's."""
    m = cpu.m
    who = "fault"
    if vma.file.kind == "device":
        return (yield from insert_pfn_fault(cpu, mm, vma, pmdp, addr))
    folio = yield from shmem_fault(cpu, vma, addr)
    if isinstance(folio, str):
        return folio
    # finish_fault()
    pmdval = m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, who)
    if not entry_present(pmdval):
        yield from __p_alloc(cpu, mm, pmdp, 1, addr & PMD_MASK)
    res = yield from __pte_offset_map_lock(cpu, pmdp, addr, who)
    if res is None:
        folio_unlock(cpu, folio)
        m.frames.put_page(cpu.id, folio, "do_fault: release")
        return "retry: no table"
    pte, ptl = res
    idx = index(1, addr)
    if m.sw_read(cpu, pte.table, pte.gen, idx, who) != 0:
        pte_unmap_unlock(cpu, ptl)
        folio_unlock(cpu, folio)
        m.frames.put_page(cpu.id, folio, "do_fault: release")
        return "raced: pte present"
    folio.mapcount += 1  # folio_add_file_rmap_ptes()
    mm.rss += 1          # MM_SHMEMPAGES
    # a shared writable shmem mapping needs no write notification: vm_page_prot is RW
    m.sw_write(cpu, pte.table, pte.gen, idx, mk_pte(folio.pfn, True), "set_pte_at (finish_fault)")
    pte_unmap_unlock(cpu, ptl)
    folio_unlock(cpu, folio)
    return f"mapped file{vma.file.id} page {folio.index} pfn {folio.pfn:#x}"


def do_anonymous_page(cpu: Cpu, mm: Mm, pmdp: Ptr, addr: int, write: bool) -> Step:
    """mm/memory.c: handle_pte_fault() -> do_anonymous_page()."""
    m = cpu.m
    who = "fault"
    pmdval = m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, who)
    if not entry_present(pmdval):
        # pte_alloc(): __pte_alloc() -> pmd_install()
        yield from __p_alloc(cpu, mm, pmdp, 1, addr & PMD_MASK)
    folio = m.frames.alloc(cpu.id, DATA, mm=mm.id, va=addr & ~(PAGE_SIZE - 1))
    yield "fault:folio_alloc"
    res = yield from __pte_offset_map_lock(cpu, pmdp, addr, who)
    if res is None:
        m.frames.put_page(cpu.id, folio, "do_anonymous_page: release")
        return "retry: no table"
    pte, ptl = res
    idx = index(1, addr)
    if m.sw_read(cpu, pte.table, pte.gen, idx, who) != 0:  # vmf_pte_changed()
        pte_unmap_unlock(cpu, ptl)
        m.frames.put_page(cpu.id, folio, "do_anonymous_page: release")
        return "raced: pte present"
    folio.mapcount = 1
    mm.rss += 1
    m.sw_write(cpu, pte.table, pte.gen, idx, mk_pte(folio.pfn, True), "set_pte_at (fault)")
    pte_unmap_unlock(cpu, ptl)
    return f"mapped pfn {folio.pfn:#x}"


def insert_pfn_fault(cpu: Cpu, mm: Mm, vma, pmdp: Ptr, addr: int) -> Step:
    """A VM_PFNMAP VMA's fault: the driver's ->fault calls vmf_insert_pfn()
    -> insert_pfn(): under the PTL (get_locked_pte()), if the PTE is still
    none, a special PTE for the raw frame; no refcount, no mapcount, no RSS
    (VM_FAULT_NOPAGE)."""
    from .pfnmap import pfnmap_fault, pfnmap_fault_done
    m = cpu.m
    who = "fault"
    frame = yield from pfnmap_fault(cpu, vma, addr)
    try:
        pmdval = m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, who)
        if not entry_present(pmdval):
            yield from __p_alloc(cpu, mm, pmdp, 1, addr & PMD_MASK)
        res = yield from __pte_offset_map_lock(cpu, pmdp, addr, who)
        if res is None:
            return "retry: no table"
        pte, ptl = res
        idx = index(1, addr)
        if m.sw_read(cpu, pte.table, pte.gen, idx, who) == 0:
            m.sw_write(cpu, pte.table, pte.gen, idx, mk_pte(frame.pfn, True, special=True),
                       "set_pte_at (insert_pfn)")
        pte_unmap_unlock(cpu, ptl)
        return f"inserted pfn {frame.pfn:#x}"
    finally:
        pfnmap_fault_done(cpu, vma)


# -- zapping ----------------------------------------------------------------

def _end_idx(addr: int, end: int) -> int:
    """One past the last PTE index of [addr, end) within addr's PTE table."""
    last = end - PAGE_SIZE
    if (last & PMD_MASK) != (addr & PMD_MASK):
        return 512
    return index(1, last) + 1


def next_present(table: Frame, gen: int, lo: int, hi: int, m, cpu: Cpu, who: str) -> int | None:
    """The first non-none entry in [lo, hi) of a PTE table (what the
    ``pte_none()`` skip loop of do_zap_pte_range() finds).  The scan is one
    software access to the table."""
    m.sw_touch(cpu, table, gen, who)
    entries = table.entries
    if len(entries) > 64:  # a full table (a split THP): walk the indexes
        for i in range(lo, hi):
            if i in entries and read_table_memory(table, i):
                return i
        return None
    best = None
    for i in entries:
        if lo <= i < hi and read_table_memory(table, i) and (best is None or i < best):
            best = i
    return best


def folio_pte_batch(table: Frame, idx: int, max_nr: int, val: int) -> int:
    """mm/internal.h: folio_pte_batch(): how many PTEs from ``idx`` on (at
    most ``max_nr``) map consecutive pages of the same large folio with the
    same bits.  MODEL: the PTEs of a THP's subpages carry the folio's pfn, so
    they are equal values."""
    entries = table.entries
    nr = 1
    while nr < max_nr and entries.get(idx + nr) == val:
        nr += 1
    return nr


class ZapDetails:
    """struct zap_details: ``single_folio`` restricts the zap to the PTEs that
    map that folio (unmap_mapping_folio())."""

    __slots__ = ("reclaim_pt", "single_folio")

    def __init__(self, reclaim_pt: bool = False, single_folio: Frame | None = None) -> None:
        self.reclaim_pt = reclaim_pt
        self.single_folio = single_folio


def zap_pte_range(tlb: MmuGather, pmdp: Ptr, addr: int, end: int, details: ZapDetails) -> Step:
    """mm/memory.c: zap_pte_range() (v6.14+, with PT_RECLAIM).

    With ``pt_reclaim: v6.14-rc1`` the fast path runs even after the PTL was
    dropped midway, as in 6375e95f381e before "mm: pgtable: fix incorrect
    reclaim of non-empty PTE pages" (Feb 2025).
    """
    m = tlb.m
    cpu = tlb.cpu
    S = m.S
    mm = tlb.mm
    who = "zap_pte_range"
    start = addr
    can_reclaim_pt = reclaim_pt_is_enabled(m, start, end, details)
    buggy_fast_path = m.env.pt_reclaim == "v6.14-rc1"
    direct_reclaim = True
    pmdval = 0
    while True:  # retry:
        force_flush = force_break = False
        res = yield from __pte_offset_map_lock(cpu, pmdp, addr, who)
        if res is None:
            return addr
        pte, ptl = res
        arch_enter_lazy_mmu_mode(cpu)
        while True:
            if m.choices.flip("need_resched:zap_pte_range"):
                m.h.emit(cpu.id, "need_resched", where=who, addr=addr)
                if not buggy_fast_path:
                    direct_reclaim = False
                break
            # do_zap_pte_range(): skip the none entries, zap the next present one
            idx = next_present(pte.table, pte.gen, index(1, addr), _end_idx(addr, end), m, cpu, who)
            if idx is None:
                addr = end
                break
            addr = (addr & PMD_MASK) + idx * PAGE_SIZE
            val = m.sw_read(cpu, pte.table, pte.gen, idx, who)
            single = details.single_folio
            if single is not None and entry_pfn(val) != single.pfn:
                addr += PAGE_SIZE  # should_zap_folio(): not the folio asked for
                if addr >= end:
                    break
                continue
            page = m.frames.get(entry_pfn(val))
            if page is not None and page.order and page.state == DATA:
                # zap_present_ptes(): a large folio's PTEs go as one batch
                nr = folio_pte_batch(pte.table, idx, _end_idx(addr, end) - idx, val)
                m.sw_write(cpu, pte.table, pte.gen, idx, 0, "get_and_clear_full_ptes (zap)", nr=nr)
                tlb_flush_pte_range(tlb, addr, PAGE_SIZE * nr)  # tlb_remove_tlb_entries()
                page.mapcount -= nr  # folio_remove_rmap_ptes()
                mm.rss -= nr
                if nr == 1:
                    full = yield from S.__tlb_remove_page_size(tlb, page, PAGE_SIZE)
                else:
                    full = yield from S.__tlb_remove_folio_pages(tlb, page, nr)
                if full:
                    force_flush = force_break = True
                addr += PAGE_SIZE * nr
            else:
                m.sw_write(cpu, pte.table, pte.gen, idx, 0, "ptep_get_and_clear_full (zap)")
                tlb_flush_pte_range(tlb, addr, PAGE_SIZE)  # tlb_remove_tlb_entry()
                if page is not None and page.state == DATA:
                    page.mapcount -= 1  # folio_remove_rmap_ptes()
                    mm.rss -= 1
                    if (yield from S.__tlb_remove_page_size(tlb, page, PAGE_SIZE)):
                        force_flush = force_break = True
                addr += PAGE_SIZE
            yield f"{who}:cleared"
            if force_break:
                if not buggy_fast_path:
                    direct_reclaim = False
                break
            if addr >= end:
                break
        if can_reclaim_pt and direct_reclaim and addr == end:
            direct_reclaim, pmdval = try_get_and_clear_pmd(cpu, mm, pmdp)
        arch_leave_lazy_mmu_mode(cpu)
        # Do the actual TLB flush before dropping ptl
        if force_flush:
            yield from S.tlb_flush_mmu_tlbonly(tlb)
        pte_unmap_unlock(cpu, ptl)
        if force_flush:
            yield from S.tlb_flush_mmu(tlb)
        if addr != end:
            yield f"{who}:cond_resched"
            continue
        break
    if can_reclaim_pt:
        if direct_reclaim:
            yield from free_pte(tlb, start, pmdval)
        else:
            yield from try_to_free_pte(tlb, pmdp, start)
    return addr


def unmap_page_range(tlb: MmuGather, addr: int, end: int, details: ZapDetails) -> Step:
    """mm/memory.c: unmap_page_range() -> zap_p4d/pud/pmd_range(): one
    zap_pte_range() per PMD-sized chunk that has a PTE table.  A huge PMD
    (THP) the chunk covers whole is zap_huge_pmd(); one it covers in part is
    split first (``__split_huge_pmd()``), then zapped as PTEs."""
    m = tlb.m
    cpu = tlb.cpu
    mm = tlb.mm
    while addr < end:
        nxt = min((addr & PMD_MASK) + PMD_SIZE, end)
        pmdp = _locate_pmd(cpu, mm, addr, "zap_pmd_range")
        if pmdp is not None:
            val = m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "zap_pmd_range")
            if pmd_trans_huge(val):
                from .huge_memory import __split_huge_pmd, zap_huge_pmd
                if nxt - addr != PMD_SIZE:
                    yield from __split_huge_pmd(cpu, mm, pmdp, addr)
                elif (yield from zap_huge_pmd(tlb, pmdp, addr)):
                    addr = nxt
                    continue
                val = m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "zap_pmd_range")
            if entry_present(val):
                done = yield from zap_pte_range(tlb, pmdp, addr, nxt, details)
                if done != nxt:
                    continue  # the table vanished under us: revisit this pmd
        addr = nxt


def _locate_pmd(cpu: Cpu, mm: Mm, addr: int, who: str) -> Ptr | None:
    return walk_to_pmd(cpu, mm, addr, who)


def unmap_single_vma(tlb: MmuGather, vma, start: int, end: int, details: ZapDetails) -> Step:
    """mm/memory.c: unmap_single_vma(): tlb_start_vma() (records VM_PFNMAP),
    unmap_page_range(), tlb_end_vma() (nothing on x86)."""
    tlb_start_vma(tlb, vma)
    yield from unmap_page_range(tlb, start, end, details)
    yield from tlb_end_vma(tlb, vma)


def unmap_vmas(tlb: MmuGather, vmas: list, start: int, end: int,
               details: ZapDetails, event: str) -> Step:
    """mm/memory.c: unmap_vmas() / zap_page_range_single_batched():
    ``mmu_notifier_invalidate_range_start()`` before any PTE is cleared,
    ``_end()`` after all are (and before the final flush).  ``vmas``: VMAs
    (or VMA pieces) whose whole range is zapped."""
    cpu = tlb.cpu
    mm = tlb.mm
    yield from mmu_notifier_invalidate_range_start(cpu, mm, start, end, event)
    for vma in vmas:
        if is_vm_hugetlb_page(vma):
            # hugetlb_zap_begin(); unmap_single_vma() -> __unmap_hugepage_range();
            # hugetlb_zap_end() (ZAP_FLAG_UNMAP at munmap and exit)
            yield from unmap_hugepage_vma(tlb, vma, vma.start, vma.end, event == "UNMAP")
            continue
        yield from unmap_single_vma(tlb, vma, vma.start, vma.end, details)
    yield from mmu_notifier_invalidate_range_end(cpu, mm, start, end, event)


# -- the rmap zap --------------------------------------------------------------

def zap_page_range_single(cpu: Cpu, vma, addr: int, size: int, details: ZapDetails) -> Step:
    """mm/memory.c: zap_page_range_single() -> zap_page_range_single_batched():
    a gather on the VMA's mm (not necessarily the one this CPU runs), the
    notifiers around the zap, tlb_finish_mmu()."""
    mm = vma.mm
    m = cpu.m
    if cpu.current_mm is not mm:
        m.h.emit(cpu.id, "rmap_zap", mm=mm.id, start=addr, end=addr + size,
                 running=cpu.current_mm.id if cpu.current_mm is not None else -1)
    tlb = tlb_gather_mmu(cpu, mm)
    yield from unmap_vmas(tlb, [vma.piece(addr, addr + size)], addr, addr + size, details, "CLEAR")
    yield from m.S.tlb_finish_mmu(tlb)


def unmap_mapping_range(cpu: Cpu, mapping, first: int, last: int,
                        single_folio: Frame | None = None) -> Step:
    """mm/memory.c: unmap_mapping_pages() (unmap_mapping_range() in pages):
    under i_mmap_lock_read(), zap [first, last] of the file in every VMA that
    maps it (unmap_mapping_range_tree() -> unmap_mapping_range_vma())."""
    yield from i_mmap_lock_read(cpu, mapping)
    for vma in mapping.vmas_in(first, last):
        vba = vma.pgoff
        vea = vba + ((vma.end - vma.start) >> PAGE_SHIFT) - 1
        zba, zea = max(first, vba), min(last, vea)
        start = ((zba - vba) << PAGE_SHIFT) + vma.start
        end = ((zea - vba + 1) << PAGE_SHIFT) + vma.start
        yield from zap_page_range_single(cpu, vma, start, end - start, ZapDetails(False, single_folio))
    i_mmap_unlock_read(cpu, mapping)


def unmap_mapping_folio(cpu: Cpu, folio: Frame) -> Step:
    """mm/memory.c: unmap_mapping_folio(): zap the PTEs mapping this (locked)
    folio in every VMA of its file."""
    yield from unmap_mapping_range(cpu, folio.mapping, folio.index, folio.index, folio)


# -- freeing page tables ---------------------------------------------------

def free_pte_range(tlb: MmuGather, pmdp: Ptr, addr: int) -> Step:
    """mm/memory.c: free_pte_range(): pmd_clear(); pte_free_tlb()."""
    m = tlb.m
    cpu = tlb.cpu
    val = m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "free_pgtables")
    token = m.frames[entry_pfn(val)]
    m.set_pxd(cpu, pmdp, 0, "pmd_clear (free_pte_range)")
    yield from m.S.pte_free_tlb(tlb, token, addr)
    tlb.mm.nr_ptes -= 1


def free_pmd_range(tlb: MmuGather, pudp: Ptr, addr: int, end: int, floor: int, ceiling: int) -> Step:
    m = tlb.m
    cpu = tlb.cpu
    pmd_table = m.frames[entry_pfn(m.sw_read(cpu, pudp.frame, pudp.gen, pudp.idx, "free_pgtables"))]
    gen = pmd_table.gen
    start = addr
    while True:
        nxt = min((addr & PMD_MASK) + PMD_SIZE, end)
        pmdp = Ptr(pmd_table, gen, index(2, addr))
        if entry_present(m.sw_read(cpu, pmd_table, gen, pmdp.idx, "free_pgtables")):
            yield from free_pte_range(tlb, pmdp, addr)
            yield "free_pgtables:pte_freed"
        addr = nxt
        if addr >= end:
            break
    start &= PUD_MASK
    if start < floor:
        return
    if ceiling:
        ceiling &= PUD_MASK
        if not ceiling:
            return
    if _gt_minus_one(end, ceiling):
        return
    m.set_pxd(cpu, pudp, 0, "pud_clear (free_pmd_range)")
    yield from m.S.pmd_free_tlb(tlb, pmd_table, start)
    tlb.mm.nr_pmds -= 1
    yield "free_pgtables:pmd_freed"


def free_pud_range(tlb: MmuGather, pgdp: Ptr, addr: int, end: int, floor: int, ceiling: int) -> Step:
    m = tlb.m
    cpu = tlb.cpu
    pud_table = m.frames[entry_pfn(m.sw_read(cpu, pgdp.frame, pgdp.gen, pgdp.idx, "free_pgtables"))]
    gen = pud_table.gen
    start = addr
    while True:
        nxt = min((addr & PUD_MASK) + PUD_SIZE, end)
        pudp = Ptr(pud_table, gen, index(3, addr))
        if entry_present(m.sw_read(cpu, pud_table, gen, pudp.idx, "free_pgtables")):
            yield from free_pmd_range(tlb, pudp, addr, nxt, floor, ceiling)
        addr = nxt
        if addr >= end:
            break
    start &= PGDIR_MASK
    if start < floor:
        return
    if ceiling:
        ceiling &= PGDIR_MASK
        if not ceiling:
            return
    if _gt_minus_one(end, ceiling):
        return
    m.set_pxd(cpu, pgdp, 0, "pgd_clear (free_pud_range)")
    yield from m.S.pud_free_tlb(tlb, pud_table, start)
    tlb.mm.nr_puds -= 1
    yield "free_pgtables:pud_freed"


_ULONG = (1 << 64) - 1


def _gt_minus_one(end: int, ceiling: int) -> bool:
    """``end - 1 > ceiling - 1`` in unsigned long arithmetic (ceiling 0 means
    "no ceiling")."""
    return ((end - 1) & _ULONG) > ((ceiling - 1) & _ULONG)


def free_pgd_range(tlb: MmuGather, addr: int, end: int, floor: int, ceiling: int) -> Step:
    """mm/memory.c: free_pgd_range(): free the page tables covering [addr,
    end) that are not shared with [floor, ceiling)'s neighbours."""
    m = tlb.m
    cpu = tlb.cpu
    mm = tlb.mm
    addr &= PMD_MASK
    if addr < floor:
        addr += PMD_SIZE
        if not addr:
            return
    if ceiling:
        ceiling &= PMD_MASK
        if not ceiling:
            return
    if _gt_minus_one(end, ceiling):
        end -= PMD_SIZE
    if addr > end - 1:
        return
    pgd, _ = pgd_of(mm)
    while True:
        nxt = min((addr & PGDIR_MASK) + PGDIR_SIZE, end)
        pgdp = Ptr(pgd, mm.pgd_gen, index(4, addr))
        if entry_present(m.sw_read(cpu, pgd, mm.pgd_gen, pgdp.idx, "free_pgtables")):
            yield from free_pud_range(tlb, pgdp, addr, nxt, floor, ceiling)
        addr = nxt
        if addr >= end:
            break


def free_pgtables(tlb: MmuGather, vmas: list, floor: int, ceiling: int) -> Step:
    """mm/memory.c: free_pgtables(): tlb_free_vmas() first (a pending flush of
    a VM_PFNMAP VMA is done before any VMA leaves the rmap); then for each run
    of detached VMAs (nearby ones gathered into one call): hide the file VMAs
    from the rmap (unlink_file_vma_batch_*()), then free_pgd_range() up to the
    next one."""
    yield from tlb.m.S.tlb_free_vmas(tlb)
    i = 0
    while i < len(vmas):
        start, end = vmas[i].start, vmas[i].end
        j = i + 1
        while j < len(vmas) and vmas[j].start <= end + PMD_SIZE:
            end = vmas[j].end
            j += 1
        unlinked = False
        for v in vmas[i:j]:
            if v.file is not None:
                yield from unlink_file_vma(tlb.cpu, v)
                unlinked = True
        if unlinked:
            yield "free_pgtables:unlinked"
        nxt_start = vmas[j].start if j < len(vmas) else ceiling
        yield from free_pgd_range(tlb, start, end, floor, nxt_start)
        i = j
