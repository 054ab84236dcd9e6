"""mm/hugetlb.c, include/linux/hugetlb.h, fs/hugetlbfs: hugetlbfs files and
PMD table sharing (CONFIG_HUGETLB_PMD_PAGE_TABLE_SHARING, x86-64).

Read at mainline v6.19 with 8ce720d5bd91 ("mm/hugetlb: fix excessive IPI
broadcasts when unsharing PMD tables using mmu_gather", David Hildenbrand,
Dec 2025, also in 6.18.y and the stable trees down to 5.15.y) and the 2022
hugetlb VMA lock (40549ba8f8e0 "hugetlb: use new vma_lock for pmd sharing
synchronization", and "hugetlb: clear vma lock pointer in final unmap": the
lock is freed, ``vm_private_data = NULL``, before ``i_mmap_rwsem`` is
dropped at the final unmap, which makes the VMA ineligible for sharing).

A hugetlbfs file (kind ``hugetlb``) has 2 MiB pages (one frame of order 9
each) in its page cache, which holds them for the file's lifetime.  A
``MAP_SHARED`` mapping that covers a whole PUD-aligned 1 GiB range may share
the PMD table of that range with another mm mapping the same file range at
the same offset within its PUD (``want_pmd_share()`` ->
``huge_pmd_share()``): the fault finds a sharing VMA through the file's
``i_mmap`` (read lock), takes a reference on its PMD table
(``ptdesc_pmd_pts_inc()``: ``Frame.share_count`` counts the *other* sharers,
as ``pt_share_count`` does) and points its own PUD entry at it.  Every
sharer then sees every huge PMD any of them installs.

Unsharing (``huge_pmd_unshare()``): any zap of a shared range (munmap, exit,
MADV_DONTNEED), with the VMA lock and ``i_mmap_rwsem`` held for write
(``hugetlb_zap_begin()``), clears this mm's PUD entry and calls
``tlb_unshare_pmd_ptdesc()``: drop the share count, add the PUD range to the
gather at PMD stride, set ``unshared_tables`` (and ``fully_unshared_tables``
when no other sharer is left: the remaining owner may now modify, reuse or
free the table).  Before ``i_mmap_rwsem`` is dropped,
``huge_pmd_unshare_flush()`` -> ``tlb_flush_unshared_tables()`` flushes this
mm's TLBs for the range and, after a full unshare,
``tlb_remove_table_sync_one()`` waits for every concurrent GUP-fast.  The
table itself is freed by its last sharer's ``free_pgtables()`` through the
strategy's ``pmd_free_tlb()``, like any PMD table; the oracle owes the
invalidation to the CPUs of every mm that linked it (the union).

Both gather helpers are strategy hooks (``tlb_unshare_pmd_ptdesc``,
``tlb_flush_unshared_tables``), so a strategy that forgets the flag or the
sync is a plug-in.

MODEL: one hstate (2 MiB); the hugetlb fault mutex is left out (the PMD
lock and the ``pmd_none()`` re-check decide a race between two faults of one
index, as they would without it); no reservations, no hugetlb cgroup, no
COW (every mapping is MAP_SHARED), no hole punching or truncation of
hugetlbfs files (their pages live as long as the file), no mremap,
mprotect, collapse or split of hugetlb VMAs (those operations return
EINVAL on them), no ``adjust_range_if_pmd_sharing_possible()`` (it widens
only the mmu-notifier range; no secondary MMU is attached with hugetlb);
hugetlb pages are not counted in RSS (``hugetlb_count_add()``), as in the
kernel.  The VMA lock is one reader/writer lock per VMA, shared by the
pieces of a VMA that is split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cpu import Cpu, Mm, Step, down_read, down_write, pgd_of, spin_lock, spin_unlock, up_read, up_write
from .filemap import i_mmap_lock_read, i_mmap_lock_write, i_mmap_unlock_read, i_mmap_unlock_write
from .mmu_gather import VM_SHARED, tlb_end_vma, tlb_flush_pmd_range, tlb_start_vma
from .page_alloc import DATA, Frame
from .paravirt import paravirt_alloc
from .pgtable import (
    HPAGE_PMD_NR,
    HPAGE_PMD_ORDER,
    PAGE_SHIFT,
    PMD_MASK,
    PMD_SIZE,
    PUD_MASK,
    PUD_SIZE,
    entry_pfn,
    entry_present,
    index,
    is_table_entry,
    mk_huge_pmd,
    mk_table,
    pmd_none,
    pmd_trans_huge,
)
from .pgtable_generic import Ptr, child_of
from .pt_reclaim import pmd_lockptr

if TYPE_CHECKING:
    from .mmu_gather import MmuGather

#: the hugetlb page size of the model's one hstate
HUGE_PAGE_SIZE = PMD_SIZE


def is_vm_hugetlb_page(vma) -> bool:
    f = getattr(vma, "file", None)
    return f is not None and f.kind == "hugetlb"


# -- finding a table to share ---------------------------------------------------------

def vma_shareable(vma, addr: int) -> bool:
    """mm/hugetlb.c: __vma_shareable_lock() and the range test of
    want_pmd_share(): VM_MAYSHARE, the whole PUD-aligned range inside the
    VMA, and the VMA lock still allocated (``vm_private_data``)."""
    base = addr & PUD_MASK
    return bool(vma.flags & VM_SHARED) and vma.start <= base and base + PUD_SIZE <= vma.end \
        and vma.vma_lock is not None


def want_pmd_share(vma, addr: int) -> bool:
    """mm/hugetlb.c: want_pmd_share() (no userfaultfd in the model)."""
    return vma_shareable(vma, addr)


def page_table_shareable(svma, vma, addr: int, idx: int) -> int:
    """mm/hugetlb.c: page_table_shareable(): the address in ``svma`` of file
    page ``idx`` if its PMD table could be ``vma``'s at ``addr``: the same
    position within the PUD, the same flags, the whole PUD range inside
    ``svma``, and ``svma``'s VMA lock still there (``vm_private_data``: a
    VMA on its way out freed it under ``i_mmap_rwsem`` in its final unmap).
    0 if not."""
    saddr = ((idx - svma.pgoff) << PAGE_SHIFT) + svma.start
    sbase = saddr & PUD_MASK
    s_end = sbase + PUD_SIZE
    if (index(2, addr) != index(2, saddr) or vma.flags != svma.flags
            or not (svma.start <= sbase and s_end <= svma.end) or svma.vma_lock is None):
        return 0
    return saddr


def hugetlb_walk_pud(cpu: Cpu, mm: Mm, addr: int, who: str) -> Ptr | None:
    """The PUD entry of ``addr`` in ``mm`` (pgd_offset/p4d_offset/pud_offset),
    or None if the PGD entry is none."""
    m = cpu.m
    pgd, pgd_gen = pgd_of(mm)
    val = m.sw_read(cpu, pgd, pgd_gen, index(4, addr), who)
    if not is_table_entry(val):
        return None
    child = child_of(cpu, val)
    if child is None:
        return None
    return Ptr(child[0], child[1], index(3, addr))


def hugetlb_walk(cpu: Cpu, mm: Mm, addr: int, who: str) -> tuple[Ptr, Ptr] | None:
    """mm/hugetlb.c: hugetlb_walk() -> huge_pte_offset() for a PMD-sized
    hstate: (the PUD entry, the PMD entry) of ``addr``, or None if the PUD
    entry is none.  The caller holds the VMA lock or ``i_mmap_rwsem``, which
    keeps the PMD table from being unshared and freed."""
    m = cpu.m
    pudp = hugetlb_walk_pud(cpu, mm, addr, who)
    if pudp is None:
        return None
    val = m.sw_read(cpu, pudp.frame, pudp.gen, pudp.idx, who)
    if not is_table_entry(val):
        return None
    child = child_of(cpu, val)
    if child is None:
        return None
    return pudp, Ptr(child[0], child[1], index(2, addr))


def huge_pmd_share(cpu: Cpu, mm: Mm, vma, addr: int, pudp: Ptr) -> Step:
    """mm/hugetlb.c: huge_pmd_share(): under ``i_mmap_lock_read()``, look
    for a VMA of another mm mapping the same file page whose PMD table could
    be ours (page_table_shareable()); take a share on its PMD table
    (ptdesc_pmd_pts_inc()); under ``mm->page_table_lock``, point our PUD at
    it if it is still none (pud_populate(), mm_inc_nr_pmds()), else drop the
    share again; then pmd_alloc() (a new table if nothing was shared)."""
    from .memory import __p_alloc
    m = cpu.m
    mapping = vma.file
    idx = vma.linear_page_index(addr)
    yield from i_mmap_lock_read(cpu, mapping)
    spte: Frame | None = None
    for svma in mapping.vmas_in(idx, idx):
        if svma is vma or svma.mm is None:
            continue
        saddr = page_table_shareable(svma, vma, addr, idx)
        if saddr:
            found = hugetlb_walk(cpu, svma.mm, saddr, "huge_pmd_share")
            if found is not None:
                spte = found[1].frame
                spte.share_count += 1  # ptdesc_pmd_pts_inc()
                m.h.emit(cpu.id, "pt_share", pfn=spte.pfn, gen=spte.gen, mm=mm.id, src=svma.mm.id,
                         count=spte.share_count)
                break
    if spte is not None:
        yield "huge_pmd_share:found"
        yield from spin_lock(cpu, mm.page_table_lock, "huge_pmd_share:page_table_lock")
        if not entry_present(m.sw_read(cpu, pudp.frame, pudp.gen, pudp.idx, "huge_pmd_share")):
            # pud_populate(): paravirt_alloc_pmd(), set_pud()
            paravirt_alloc(cpu, mm, spte)
            m.set_pxd(cpu, pudp, mk_table(spte.pfn), "pud_populate (huge_pmd_share)")
            mm.nr_pmds += 1  # mm_inc_nr_pmds()
        else:
            spte.share_count -= 1  # ptdesc_pmd_pts_dec()
        spin_unlock(cpu, mm.page_table_lock)
    # out: pte = (pte_t *)pmd_alloc(mm, pud, addr);
    if not entry_present(m.sw_read(cpu, pudp.frame, pudp.gen, pudp.idx, "huge_pmd_share")):
        yield from __p_alloc(cpu, mm, pudp, 2, addr & PUD_MASK)
    i_mmap_unlock_read(cpu, mapping)


def huge_pte_alloc(cpu: Cpu, mm: Mm, vma, addr: int) -> Step:
    """mm/hugetlb.c: huge_pte_alloc() for a PMD-sized hstate: p4d/pud_alloc(),
    then huge_pmd_share() if want_pmd_share() and the PUD is none, else
    pmd_alloc().  Returns the PMD pointer or None."""
    from .memory import __p_alloc
    m = cpu.m
    who = "fault"
    pgd, pgd_gen = pgd_of(mm)
    pgdp = Ptr(pgd, pgd_gen, index(4, addr))
    if not entry_present(m.sw_read(cpu, pgd, pgd_gen, pgdp.idx, who)):
        yield from __p_alloc(cpu, mm, pgdp, 3, addr & ~((1 << 39) - 1))
    pudp = hugetlb_walk_pud(cpu, mm, addr, who)
    if pudp is None:
        return None
    val = m.sw_read(cpu, pudp.frame, pudp.gen, pudp.idx, who)
    if not entry_present(val):
        if want_pmd_share(vma, addr):
            yield from huge_pmd_share(cpu, mm, vma, addr, pudp)
        else:
            yield from __p_alloc(cpu, mm, pudp, 2, addr & PUD_MASK)
        val = m.sw_read(cpu, pudp.frame, pudp.gen, pudp.idx, who)
    if not is_table_entry(val):
        return None
    child = child_of(cpu, val)
    if child is None:
        return None
    return Ptr(child[0], child[1], index(2, addr))


# -- faults -------------------------------------------------------------------------------

def hugetlb_fault(cpu: Cpu, mm: Mm, vma, addr: int, write: bool) -> Step:
    """mm/hugetlb.c: hugetlb_fault(): under the VMA lock for read (no unshare
    of this VMA's tables can run), huge_pte_alloc(), then hugetlb_no_page()
    if the huge PMD is none.  Returns a short result string."""
    m = cpu.m
    lock = vma.vma_lock
    if lock is None:
        return "retry: vma lock freed"
    yield from down_read(cpu, lock, "hugetlb_vma_lock_read")
    try:
        pmdp = yield from huge_pte_alloc(cpu, mm, vma, addr)
        if pmdp is None:
            return "retry"
        val = m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "fault")
        if pmd_trans_huge(val):
            return "huge pmd present"
        return (yield from hugetlb_no_page(cpu, mm, vma, pmdp, addr))
    finally:
        up_read(cpu, lock)


def hugetlb_no_page(cpu: Cpu, mm: Mm, vma, pmdp: Ptr, addr: int) -> Step:
    """mm/hugetlb.c: hugetlb_no_page() for a shared mapping: the folio from
    the page cache (filemap_lock_hugetlb_folio()) or a new one added to it
    (hugetlb_add_to_page_cache()); under the PMD lock (huge_pte_lock()), if
    the PMD is still none, hugetlb_add_file_rmap() and set_huge_pte_at().
    The mapping keeps the lookup's reference."""
    m = cpu.m
    mapping = vma.file
    haddr = addr & PMD_MASK
    hidx = vma.linear_page_index(haddr) & ~(HPAGE_PMD_NR - 1)
    folio = mapping.pages.get(hidx)
    if folio is None:
        folio = m.frames.alloc(cpu.id, DATA, mm=mm.id, va=haddr, order=HPAGE_PMD_ORDER)
        folio.refcount += 1  # the page cache's
        folio.mapping = mapping
        folio.index = hidx
        mapping.pages[hidx] = folio
        m.h.emit(cpu.id, "pagecache_add", file=mapping.id, index=hidx, pfn=folio.pfn, gen=folio.gen,
                 huge=True)
    else:
        folio.refcount += 1  # filemap_lock_hugetlb_folio(): the lookup's
    yield "hugetlb_fault:folio"
    ptl = pmd_lockptr(cpu, mm, pmdp)  # huge_pte_lock()
    yield from spin_lock(cpu, ptl, "hugetlb_fault:pmd_lock")
    if not pmd_none(m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "fault")):
        spin_unlock(cpu, ptl)
        m.frames.put_page(cpu.id, folio, "hugetlb_no_page: raced")
        return "raced: pmd present"
    folio.mapcount += 1  # hugetlb_add_file_rmap()
    m.set_pxd(cpu, pmdp, mk_huge_pmd(folio.pfn, True), "set_huge_pte_at (hugetlb_no_page)")
    spin_unlock(cpu, ptl)
    return f"mapped hugetlb page {hidx} pfn {folio.pfn:#x}"


# -- unsharing and zapping --------------------------------------------------------------------

def huge_pmd_unshare(tlb: MmuGather, vma, addr: int, pudp: Ptr, pmdp: Ptr) -> bool:
    """mm/hugetlb.c: huge_pmd_unshare() (8ce720d5bd91): if the PMD table is
    shared, clear our PUD entry, tlb_unshare_pmd_ptdesc() (the strategy's
    hook), mm_dec_nr_pmds().  The caller holds the PMD lock, the VMA lock
    and ``i_mmap_rwsem`` for write, and must call huge_pmd_unshare_flush()
    before dropping ``i_mmap_rwsem``.  True if it unshared."""
    m = tlb.m
    table = pmdp.frame
    if table.share_count <= 0:  # !ptdesc_pmd_is_shared()
        return False
    m.set_pxd(tlb.cpu, pudp, 0, "pud_clear (huge_pmd_unshare)")
    m.S.tlb_unshare_pmd_ptdesc(tlb, table, addr)
    tlb.mm.nr_pmds -= 1  # mm_dec_nr_pmds()
    return True


def huge_pmd_unshare_flush(tlb: MmuGather, vma) -> Step:
    """mm/hugetlb.c: huge_pmd_unshare_flush(): complete a sequence of
    huge_pmd_unshare() calls while ``i_mmap_rwsem`` is still held:
    tlb_flush_unshared_tables() (the strategy's hook)."""
    yield from tlb.m.S.tlb_flush_unshared_tables(tlb)


def __unmap_hugepage_range(tlb: MmuGather, vma, start: int, end: int) -> Step:
    """mm/hugetlb.c: __unmap_hugepage_range(): for each huge page of
    [start, end): under the PMD lock, unshare the whole PMD table if it is
    shared (and skip to the next PUD), else clear the huge PMD
    (huge_ptep_get_and_clear(), tlb_remove_huge_tlb_entry()), drop the rmap
    and queue the folio's reference on the gather (tlb_remove_page_size());
    then huge_pmd_unshare_flush()."""
    m = tlb.m
    cpu = tlb.cpu
    mm = tlb.mm
    S = m.S
    who = "__unmap_hugepage_range"
    tlb_start_vma(tlb, vma)
    tlb.vma_huge = True  # tlb_change_page_size()
    addr = start & PMD_MASK
    while addr < end:
        found = hugetlb_walk(cpu, mm, addr, who)
        if found is None:
            addr = (addr & PUD_MASK) + PUD_SIZE  # address |= last_addr_mask; address += sz
            continue
        pudp, pmdp = found
        ptl = pmd_lockptr(cpu, mm, pmdp)  # huge_pte_lock()
        yield from spin_lock(cpu, ptl, "hugetlb_zap:pmd_lock")
        if huge_pmd_unshare(tlb, vma, addr, pudp, pmdp):
            spin_unlock(cpu, ptl)
            yield f"{who}:unshared"
            addr = (addr & PUD_MASK) + PUD_SIZE
            continue
        val = m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, who)
        if pmd_none(val):
            spin_unlock(cpu, ptl)
            addr = _next_huge_pmd(cpu, pmdp, addr, end, who)
            continue
        m.set_pxd(cpu, pmdp, 0, "huge_ptep_get_and_clear (__unmap_hugepage_range)")
        tlb_flush_pmd_range(tlb, addr, PMD_SIZE)  # tlb_remove_huge_tlb_entry()
        folio = m.frames.get(entry_pfn(val))
        if folio is not None and folio.state == DATA:
            folio.mapcount -= 1  # hugetlb_remove_rmap()
        spin_unlock(cpu, ptl)
        yield f"{who}:cleared"
        if folio is not None and folio.state == DATA:
            # tlb_remove_page_size(tlb, folio_page(folio, 0), huge_page_size(h))
            if (yield from S.__tlb_remove_page_size(tlb, folio, HUGE_PAGE_SIZE)):
                yield from S.tlb_flush_mmu(tlb)
        addr += PMD_SIZE
    yield from tlb_end_vma(tlb, vma)
    yield from huge_pmd_unshare_flush(tlb, vma)


def _next_huge_pmd(cpu: Cpu, pmdp: Ptr, addr: int, end: int, who: str) -> int:
    """The next address of [addr + PMD_SIZE, end) whose huge PMD in this
    table is not none, or the end of the table's range.  MODEL: the kernel's
    loop reads every entry; the none ones change nothing, so they are
    skipped with one software access to the table."""
    m = cpu.m
    table = pmdp.frame
    m.sw_touch(cpu, table, pmdp.gen, who)
    base = addr & PUD_MASK
    stop = min(end, base + PUD_SIZE)
    lo = index(2, addr) + 1
    best = None
    for i, v in table.entries.items():
        if i >= lo and v and (best is None or i < best):
            best = i
    nxt = base + best * PMD_SIZE if best is not None else base + PUD_SIZE
    return min(nxt, stop)


def hugetlb_zap_begin(cpu: Cpu, vma) -> Step:
    """mm/hugetlb.c: __hugetlb_zap_begin(): the VMA lock for write, then
    ``i_mmap_lock_write()``: no fault of this VMA and no huge_pmd_share() of
    the file can run during the zap."""
    if vma.vma_lock is not None:
        yield from down_write(cpu, vma.vma_lock, "hugetlb_vma_lock_write")
    yield from i_mmap_lock_write(cpu, vma.file)


def hugetlb_zap_end(cpu: Cpu, vma, final: bool) -> None:
    """mm/hugetlb.c: __hugetlb_zap_end(): at the final unmap (munmap, exit:
    ZAP_FLAG_UNMAP) unlock and free the VMA lock *before* ``i_mmap_rwsem`` is
    dropped (``__hugetlb_vma_unlock_write_free()``): with ``vm_private_data``
    NULL the VMA can no longer be chosen by huge_pmd_share(), so its page
    tables, which free_pgtables() frees asynchronously, cannot gain a sharer;
    otherwise just unlock.  Then ``i_mmap_unlock_write()``."""
    lock = vma.vma_lock
    if lock is not None:
        up_write(cpu, lock)
        if final:
            vma.vma_lock = None
    i_mmap_unlock_write(cpu, vma.file)


def unmap_hugepage_vma(tlb: MmuGather, vma, start: int, end: int, final: bool) -> Step:
    """mm/memory.c: unmap_vmas()/zap_page_range_single_batched() for a hugetlb
    VMA: hugetlb_zap_begin(), unmap_single_vma() -> __unmap_hugepage_range(),
    hugetlb_zap_end()."""
    yield from hugetlb_zap_begin(tlb.cpu, vma)
    yield from __unmap_hugepage_range(tlb, vma, start, end)
    hugetlb_zap_end(tlb.cpu, vma, final)


def hugetlb_range_ok(vma, start: int, end: int) -> bool:
    """A munmap/madvise range must be huge-page aligned within a hugetlb VMA
    (hugetlb_vm_op_split(), madvise_dontneed_free_valid_vma())."""
    return start % HUGE_PAGE_SIZE == 0 and end % HUGE_PAGE_SIZE == 0
