"""include/asm-generic/tlb.h, mm/mmu_gather.c (the configuration-independent
part), arch/x86/include/asm/tlb.h: ``struct mmu_gather`` and its page batch.

What is here is the same in every kernel configuration: the gather struct, the
flush range bookkeeping, the page batch (an on-stack bundle of
``MMU_GATHER_BUNDLE`` pages plus ``GFP_NOWAIT`` batch pages), the x86
``tlb_flush()``, and the generic inlines ``tlb_flush_mmu_tlbonly()`` and
``tlb_finish_mmu()``.

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
        self.batches: list[tuple[int, list[Frame]]] = [(MMU_GATHER_BUNDLE, [])]
        self.active = 0
        self.batch_count = 0
        self.batch: Any = None
        self.priv: dict[str, Any] = {}
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


def tlb_flush(tlb: MmuGather) -> Step:
    """arch/x86/include/asm/tlb.h: tlb_flush()."""
    start, end = 0, TLB_FLUSH_ALL
    stride_shift = tlb_get_unmap_shift(tlb)
    if not tlb.fullmm and not tlb.need_flush_all:
        start, end = tlb.start, tlb.end
    yield from flush_tlb_mm_range(tlb.cpu, tlb.mm, start, end, stride_shift, tlb.freed_tables)


def tlb_flush_mmu_tlbonly(tlb: MmuGather) -> Step:
    """include/asm-generic/tlb.h: tlb_flush_mmu_tlbonly(): flush the TLB for
    what was gathered since the last flush; a no-op when nothing was."""
    if not (tlb.freed_tables or tlb.cleared_ptes or tlb.cleared_pmds or tlb.cleared_puds
            or tlb.cleared_p4ds):
        return
    yield from tlb_flush(tlb)
    __tlb_reset_range(tlb)


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


def tlb_batch_pages_flush(tlb: MmuGather) -> None:
    """mm/mmu_gather.c: tlb_batch_pages_flush(): free_pages_and_swap_cache()
    on everything batched: a put_page() each, which frees data pages whose last
    reference this was (GUP pins keep theirs alive) and page-table pages
    queued with tlb_remove_page()."""
    m = tlb.m
    cpu = tlb.cpu.id
    for _, pages in tlb.batches:
        for page in pages:
            m.frames.put_page(cpu, page, "tlb_batch_pages_flush")
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
    """mm/mmu_gather.c: tlb_gather_mmu() / tlb_gather_mmu_fullmm()."""
    tlb = MmuGather(cpu, mm, fullmm)
    mm.tlb_flush_pending += 1  # inc_tlb_flush_pending()
    cpu.m.h.emit(cpu.id, "tlb_gather", mm=mm.id, fullmm=fullmm)
    init = cpu.m.S.tlb_gather_mmu
    if init is not None:
        init(tlb)
    return tlb


def mm_tlb_flush_nested(mm: Mm) -> bool:
    return mm.tlb_flush_pending > 1


def tlb_finish_mmu(tlb: MmuGather) -> Step:
    """mm/mmu_gather.c: tlb_finish_mmu(): the final flush (forced full with
    freed_tables when another thread batches on the same mm), then free."""
    if mm_tlb_flush_nested(tlb.mm):
        tlb.fullmm = True
        __tlb_reset_range(tlb)
        tlb.freed_tables = True
    yield from tlb.m.S.tlb_flush_mmu(tlb)
    tlb.mm.tlb_flush_pending -= 1  # dec_tlb_flush_pending()
    tlb.m.h.emit(tlb.cpu.id, "tlb_finish", mm=tlb.mm.id)


def pagetable_free(cpu: Cpu, table: Frame, via: str) -> None:
    """include/linux/mm.h: pagetable_dtor_free(): the table's generation ends."""
    if table.state != TABLE:
        cpu.m.h.emit(cpu.id, "bug", what=f"pagetable_free() of a non-table frame {table.pfn:#x}")
    cpu.m.frames.free(cpu.id, table, via)


def is_data(f: Frame) -> bool:
    return f.state == DATA
