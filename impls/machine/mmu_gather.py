"""include/asm-generic/tlb.h, mm/mmu_gather.c (the configuration-independent
part), arch/x86/include/asm/tlb.h: ``struct mmu_gather`` and its page batch.

What is here is the same in every kernel configuration: the gather struct, the
flush range bookkeeping, the page batch (an on-stack bundle of
``MMU_GATHER_BUNDLE`` pages plus ``GFP_NOWAIT`` batch pages), and the generic
inlines ``tlb_flush_mmu_tlbonly()`` and ``tlb_finish_mmu()``.

How the gathered flags become invalidations is the architecture's: the arch
``tlb_flush()`` is the platform's ``tlb_flush`` hook (x86's,
:func:`x86_tlb_flush`, by default; arm64's broadcast TLBI in
``impls/platforms/arm64.py``), as is ``tlb_needs_table_invalidate()``.  arm64
treats ``unshared_tables`` like ``freed_tables`` (a walk-cache flush); x86
mainline passes ``freed_tables`` only (:func:`x86_tlb_flush`).

Read at mainline v6.19 (plus the 6.18.y backports of the same code): the
``vma_pfn`` flag and ``tlb_free_vmas()`` (Roman Gushchin, "mmu_gather: move
tlb flush for VM_PFNMAP/VM_MIXEDMAP vmas into free_pgtables()", 2025), and
the hugetlb unsharing state of 8ce720d5bd91 ("mm/hugetlb: fix excessive IPI
broadcasts when unsharing PMD tables using mmu_gather", David Hildenbrand,
Dec 2025): ``unshared_tables``, ``fully_unshared_tables``,
``tlb_gather_mmu_vma()``, ``tlb_unshare_pmd_ptdesc()``,
``tlb_flush_unshared_tables()`` and the warning in ``tlb_finish_mmu()``.

What differs between configurations, how page-table pages are freed
(``pte_free_tlb()`` & co. and ``tlb_flush_mmu()``), is the strategy's: see
``impls/machine/strategy.py`` for the protocol.  A strategy may also replace any
of the generic functions here; the machine always calls them through the
strategy (``m.S``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cpu import Cpu, Mm, Step
from .page_alloc import DATA, TABLE, Frame
from .pgtable import PAGE_SHIFT, PAGE_SIZE, PGDIR_SHIFT, PMD_SHIFT, PUD_SHIFT, TASK_SIZE
from .smp import smp_call_function
from .tlbflush import TLB_FLUSH_ALL, flush_tlb_mm_range

if TYPE_CHECKING:
    from .machine import Machine

ULONG_MAX = (1 << 64) - 1
MMU_GATHER_BUNDLE = 8
#: (PAGE_SIZE - sizeof(struct mmu_gather_batch)) / sizeof(void *) on x86-64
MAX_GATHER_BATCH = 510
MAX_GATHER_BATCH_COUNT = 10000 // MAX_GATHER_BATCH


class MmuGather:
    """struct mmu_gather.  ``batch`` belongs to the strategy (its table batch,
    ``struct mmu_table_batch`` when it has one); ``priv`` is free for a
    strategy's own bookkeeping."""

    __slots__ = (
        "cpu", "m", "mm", "fullmm", "need_flush_all", "freed_tables", "delayed_rmap",
        "cleared_ptes", "cleared_pmds", "cleared_puds", "cleared_p4ds", "start", "end",
        "batches", "active", "batch_count", "batch", "priv",
        "vma_pfn", "vma_huge", "unshared_tables", "fully_unshared_tables",
    )

    def __init__(self, cpu: Cpu, mm: Mm, fullmm: bool) -> None:
        self.cpu = cpu
        self.m: Machine = cpu.m
        self.mm = mm
        self.fullmm = fullmm
        self.need_flush_all = False
        self.freed_tables = False
        self.delayed_rmap = False
        self.cleared_ptes = self.cleared_pmds = self.cleared_puds = self.cleared_p4ds = False
        self.start = self.end = 0
        # tlb->local (max MMU_GATHER_BUNDLE) followed by batch pages
        self.batches: list[tuple[int, list[Any]]] = [(MMU_GATHER_BUNDLE, [])]
        self.active = 0
        self.batch_count = 0
        self.batch: Any = None
        self.priv: dict[str, Any] = {}
        self.vma_huge = False
        #: a VM_PFNMAP/VM_MIXEDMAP VMA was zapped since the last flush (tlb_free_vmas())
        self.vma_pfn = False
        #: a shared (hugetlb PMD) table was unshared since the last flush; reset
        #: with the range, like cleared_*
        self.unshared_tables = False
        #: a table was unshared by its last other sharer: its new sole owner may
        #: reuse it, so GUP-fast must be synced (tlb_flush_unshared_tables());
        #: set in __tlb_gather_mmu(), not reset with the range
        self.fully_unshared_tables = False
        _tlb_reset_range(self)  # (a dunder name would be mangled in a class body)


def __tlb_reset_range(tlb: MmuGather) -> None:
    """include/asm-generic/tlb.h: __tlb_reset_range()."""
    if tlb.fullmm:
        tlb.start = tlb.end = ULONG_MAX  # ~0
    else:
        tlb.start = TASK_SIZE
        tlb.end = 0
    tlb.freed_tables = False
    tlb.cleared_ptes = tlb.cleared_pmds = tlb.cleared_puds = tlb.cleared_p4ds = False
    tlb.unshared_tables = False
    # Do not reset mmu_gather::vma_* fields here ... except for vma_pfn, that
    # only cares if there's pending TLBI.
    tlb.vma_pfn = False


_tlb_reset_range = __tlb_reset_range


def __tlb_adjust_range(tlb: MmuGather, address: int, range_size: int) -> None:
    """include/asm-generic/tlb.h: __tlb_adjust_range() (a fullmm gather keeps
    end == ~0, and its flush is TLB_FLUSH_ALL anyway)."""
    tlb.start = min(tlb.start, address)
    tlb.end = max(tlb.end, address + range_size)


def tlb_flush_pte_range(tlb: MmuGather, address: int, size: int) -> None:
    __tlb_adjust_range(tlb, address, size)
    tlb.cleared_ptes = True


def tlb_flush_pmd_range(tlb: MmuGather, address: int, size: int) -> None:
    __tlb_adjust_range(tlb, address, size)
    tlb.cleared_pmds = True


def tlb_flush_pud_range(tlb: MmuGather, address: int, size: int) -> None:
    __tlb_adjust_range(tlb, address, size)
    tlb.cleared_puds = True


def tlb_flush_p4d_range(tlb: MmuGather, address: int, size: int) -> None:
    __tlb_adjust_range(tlb, address, size)
    tlb.cleared_p4ds = True


def tlb_get_unmap_shift(tlb: MmuGather) -> int:
    """include/asm-generic/tlb.h: the smallest level cleared sets the stride."""
    if tlb.cleared_ptes:
        return PAGE_SHIFT
    if tlb.cleared_pmds:
        return PMD_SHIFT
    if tlb.cleared_puds:
        return PUD_SHIFT
    if tlb.cleared_p4ds:
        return PGDIR_SHIFT
    return PAGE_SHIFT


#: the gather flags that say page-table pages went away from the range (freed,
#: or unshared: hugetlb PMD sharing, 8ce720d5bd91): a walk-cache flush covers
#: both where the architecture says so (arm64 since Zeng Heng's 2026 fix)
TABLE_FLAGS = ("freed_tables", "unshared_tables")


def tlb_tables_changed(tlb: Any) -> bool:
    """``tlb->freed_tables || tlb->unshared_tables``: what arm64 turns into
    ``!last_level`` (a TLBI that also drops walk-cache entries).  MODEL: read by
    name, so a gather flag added to :data:`TABLE_FLAGS` is honoured by every
    platform's ``tlb_flush`` that asks this, without touching it (``tlb``: a
    gather, or any object with such flags)."""
    for flag in TABLE_FLAGS:
        if getattr(tlb, flag, False):
            return True
    return False


def x86_tlb_flush(tlb: MmuGather) -> Step:
    """arch/x86/include/asm/tlb.h: tlb_flush(), the platforms' default
    ``tlb_flush`` hook: the gathered range (the whole mm for a fullmm gather)
    with the smallest cleared level's stride.

    Mainline (v6.19) passes ``tlb->freed_tables`` only: an unshare without a
    free is a flush that ``should_flush_tlb()`` keeps from lazy-TLB CPUs and
    that INVLPGB issues with ``INVLPGB_FINAL_ONLY``.  Passing
    ``freed_tables || unshared_tables`` ("so that lazy-TLB CPUs also receive
    IPIs during unsharing page tables") is part of Lance Yang's "x86/tlb: skip
    redundant sync IPIs for native TLB flush" (v6/v7, March 2026), not merged
    as far as our sources show; arm64's ``tlb_flush()`` got the same change
    as a fix of 8ce720d5bd91 ("arm64: tlb: Flush walk cache when unsharing
    PMD tables", Zeng Heng, 2026).
    """
    start, end = 0, TLB_FLUSH_ALL
    stride_shift = tlb_get_unmap_shift(tlb)
    if not tlb.fullmm and not tlb.need_flush_all:
        start, end = tlb.start, tlb.end
    yield from flush_tlb_mm_range(tlb.cpu, tlb.mm, start, end, stride_shift, tlb.freed_tables)


def tlb_flush(tlb: MmuGather) -> Step:
    """The arch ``tlb_flush()`` (include/asm-generic/tlb.h calls it from
    ``tlb_flush_mmu_tlbonly()``): the platform's ``tlb_flush`` hook."""
    yield from tlb.m.P.tlb_flush(tlb)


def tlb_needs_table_invalidate(tlb: MmuGather) -> bool:
    """include/asm-generic/tlb.h: tlb_needs_table_invalidate(): must a table
    handed to RCU be preceded by a TLB invalidation (``tlb_table_invalidate()``)?
    True unless the platform says its hardware never walks the Linux tables
    (sparc64, powerpc hash; powerpc defines it as ``radix_enabled()``).
    MODEL: the kernel's takes no argument (it is per architecture); here the
    gather names the machine whose platform answers."""
    return tlb.m.P.tlb_needs_table_invalidate()


def tlb_flush_mmu_tlbonly(tlb: MmuGather) -> Step:
    """include/asm-generic/tlb.h: tlb_flush_mmu_tlbonly(): flush the TLB for
    what was gathered since the last flush; a no-op when nothing was (an
    unshared table counts, since 8ce720d5bd91)."""
    if not (tlb.freed_tables or tlb.cleared_ptes or tlb.cleared_pmds or tlb.cleared_puds
            or tlb.cleared_p4ds or tlb.unshared_tables):
        return
    yield from tlb_flush(tlb)
    __tlb_reset_range(tlb)


# -- VMA boundaries (include/asm-generic/tlb.h) -----------------------------------

VM_PFNMAP = 0x400
VM_MIXEDMAP = 0x10000000
VM_HUGETLB = 0x400000
VM_SHARED = 0x8
VM_IO = 0x4000


def tlb_update_vma_flags(tlb: MmuGather, vma) -> None:
    """include/asm-generic/tlb.h: tlb_update_vma_flags(): track whether a
    VM_PFNMAP/VM_MIXEDMAP VMA is in the gathered range (``vma_pfn |=``)."""
    flags = getattr(vma, "flags", 0)
    tlb.vma_huge = bool(flags & VM_HUGETLB)
    if flags & (VM_PFNMAP | VM_MIXEDMAP):
        tlb.vma_pfn = True


def tlb_start_vma(tlb: MmuGather, vma) -> None:
    """include/asm-generic/tlb.h: tlb_start_vma() (flush_cache_range() is a
    no-op on x86)."""
    if tlb.fullmm:
        return
    tlb_update_vma_flags(tlb, vma)


def tlb_end_vma(tlb: MmuGather, vma) -> Step:
    """include/asm-generic/tlb.h: tlb_end_vma(): nothing on x86, which selects
    CONFIG_MMU_GATHER_MERGE_VMAS (the gathered range spans VMAs; one flush at
    the end)."""
    return
    yield  # pragma: no cover


def tlb_free_vmas(tlb: MmuGather) -> Step:
    """include/asm-generic/tlb.h: tlb_free_vmas(), the first thing
    free_pgtables() does: if a VM_PFNMAP/VM_MIXEDMAP VMA was zapped and its
    flush is still pending, flush now, before the VMAs are unlinked from the
    rmap.  Otherwise unmap_mapping_range() (a driver revoking its frames) no
    longer finds the VMA, returns at once, and the frames are reused while
    CPUs still hold TLB entries for them: b67fbebd4cf9 ("mmu_gather: Force
    tlb-flush VM_PFNMAP vmas", 2022, in tlb_end_vma()), moved here in 2025.
    No struct page holds such frames, so the gather cannot defer anything."""
    if tlb.fullmm:
        return
    if tlb.vma_pfn:
        yield from tlb.m.S.tlb_flush_mmu_tlbonly(tlb)


# -- the page batch (mm/mmu_gather.c) --------------------------------------

def tlb_next_batch(tlb: MmuGather) -> bool:
    """mm/mmu_gather.c: tlb_next_batch(): move to (or allocate, with
    GFP_NOWAIT, which may fail) the next batch page."""
    if tlb.delayed_rmap and tlb.active != 0:
        return False
    if tlb.active + 1 < len(tlb.batches):
        tlb.active += 1
        return True
    if tlb.batch_count == MAX_GATHER_BATCH_COUNT:
        return False
    if tlb.m.choices.flip("alloc_fails:mmu_gather_batch"):
        tlb.m.h.emit(tlb.cpu.id, "alloc_fail", what="mmu_gather_batch")
        return False
    tlb.batch_count += 1
    tlb.batches.append((MAX_GATHER_BATCH, []))
    tlb.active += 1
    return True


def __tlb_remove_page_size(tlb: MmuGather, page: Frame, page_size: int = PAGE_SIZE) -> bool:
    """mm/mmu_gather.c: __tlb_remove_page_size(): queue ``page`` for freeing
    after the flush; True means "batch full: the caller must flush now"."""
    mx, pages = tlb.batches[tlb.active]
    pages.append(page)
    tlb.m.h.emit(tlb.cpu.id, "tlb_batch_page", pfn=page.pfn, gen=page.gen,
                 table=page.state == TABLE)
    if len(pages) >= mx - 1:
        if not tlb_next_batch(tlb):
            return True
    return False


def __tlb_remove_folio_pages(tlb: MmuGather, page: Frame, nr_pages: int) -> bool:
    """mm/mmu_gather.c: __tlb_remove_folio_pages() (v6.9+, d7f861b9c4f6):
    queue ``nr_pages`` consecutive pages of one large folio as two slots, the
    page and its count (``ENCODED_PAGE_BIT_NR_PAGES_NEXT``); the free puts
    that many references (folios_put_refs()).  True: batch full."""
    mx, pages = tlb.batches[tlb.active]
    pages.append(page)
    pages.append(nr_pages)
    tlb.m.h.emit(tlb.cpu.id, "tlb_batch_page", pfn=page.pfn, gen=page.gen, table=False, nr=nr_pages)
    if len(pages) >= mx - 1:
        if not tlb_next_batch(tlb):
            return True
    return False


def tlb_batch_pages_flush(tlb: MmuGather) -> None:
    """mm/mmu_gather.c: tlb_batch_pages_flush(): free_pages_and_swap_cache()
    on everything batched: a put_page() each (``nr`` references for a
    folio's pages queued together), which frees data pages whose last
    reference this was (GUP pins keep theirs alive) and page-table pages
    queued with tlb_remove_page()."""
    m = tlb.m
    cpu = tlb.cpu.id
    for _, pages in tlb.batches:
        n = len(pages)
        i = 0
        while i < n:
            page = pages[i]
            if i + 1 < n and type(pages[i + 1]) is int:
                i += 1
                m.frames.put_pages(cpu, page, pages[i], "tlb_batch_pages_flush")
            else:
                m.frames.put_page(cpu, page, "tlb_batch_pages_flush")
            i += 1
        pages.clear()
    tlb.active = 0


def tlb_remove_page(tlb: MmuGather, page: Frame) -> Step:
    """include/asm-generic/tlb.h: tlb_remove_page(): queue, flushing at once
    (through the strategy's tlb_flush_mmu()) when the batch is full."""
    S = tlb.m.S
    if (yield from S.__tlb_remove_page_size(tlb, page, PAGE_SIZE)):
        yield from S.tlb_flush_mmu(tlb)


# -- gather lifetime --------------------------------------------------------

def tlb_gather_mmu(cpu: Cpu, mm: Mm, fullmm: bool = False) -> MmuGather:
    """mm/mmu_gather.c: tlb_gather_mmu() / tlb_gather_mmu_fullmm().  ``mm``
    need not be the mm this CPU runs: an rmap zap (unmap_mapping_range())
    gathers on every mm that maps the range."""
    tlb = MmuGather(cpu, mm, fullmm)
    mm.tlb_flush_pending += 1  # inc_tlb_flush_pending()
    cpu.m.h.emit(cpu.id, "tlb_gather", mm=mm.id, fullmm=fullmm)
    init = cpu.m.S.tlb_gather_mmu
    if init is not None:
        init(tlb)
    return tlb


def tlb_gather_mmu_vma(cpu: Cpu, vma) -> MmuGather:
    """mm/mmu_gather.c: tlb_gather_mmu_vma() (8ce720d5bd91): a gather for one
    VMA, its flags set as tlb_start_vma() would (hugetlb's unsharing paths)."""
    tlb = tlb_gather_mmu(cpu, vma.mm)
    tlb_update_vma_flags(tlb, vma)
    return tlb


def mm_tlb_flush_nested(mm: Mm) -> bool:
    return mm.tlb_flush_pending > 1


def tlb_finish_mmu(tlb: MmuGather) -> Step:
    """mm/mmu_gather.c: tlb_finish_mmu(): the final flush (forced full with
    freed_tables when another thread batches on the same mm), then free.
    Unshared hugetlb tables must have been flushed and synced before
    (huge_pmd_unshare_flush(), under i_mmap_rwsem): VM_WARN_ON_ONCE()."""
    if tlb.fully_unshared_tables:
        tlb.m.h.emit(tlb.cpu.id, "bug", what="tlb_finish_mmu() with fully_unshared_tables set: "
                     "huge_pmd_unshare_flush() was not called before i_mmap_rwsem was dropped")
    if mm_tlb_flush_nested(tlb.mm):
        tlb.fullmm = True
        __tlb_reset_range(tlb)
        tlb.freed_tables = True
    yield from tlb.m.S.tlb_flush_mmu(tlb)
    tlb.mm.tlb_flush_pending -= 1  # dec_tlb_flush_pending()
    tlb.m.h.emit(tlb.cpu.id, "tlb_finish", mm=tlb.mm.id)


# -- hugetlb PMD table unsharing (include/asm-generic/tlb.h, 8ce720d5bd91) ------------

def tlb_unshare_pmd_ptdesc(tlb: MmuGather, pt: Frame, addr: int) -> None:
    """include/asm-generic/tlb.h: tlb_unshare_pmd_ptdesc(): the caller cleared
    the PUD entry pointing at shared PMD table ``pt``: drop its share count,
    flush the PUD's range at PMD stride, and remember that a table was
    unshared (and fully, if no other sharer is left: its owner may now reuse
    it)."""
    if pt.share_count <= 0:
        tlb.m.h.emit(tlb.cpu.id, "bug", what=f"tlb_unshare_pmd_ptdesc() of an unshared table {pt.pfn:#x}")
    pt.share_count -= 1  # ptdesc_pmd_pts_dec()
    # Clearing a PUD pointing at a PMD table with PMD leaves.
    tlb_flush_pmd_range(tlb, addr & ~((1 << PUD_SHIFT) - 1), 1 << PUD_SHIFT)
    if pt.share_count <= 0:
        tlb.fully_unshared_tables = True
    tlb.unshared_tables = True
    tlb.m.h.emit(tlb.cpu.id, "pt_unshare", pfn=pt.pfn, gen=pt.gen, mm=tlb.mm.id,
                 count=pt.share_count)


def tlb_flush_unshared_tables(tlb: MmuGather) -> Step:
    """include/asm-generic/tlb.h: tlb_flush_unshared_tables(): before the
    caller drops i_mmap_rwsem (after which a previously shared table may be
    modified or reused by its remaining owner), flush the unsharer's TLB, and
    if a table was unshared by its last other sharer, wait for every
    concurrent GUP-fast with the strategy's tlb_remove_table_sync_one() (an
    IPI to every CPU; a no-op where tables are not RCU-freed, whose flush was
    the IPI already)."""
    S = tlb.m.S
    if tlb.unshared_tables:
        yield from S.tlb_flush_mmu_tlbonly(tlb)
    if tlb.fully_unshared_tables:
        yield from S.tlb_remove_table_sync_one(tlb.cpu)
        tlb.fully_unshared_tables = False


def tlb_remove_table_sync_one(cpu: Cpu) -> Step:
    """mm/mmu_gather.c (CONFIG_MMU_GATHER_RCU_TABLE_FREE):
    tlb_remove_table_sync_one(): ``smp_call_function(tlb_remove_table_smp_sync,
    NULL, 1)``, an IPI to every other online CPU, waiting for each.  Not an
    RCU grace period: it only waits out walkers that rely on IRQs being off
    (GUP-fast).  The strategy's hook (a configuration without RCU table
    freeing has an empty one); its callers: hugetlb's
    tlb_flush_unshared_tables() and, with THP, collapse_huge_page() after
    pmdp_collapse_flush() (2ba99c5e0881)."""
    yield from smp_call_function(cpu, tlb_remove_table_smp_sync, None, True, "tlb_remove_table_sync_one")


def tlb_remove_table_smp_sync(cpu: Cpu, info: Any) -> None:
    """mm/mmu_gather.c: tlb_remove_table_smp_sync(): simply deliver the interrupt."""


def pagetable_free(cpu: Cpu, table: Frame, via: str) -> None:
    """include/linux/mm.h: pagetable_dtor_free(): the table's generation ends."""
    if table.state != TABLE:
        cpu.m.h.emit(cpu.id, "bug", what=f"pagetable_free() of a non-table frame {table.pfn:#x}")
    cpu.m.frames.free(cpu.id, table, via)


def pte_free(cpu: Cpu, mm: Mm, table: Frame) -> None:
    """include/asm-generic/pgalloc.h: pte_free(): pagetable_dtor_free() at
    once, no TLB flush, no RCU, in every configuration: what
    zap_deposited_table() does with the table it withdraws.  Its callers
    guarantee nobody can reach the table: a deposited table was never linked,
    or was unlinked by a collapse that flushed (freed_tables) and synchronised
    with IRQ-off walkers (tlb_remove_table_sync_one()).  The strategy's
    ``pte_free`` hook; plain (it runs under the PMD lock)."""
    pagetable_free(cpu, table, "pte_free")


def is_data(f: Frame) -> bool:
    return f.state == DATA
