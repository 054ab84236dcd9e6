"""mm/mremap.c: moving a range to a new address in the same mm.

Read at mainline v6.19 (``struct pagetable_move_control``,
``mremap_folio_pte_batch()``).  The ``mremap`` operation is
``mremap(addr, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, new_addr)``, under
the mmap lock held for write throughout:

1. ``MREMAP_FIXED``: whatever is mapped at the target is unmapped first
   (``do_vmi_munmap()``: zap, ``free_pgtables()``, ``tlb_finish_mmu()``);
2. ``copy_vma()``: a new VMA at the target (linked into the file's
   ``i_mmap`` for a file mapping; a fresh VMA, so ``need_rmap_locks`` is
   false: the rmap walks the old VMA before the new one and cannot miss both
   the old and the new PTE, mremap.c's comment in ``move_ptes()``);
3. ``move_page_tables()``: per PMD-sized extent, either ``move_normal_pmd()``
   (the whole PTE table re-pointed: the old PMD cleared and the new one
   populated under both PMD locks, with the rmap locks, and
   ``flush_tlb_range()`` of the old range before the locks go; chosen when
   the extent is a whole, PMD-aligned PMD at both ends and the new PMD is
   none, with CONFIG_HAVE_MOVE_PMD as on x86), or ``move_ptes()`` (each PTE
   moved under both PTLs, and, if any was present, ``flush_tlb_range()`` of
   the old range *before the PTLs are dropped*: eb66ae030829, "mremap:
   properly flush TLB before releasing the page", Jann Horn 2018: the lifetime
   of a moved page is held by the PTL, not by a gather, so a zap of the new
   PTE (an rmap zap needs no mmap lock) must not be able to free it while a
   TLB still maps it at the old address); the same for whole PUDs
   (``move_normal_pud()``, CONFIG_HAVE_MOVE_PUD); all inside
   ``mmu_notifier_invalidate_range_start/end()`` of the old range;
4. the old range is unmapped (``unmap_source_vma()`` -> ``do_vmi_munmap()``):
   nothing left to zap, the emptied old tables are freed through the
   strategy.

The flushes are ``flush_tlb_range()``: on x86
``flush_tlb_mm_range(mm, start, end, PAGE_SHIFT, true)`` (``freed_tables``
since 3ef938c35035: a PMD pointing at a table may be what changed), through
the platform's flush.

With THP (``env.thp``) a huge PMD whose whole extent moves is
``move_huge_pmd()`` (huge_memory.py), one that moves in part is split first
(``split_huge_pmd()``), as move_page_tables() does.

MODEL: no hugetlb moves, no MREMAP_DONTUNMAP, no resize, no
``try_realign_addr()`` (a range that does not start PMD-aligned is moved with
``move_ptes()``; realigning needs the old range to begin a VMA at an unaligned
address, which the generator never makes); no ``flush_tlb_batched_pending()``
(the model has no batched-unmap flushes); the rmap and page-table locks are
taken in the kernel's order.
"""

from __future__ import annotations

from .cpu import Cpu, Mm, Step, Vma, down_write, pgd_of, spin_lock, spin_unlock, up_write
from .filemap import i_mmap_lock_write, i_mmap_unlock_write, vma_link_file
from .huge_memory import move_huge_pmd, split_huge_pmd
from .hugetlb import is_vm_hugetlb_page
from .memory import __p_alloc, next_present, p_populate
from .mmap import do_vmi_align_munmap
from .mmu_notifier import mmu_notifier_invalidate_range_end, mmu_notifier_invalidate_range_start
from .paravirt import arch_enter_lazy_mmu_mode, arch_leave_lazy_mmu_mode
from .pgtable import (
    PAGE_SIZE,
    PMD_MASK,
    PMD_SIZE,
    PUD_SIZE,
    entry_pfn,
    entry_present,
    index,
    is_table_entry,
    pmd_trans_huge,
)
from .pgtable_generic import Ptr, __pte_offset_map_lock, child_of, pte_offset_map_rw_nolock, pte_unmap
from .pt_reclaim import pmd_lockptr
from .tlbflush import flush_tlb_range


class PagetableMoveControl:
    """struct pagetable_move_control."""

    __slots__ = ("old", "new", "old_addr", "old_end", "new_addr", "len_in", "need_rmap_locks")

    def __init__(self, old: Vma, new: Vma, old_addr: int, new_addr: int, length: int) -> None:
        self.old = old
        self.new = new
        self.old_addr = old_addr
        self.old_end = old_addr + length
        self.new_addr = new_addr
        self.len_in = length
        self.need_rmap_locks = False  # copy_vma() of a fresh VMA


def take_rmap_locks(cpu: Cpu, vma: Vma) -> Step:
    """mm/mremap.c: take_rmap_locks() (the anon_vma lock guards no walker the
    model has)."""
    if vma.file is not None:
        yield from i_mmap_lock_write(cpu, vma.file)


def drop_rmap_locks(cpu: Cpu, vma: Vma) -> None:
    if vma.file is not None:
        i_mmap_unlock_write(cpu, vma.file)


def _walk(cpu: Cpu, mm: Mm, addr: int, levels: tuple[int, ...], who: str) -> Ptr | None:
    """pgd_offset() downwards through present table entries; None at a none."""
    m = cpu.m
    f, gen = pgd_of(mm)
    for level in levels:
        val = m.sw_read(cpu, f, gen, index(level, addr), who)
        if not is_table_entry(val):
            return None
        child = child_of(cpu, val)
        if child is None:
            return None
        f, gen = child
    return Ptr(f, gen, index(levels[-1] - 1, addr))


def get_old_pud(cpu: Cpu, mm: Mm, addr: int) -> Ptr | None:
    return _walk(cpu, mm, addr, (4,), "mremap")


def get_old_pmd(cpu: Cpu, mm: Mm, addr: int) -> Ptr | None:
    pmdp = _walk(cpu, mm, addr, (4, 3), "mremap")
    if pmdp is None or not entry_present(cpu.m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "mremap")):
        return None
    return pmdp


def _alloc_down(cpu: Cpu, mm: Mm, addr: int, levels: tuple[int, ...]) -> Step:
    """p4d/pud/pmd_alloc() along ``levels``: allocate what is none."""
    m = cpu.m
    f, gen = pgd_of(mm)
    for level in levels:
        parent = Ptr(f, gen, index(level, addr))
        val = m.sw_read(cpu, f, gen, parent.idx, "mremap")
        if not entry_present(val):
            yield from __p_alloc(cpu, mm, parent, level - 1, addr & ~((1 << (9 * (level - 1) + 12)) - 1))
            val = m.sw_read(cpu, f, gen, parent.idx, "mremap")
        child = child_of(cpu, val)
        assert child is not None  # present: populated above, under the mmap write lock
        f, gen = child
    return Ptr(f, gen, index(levels[-1] - 1, addr))


def alloc_new_pud(cpu: Cpu, mm: Mm, addr: int) -> Step:
    return (yield from _alloc_down(cpu, mm, addr, (4,)))


def alloc_new_pmd(cpu: Cpu, mm: Mm, addr: int) -> Step:
    return (yield from _alloc_down(cpu, mm, addr, (4, 3)))


def get_extent(pmc: PagetableMoveControl, size: int) -> int:
    """mm/mremap.c: get_extent(): up to the next ``size`` boundary of both the
    old and the new address, and no further than the end."""
    mask = ~(size - 1)
    old_addr, new_addr = pmc.old_addr, pmc.new_addr
    extent = ((old_addr + size) & mask) - old_addr
    extent = min(extent, pmc.old_end - old_addr)
    return min(extent, ((new_addr + size) & mask) - new_addr)


def _move_table_entry(cpu: Cpu, pmc: PagetableMoveControl, old: Ptr, new: Ptr, span: int,
                      what: str) -> Step:
    """move_normal_pmd() / move_normal_pud(): re-point a whole lower table."""
    m = cpu.m
    mm = pmc.old.mm
    if entry_present(m.sw_read(cpu, new.frame, new.gen, new.idx, what)):
        m.h.emit(cpu.id, "bug", what=f"{what}(): the destination entry is not none")
        return False
    if span == PMD_SIZE:  # pmd_lock(): split PMD locks on x86-64
        old_ptl, new_ptl = pmd_lockptr(cpu, mm, old), pmd_lockptr(cpu, mm, new)
    else:  # pud_lock(): mm->page_table_lock
        old_ptl = new_ptl = mm.page_table_lock
    yield from spin_lock(cpu, old_ptl, f"{what}:old_ptl")
    if new_ptl is not old_ptl:
        yield from spin_lock(cpu, new_ptl, f"{what}:new_ptl")
    val = m.sw_read(cpu, old.frame, old.gen, old.idx, what)
    moved = False
    if is_table_entry(val):  # racing with collapse? (a none or leaf entry is not moved)
        m.set_pxd(cpu, old, 0, f"pmd_clear ({what})")
        table = m.frames[entry_pfn(val)]
        table.owner_va = pmc.new_addr & ~(span - 1)
        p_populate(cpu, mm, new, table)
        m.h.emit(cpu.id, "table_moved", mm=mm.id, pfn=table.pfn, gen=table.gen, old=pmc.old_addr,
                 new=pmc.new_addr, level=table.level)
        yield f"{what}:moved"
        yield from flush_tlb_range(cpu, pmc.old, pmc.old_addr, pmc.old_addr + span)
        moved = True
    if new_ptl is not old_ptl:
        spin_unlock(cpu, new_ptl)
    spin_unlock(cpu, old_ptl)
    return moved


def move_normal_pmd(cpu: Cpu, pmc: PagetableMoveControl, old_pmd: Ptr, new_pmd: Ptr) -> Step:
    """mm/mremap.c: move_normal_pmd() (CONFIG_HAVE_MOVE_PMD): the PTE table
    changes address; nothing is freed; the flush covers the old range, and
    drops the paging-structure entries of every CPU that cached the old PMD."""
    return (yield from _move_table_entry(cpu, pmc, old_pmd, new_pmd, PMD_SIZE, "move_normal_pmd"))


def move_normal_pud(cpu: Cpu, pmc: PagetableMoveControl, old_pud: Ptr, new_pud: Ptr) -> Step:
    """mm/mremap.c: move_normal_pud() (CONFIG_HAVE_MOVE_PUD)."""
    return (yield from _move_table_entry(cpu, pmc, old_pud, new_pud, PUD_SIZE, "move_normal_pud"))


def move_pgt_entry(cpu: Cpu, pmc: PagetableMoveControl, pud: bool, old: Ptr, new: Ptr) -> Step:
    """mm/mremap.c: move_pgt_entry(): NORMAL_PMD and NORMAL_PUD moves always
    take the rmap locks (should_take_rmap_locks())."""
    yield from take_rmap_locks(cpu, pmc.old)
    if pud:
        moved = yield from move_normal_pud(cpu, pmc, old, new)
    else:
        moved = yield from move_normal_pmd(cpu, pmc, old, new)
    drop_rmap_locks(cpu, pmc.old)
    return moved


def move_ptes(cpu: Cpu, pmc: PagetableMoveControl, extent: int, old_pmd: Ptr, new_pmd: Ptr) -> Step:
    """mm/mremap.c: move_ptes(): both PTLs held while each PTE moves, and the
    flush before either is dropped.  Returns False (-EAGAIN) if a table vanished."""
    m = cpu.m
    vma = pmc.old
    who = "move_ptes"
    old_addr, new_addr = pmc.old_addr, pmc.new_addr
    old_end = old_addr + extent
    if pmc.need_rmap_locks:
        yield from take_rmap_locks(cpu, vma)
    try:
        res = yield from __pte_offset_map_lock(cpu, old_pmd, old_addr, who)
        if res is None:
            return False
        old_pte, old_ptl = res
        got = pte_offset_map_rw_nolock(cpu, new_pmd, new_addr, who)
        if got is None:
            spin_unlock(cpu, old_ptl)
            pte_unmap(cpu)
            return False
        new_pte, new_ptl = got
        if new_ptl is not old_ptl:
            yield from spin_lock(cpu, new_ptl, f"{who}:new_ptl")
        arch_enter_lazy_mmu_mode(cpu)
        force_flush = False
        moved = 0
        a = old_addr
        while a < old_end:
            # the pte_none() entries are skipped (one scan of the table, as zap does)
            oi = next_present(old_pte.table, old_pte.gen, index(1, a), index(1, a) + (old_end - a) // PAGE_SIZE,
                              m, cpu, who)
            if oi is None:
                break
            a = (a & PMD_MASK) + oi * PAGE_SIZE
            b = new_addr + (a - old_addr)
            val = m.sw_read(cpu, old_pte.table, old_pte.gen, oi, who)
            if entry_present(val):
                force_flush = True
            m.sw_write(cpu, old_pte.table, old_pte.gen, oi, 0, "get_and_clear_full_ptes (move_ptes)")
            m.sw_write(cpu, new_pte.table, new_pte.gen, index(1, b), val, "set_ptes (move_ptes)")
            moved += 1
            yield f"{who}:moved"
            a += PAGE_SIZE
        arch_leave_lazy_mmu_mode(cpu)
        if force_flush:
            m.h.emit(cpu.id, "ptes_moved", mm=vma.mm.id, old=old_addr, end=old_end, new=new_addr, n=moved)
            yield from flush_tlb_range(cpu, vma, old_end - extent, old_end)
        if new_ptl is not old_ptl:
            spin_unlock(cpu, new_ptl)
        pte_unmap(cpu)  # the new table's mapping
        spin_unlock(cpu, old_ptl)
        pte_unmap(cpu)
        return True
    finally:
        if pmc.need_rmap_locks:
            drop_rmap_locks(cpu, vma)


def move_page_tables(cpu: Cpu, pmc: PagetableMoveControl) -> Step:
    """mm/mremap.c: move_page_tables(): returns the bytes moved."""
    mm = pmc.old.mm
    if not pmc.len_in:
        return 0
    start, end = pmc.old_addr, pmc.old_end
    yield from mmu_notifier_invalidate_range_start(cpu, mm, start, end, "UNMAP")
    while pmc.old_addr < pmc.old_end:
        yield "move_page_tables:next"  # cond_resched()
        extent = get_extent(pmc, PUD_SIZE)
        old_pud = get_old_pud(cpu, mm, pmc.old_addr)
        if old_pud is None:
            pmc.old_addr += extent
            pmc.new_addr += extent
            continue
        new_pud = yield from alloc_new_pud(cpu, mm, pmc.new_addr)
        if extent == PUD_SIZE and (yield from move_pgt_entry(cpu, pmc, True, old_pud, new_pud)):
            pmc.old_addr += extent
            pmc.new_addr += extent
            continue
        extent = get_extent(pmc, PMD_SIZE)
        old_pmd = get_old_pmd(cpu, mm, pmc.old_addr)
        if old_pmd is None:
            pmc.old_addr += extent
            pmc.new_addr += extent
            continue
        new_pmd = yield from alloc_new_pmd(cpu, mm, pmc.new_addr)
        while True:  # again:
            m = cpu.m
            if m.env.thp and pmd_trans_huge(m.sw_read(cpu, old_pmd.frame, old_pmd.gen, old_pmd.idx, "mremap")):
                # HPAGE_PMD: move_pgt_entry() takes the rmap locks only if
                # need_rmap_locks (false: a fresh VMA)
                if extent == PMD_SIZE and (yield from move_huge_pmd(cpu, pmc.old, pmc.old_addr, pmc.new_addr,
                                                                    old_pmd, new_pmd)):
                    break
                yield from split_huge_pmd(cpu, mm, old_pmd, pmc.old_addr)
            elif extent == PMD_SIZE and (yield from move_pgt_entry(cpu, pmc, False, old_pmd, new_pmd)):
                break
            if not entry_present(m.sw_read(cpu, old_pmd.frame, old_pmd.gen, old_pmd.idx, "mremap")):
                break
            # pte_alloc(new_mm, new_pmd)
            if not entry_present(m.sw_read(cpu, new_pmd.frame, new_pmd.gen, new_pmd.idx, "mremap")):
                yield from __p_alloc(cpu, mm, new_pmd, 1, pmc.new_addr & PMD_MASK)
            if (yield from move_ptes(cpu, pmc, extent, old_pmd, new_pmd)):
                break
        pmc.old_addr += extent
        pmc.new_addr += extent
    yield from mmu_notifier_invalidate_range_end(cpu, mm, start, end, "UNMAP")
    return pmc.old_addr - start


def mremap_op(cpu: Cpu, op) -> Step:
    """mm/mremap.c: do_mremap() -> mremap_to() -> move_vma() for
    ``MREMAP_MAYMOVE | MREMAP_FIXED`` with an unchanged length."""
    m = cpu.m
    mm = cpu.current_mm
    if mm is None:
        return "skipped: kernel thread"
    addr, length, new_addr = op.addr, op.len, op.new_addr
    if new_addr < addr + length and addr < new_addr + length:
        return "EINVAL: the ranges overlap"
    if any(is_vm_hugetlb_page(v) for v in mm.vmas
           if v.start < addr + length and addr < v.end or v.start < new_addr + length and new_addr < v.end):
        # MODEL: move_hugetlb_page_tables() is not modelled
        return "EINVAL: hugetlb"
    yield from down_write(cpu, mm.mmap_lock)
    try:
        vma = mm.find_vma(addr)
        if vma is None or vma.end < addr + length:
            return "EFAULT"
        # MREMAP_FIXED: unmap the destination first (the mmap lock stays held for write)
        yield from do_vmi_align_munmap(cpu, mm, new_addr, new_addr + length, downgrade=False)
        vma = mm.find_vma(addr)  # (unchanged: the ranges do not overlap)
        assert vma is not None
        # copy_vma()
        new_vma = Vma(new_addr, new_addr + length, vma.file, vma.linear_page_index(addr), vma.flags, mm)
        mm.vmas.append(new_vma)
        mm.vmas.sort(key=lambda v: v.start)
        if vma.file is None:
            m.h.emit(cpu.id, "vma_add", mm=mm.id, start=new_addr, end=new_addr + length)
        else:
            m.h.emit(cpu.id, "vma_add", mm=mm.id, start=new_addr, end=new_addr + length, file=vma.file.id,
                     pgoff=new_vma.pgoff)
            yield from vma_link_file(cpu, new_vma)
        pmc = PagetableMoveControl(vma, new_vma, addr, new_addr, length)
        moved = yield from move_page_tables(cpu, pmc)
        # the page counts move with the pages (the rss of the mm is unchanged)
        yield "mremap:moved"
        # unmap_source_vma()
        yield from do_vmi_align_munmap(cpu, mm, addr, addr + length, downgrade=False)
        return f"moved {moved:#x} bytes to {new_addr:#x}"
    finally:
        up_write(cpu, mm.mmap_lock)
