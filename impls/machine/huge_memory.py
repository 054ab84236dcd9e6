"""mm/huge_memory.c: anonymous transparent huge pages mapped by a PMD.

Read: mainline mm/huge_memory.c, mm/memory.c (``__handle_mm_fault()``,
``zap_pmd_range()``) and mm/pgtable-generic.c as of v6.15 (``map_anon_folio_pmd()``
is the v6.16 name of the tail of ``__do_huge_pmd_anonymous_page()``; nothing
modelled here changed between them).

* **Fault** (``__handle_mm_fault()``): on a none PMD whose 2 MiB range the
  VMA covers, ``do_huge_pmd_anonymous_page()`` allocates a PMD-order folio and
  a PTE table to deposit (``pte_alloc_one()``), takes the PMD lock, and if the
  PMD is still none deposits the table (``pgtable_trans_huge_deposit()``,
  ``mm_inc_nr_ptes()``) and maps the folio with ``set_pmd_at()``.  The
  ``alloc_fails:thp_folio`` choice is the folio allocation failing
  (``VM_FAULT_FALLBACK``: the 4 KiB path runs).  A fault on a huge PMD (or
  on the not-present value of one being split, which x86 still sees as
  ``pmd_trans_huge()``) is ``huge_pmd_set_accessed()``: PMD lock, re-check.
* **Zap** (``zap_pmd_range()``): a huge PMD the zap covers whole is
  ``zap_huge_pmd()``: under the PMD lock, clear it, widen the gather's range
  (``tlb_remove_pmd_tlb_entry()``: cleared_pmds), drop the folio's PMD
  mapping, free the deposited table at once (``zap_deposited_table()``:
  withdraw + the strategy's ``pte_free()``, no flush, no RCU), then queue the
  folio on the gather.  A huge PMD covered in part is split first
  (``__split_huge_pmd()``), then zapped as PTEs.
* **Split** (``__split_huge_pmd()`` -> ``__split_huge_pmd_locked()``): under
  the PMD lock, ``pmdp_invalidate()`` (the transient not-present huge value,
  then ``flush_tlb_range()``: never a 4 KiB and a 2 MiB TLB entry for the same
  address, erratum 383), one reference and one mapping per subpage
  (``folio_ref_add()``, ``folio_add_anon_rmap_ptes()``), withdraw the
  deposited table, fill it (``set_ptes()``), drop the PMD mapping, and
  ``pmd_populate()`` it in place of the invalid value.  Lockless walkers
  (GUP-fast, ``pte_offset_map()``, the hardware) may see every state.

MODEL: no huge zero page (a read fault maps a real THP, as every 4 KiB fault
allocates a page); no deferred split queue and no split_huge_page() of the
folio itself (a PTE-mapped THP stays one folio until its last page is
unmapped); no PMD migration entries, swap or mprotect of huge PMDs.

* **mremap** (``move_page_tables()``): a huge PMD whose whole 2 MiB extent
  moves is ``move_huge_pmd()``; one that moves in part is split first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cpu import Cpu, Mm, Step, down_read, spin_lock, spin_unlock, up_read
from .memory import p_populate, pte_alloc_one
from .mmu_gather import tlb_flush_pmd_range
from .mmu_notifier import mmu_notifier_invalidate_range_end, mmu_notifier_invalidate_range_start
from .page_alloc import DATA, Frame
from .pgtable import (
    HPAGE_PMD_NR,
    HPAGE_PMD_ORDER,
    HPAGE_PMD_SIZE,
    PMD_MASK,
    entry_pfn,
    entry_writable,
    mk_huge_pmd,
    mk_pte,
    pmd_none,
    pmd_present,
    pmd_trans_huge,
)
from .pgtable_generic import (
    Ptr,
    pgtable_trans_huge_deposit,
    pgtable_trans_huge_withdraw,
    pmdp_invalidate,
    walk_to_pmd,
)
from .pt_reclaim import pmd_lockptr
from .tlbflush import flush_tlb_range

if TYPE_CHECKING:
    from .mmu_gather import MmuGather


def thp_vma_suitable(mm: Mm, haddr: int) -> bool:
    """include/linux/huge_mm.h: thp_vma_suitable_order(vma, haddr, PMD_ORDER):
    the VMA covers the whole aligned 2 MiB range (anonymous VMAs only).

    MODEL: a shmem VMA is never suitable: its faults never map huge
    (``shmem_enabled=never``, the default), and MADV_COLLAPSE/khugepaged of a
    file range (``hpage_collapse_scan_file()``, ``collapse_file()``) is not
    modelled."""
    vma = mm.find_vma(haddr)
    return (vma is not None and vma.file is None
            and vma.start <= haddr and haddr + HPAGE_PMD_SIZE <= vma.end)


# -- faults ------------------------------------------------------------------------

def thp_pmd_fault(cpu: Cpu, mm: Mm, pmdp: Ptr, addr: int, write: bool) -> Step:
    """mm/memory.c: __handle_mm_fault() at the PMD, with THP enabled: the
    huge paths.  Returns None when the fault goes on to handle_pte_fault()."""
    m = cpu.m
    pmdval = m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "fault")
    if pmd_none(pmdval):
        if not thp_vma_suitable(mm, addr & PMD_MASK):
            return None
        return (yield from do_huge_pmd_anonymous_page(cpu, mm, pmdp, addr))
    if pmd_trans_huge(pmdval):
        # MODEL: every huge PMD is writable (no COW, no wp): wp_huge_pmd()
        # would reuse it; both come down to huge_pmd_set_accessed()
        return (yield from huge_pmd_set_accessed(cpu, mm, pmdp, pmdval))
    return None


def do_huge_pmd_anonymous_page(cpu: Cpu, mm: Mm, pmdp: Ptr, addr: int) -> Step:
    """mm/huge_memory.c: do_huge_pmd_anonymous_page() ->
    __do_huge_pmd_anonymous_page().  Returns None on VM_FAULT_FALLBACK."""
    m = cpu.m
    haddr = addr & PMD_MASK
    if m.choices.flip("alloc_fails:thp_folio"):
        # vma_alloc_anon_folio_pmd() failed: count_vm_event(THP_FAULT_FALLBACK)
        m.h.emit(cpu.id, "thp_fallback", addr=haddr)
        return None
    folio = m.frames.alloc(cpu.id, DATA, mm=mm.id, va=haddr, order=HPAGE_PMD_ORDER)
    pgtable = pte_alloc_one(cpu, mm, 1, haddr)
    yield "thp_fault:folio_alloc"
    ptl = pmd_lockptr(cpu, mm, pmdp)
    yield from spin_lock(cpu, ptl, "thp_fault:pmd_lock")
    if not pmd_none(m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "fault")):
        spin_unlock(cpu, ptl)
        m.S.pte_free(cpu, mm, pgtable)
        m.frames.put_page(cpu.id, folio, "folio_put (huge fault lost the race)")
        return "raced: pmd present"
    pgtable_trans_huge_deposit(cpu, mm, pmdp, pgtable)
    # map_anon_folio_pmd(): folio_add_new_anon_rmap(), set_pmd_at(),
    # add_mm_counter(MM_ANONPAGES, HPAGE_PMD_NR)
    folio.mapcount = 1
    m.set_pxd(cpu, pmdp, mk_huge_pmd(folio.pfn, True), "set_pmd_at (huge fault)")
    mm.rss += HPAGE_PMD_NR
    mm.nr_ptes += 1  # mm_inc_nr_ptes(): the deposited table
    spin_unlock(cpu, ptl)
    return f"mapped huge pfn {folio.pfn:#x}"


def huge_pmd_set_accessed(cpu: Cpu, mm: Mm, pmdp: Ptr, orig: int) -> Step:
    """mm/huge_memory.c: huge_pmd_set_accessed(): PMD lock, give up if the
    PMD changed (split, zapped), else touch_pmd() (MODEL: A/D bits are not
    modelled).  The access retries either way."""
    m = cpu.m
    ptl = pmd_lockptr(cpu, mm, pmdp)
    yield from spin_lock(cpu, ptl, "thp_fault:pmd_lock")
    same = m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "fault") == orig
    spin_unlock(cpu, ptl)
    return "huge pmd present" if same else "retry: pmd changed"


def follow_huge_pmd(cpu: Cpu, mm: Mm, pmdp: Ptr) -> Step:
    """mm/gup.c: follow_pmd_mask() on a leaf PMD -> follow_huge_pmd(): under
    the PMD lock, a reference on the folio if the PMD is still a present huge
    leaf.  Returns the folio, or None (not huge any more: follow the PTEs)."""
    m = cpu.m
    ptl = pmd_lockptr(cpu, mm, pmdp)
    yield from spin_lock(cpu, ptl, "follow_page:pmd_lock")
    val = m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "follow_page")
    folio = None
    if pmd_trans_huge(val) and val & 1:
        folio = m.frames.get(entry_pfn(val))
        if folio is not None:
            folio.refcount += 1
    spin_unlock(cpu, ptl)
    return folio


# -- zapping -----------------------------------------------------------------------

def zap_deposited_table(cpu: Cpu, mm: Mm, pmdp: Ptr) -> None:
    """mm/huge_memory.c: zap_deposited_table(): withdraw a deposited table
    and free it at once with pte_free() (the strategy's hook), then
    mm_dec_nr_ptes()."""
    pgtable = pgtable_trans_huge_withdraw(cpu, mm, pmdp)
    cpu.m.S.pte_free(cpu, mm, pgtable)
    mm.nr_ptes -= 1


def zap_huge_pmd(tlb: MmuGather, pmdp: Ptr, addr: int) -> Step:
    """mm/huge_memory.c: zap_huge_pmd().  Returns False when the PMD is no
    longer huge once locked (``__pmd_trans_huge_lock()`` failed)."""
    m = tlb.m
    cpu = tlb.cpu
    mm = tlb.mm
    S = m.S
    ptl = pmd_lockptr(cpu, mm, pmdp)
    yield from spin_lock(cpu, ptl, "zap_huge_pmd:pmd_lock")
    orig = m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "zap_huge_pmd")
    if not pmd_trans_huge(orig):
        spin_unlock(cpu, ptl)
        return False
    # pmdp_huge_get_and_clear_full(); tlb_remove_pmd_tlb_entry()
    m.set_pxd(cpu, pmdp, 0, "pmdp_huge_get_and_clear_full (zap_huge_pmd)")
    tlb_flush_pmd_range(tlb, addr & PMD_MASK, HPAGE_PMD_SIZE)
    folio = m.frames.get(entry_pfn(orig))
    if pmd_present(orig) and folio is not None:
        folio.mapcount -= 1  # folio_remove_rmap_pmd()
    zap_deposited_table(cpu, mm, pmdp)  # folio_test_anon()
    mm.rss -= HPAGE_PMD_NR
    spin_unlock(cpu, ptl)
    yield "zap_huge_pmd:cleared"
    if folio is not None and folio.state == DATA:
        # tlb_remove_page_size(tlb, &folio->page, HPAGE_PMD_SIZE)
        if (yield from S.__tlb_remove_page_size(tlb, folio, HPAGE_PMD_SIZE)):
            yield from S.tlb_flush_mmu(tlb)
    return True


# -- mremap -----------------------------------------------------------------------

def move_huge_pmd(cpu: Cpu, vma, old_addr: int, new_addr: int, old_pmd: Ptr, new_pmd: Ptr) -> Step:
    """mm/huge_memory.c: move_huge_pmd() (mremap's HPAGE_PMD move, the mmap
    lock held for write): refused if the destination PMD is not none; under
    the old PMD lock (``__pmd_trans_huge_lock()``: still huge?) and the new
    one, ``pmdp_huge_get_and_clear()``, the deposited table withdrawn from the
    old PMD table and deposited on the new one when their locks differ
    (``pmd_move_must_withdraw()``: split PMD locks, anonymous VMA),
    ``set_pmd_at()`` at the new address, then ``flush_pmd_tlb_range()`` of the
    old range (x86: ``flush_tlb_range()``) before the locks go.  Returns
    whether it moved."""
    m = cpu.m
    mm = vma.mm
    who = "move_huge_pmd"
    if not pmd_none(m.sw_read(cpu, new_pmd.frame, new_pmd.gen, new_pmd.idx, who)):
        return False
    old_ptl = pmd_lockptr(cpu, mm, old_pmd)
    yield from spin_lock(cpu, old_ptl, f"{who}:old_ptl")
    pmd = m.sw_read(cpu, old_pmd.frame, old_pmd.gen, old_pmd.idx, who)
    if not pmd_trans_huge(pmd):
        spin_unlock(cpu, old_ptl)
        return False
    new_ptl = pmd_lockptr(cpu, mm, new_pmd)
    if new_ptl is not old_ptl:
        yield from spin_lock(cpu, new_ptl, f"{who}:new_ptl")
    m.set_pxd(cpu, old_pmd, 0, "pmdp_huge_get_and_clear (move_huge_pmd)")
    force_flush = pmd_present(pmd)
    if new_ptl is not old_ptl:  # pmd_move_must_withdraw()
        pgtable = pgtable_trans_huge_withdraw(cpu, mm, old_pmd)
        pgtable_trans_huge_deposit(cpu, mm, new_pmd, pgtable)
    m.set_pxd(cpu, new_pmd, pmd, "set_pmd_at (move_huge_pmd)")
    m.h.emit(cpu.id, "huge_pmd_moved", mm=mm.id, pfn=entry_pfn(pmd), old=old_addr, new=new_addr)
    yield f"{who}:moved"
    if force_flush:
        yield from flush_tlb_range(cpu, vma, old_addr, old_addr + HPAGE_PMD_SIZE)
    if new_ptl is not old_ptl:
        spin_unlock(cpu, new_ptl)
    spin_unlock(cpu, old_ptl)
    return True


# -- splitting ---------------------------------------------------------------------

def __split_huge_pmd(cpu: Cpu, mm: Mm, pmdp: Ptr, address: int) -> Step:
    """mm/huge_memory.c: __split_huge_pmd(): inside the mmu notifiers, under
    the PMD lock, split_huge_pmd_locked() if the PMD is (still) huge."""
    m = cpu.m
    haddr = address & PMD_MASK
    yield from mmu_notifier_invalidate_range_start(cpu, mm, haddr, haddr + HPAGE_PMD_SIZE, "CLEAR")
    ptl = pmd_lockptr(cpu, mm, pmdp)
    yield from spin_lock(cpu, ptl, "split_huge_pmd:pmd_lock")
    if pmd_trans_huge(m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "split_huge_pmd")):
        yield from __split_huge_pmd_locked(cpu, mm, pmdp, haddr)
    spin_unlock(cpu, ptl)
    yield from mmu_notifier_invalidate_range_end(cpu, mm, haddr, haddr + HPAGE_PMD_SIZE, "CLEAR")


def __split_huge_pmd_locked(cpu: Cpu, mm: Mm, pmdp: Ptr, haddr: int) -> Step:
    """mm/huge_memory.c: __split_huge_pmd_locked() for a present anonymous
    huge PMD, without freeze (the PMD lock held)."""
    m = cpu.m
    m.h.emit(cpu.id, "thp_split_pmd", mm=mm.id, addr=haddr)
    # mark the PMD not present but still huge, flush: no CPU may keep a 2 MiB
    # entry once the 4 KiB ones can be loaded
    old = yield from pmdp_invalidate(cpu, mm, haddr, pmdp)
    yield "split_huge_pmd:invalidated"
    folio: Frame | None = m.frames.get(entry_pfn(old))
    write = entry_writable(old)
    if folio is not None:
        folio.refcount += HPAGE_PMD_NR - 1  # folio_ref_add()
        folio.mapcount += HPAGE_PMD_NR      # folio_add_anon_rmap_ptes()
    # withdraw the table only after the PMD is invalid (critical on Power)
    pgtable = pgtable_trans_huge_withdraw(cpu, mm, pmdp)
    # pmd_populate(mm, &_pmd, pgtable); pte_offset_map(&_pmd, haddr): the
    # table is not linked yet; set_ptes() fills all of it
    pfn = folio.pfn if folio is not None else entry_pfn(old)
    m.sw_write(cpu, pgtable, pgtable.gen, 0, mk_pte(pfn, write), "set_ptes (split)", nr=HPAGE_PMD_NR)
    if folio is not None:
        folio.mapcount -= 1  # folio_remove_rmap_pmd()
    # smp_wmb(): make the PTEs visible before the PMD
    p_populate(cpu, mm, pmdp, pgtable)


def split_huge_pmd(cpu: Cpu, mm: Mm, pmdp: Ptr, address: int) -> Step:
    """include/linux/huge_mm.h: split_huge_pmd(): only if the PMD reads as a
    huge (or migration) entry."""
    m = cpu.m
    if pmd_trans_huge(m.sw_read(cpu, pmdp.frame, pmdp.gen, pmdp.idx, "split_huge_pmd")):
        yield from __split_huge_pmd(cpu, mm, pmdp, address)
        return True
    return False


def split_op(cpu: Cpu, op) -> Step:
    """The ``split`` operation: under the mmap read lock, split the huge PMD
    mapping ``addr`` (mm/gup.c follow_pmd_mask() with FOLL_SPLIT_PMD, as
    uprobes asks for; also what a partial mprotect() does, under the write
    lock)."""
    m = cpu.m
    mm = cpu.current_mm
    if mm is None:
        return "skipped: kernel thread"
    if not m.env.thp:
        return "skipped: no THP"
    yield from down_read(cpu, mm.mmap_lock)
    try:
        vma = mm.find_vma(op.addr)
        if vma is None:
            return "no vma"
        if vma.vma_lock is not None or (vma.file is not None and vma.file.kind == "hugetlb"):
            return "EINVAL: hugetlb"  # a hugetlb PMD is never split
        pmdp = walk_to_pmd(cpu, mm, op.addr, "split_huge_pmd")
        if pmdp is None:
            return "no pmd table"
        if (yield from split_huge_pmd(cpu, mm, pmdp, op.addr)):
            return "split"
        return "not huge"
    finally:
        up_read(cpu, mm.mmap_lock)
