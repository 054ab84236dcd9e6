"""mm/mmu_notifier.c, virt/kvm/kvm_main.c, drivers/iommu (SVA): secondary MMUs.

Two secondary MMUs can be attached to an mm (``env.kvm``, ``env.iommu``):

* **KVM** (a software secondary MMU): sptes derived from the primary tables.
  ``invalidate_range_start()`` takes ``mmu_lock``, bumps
  ``mmu_invalidate_in_progress``, zaps the sptes in range and flushes;
  ``_end()`` bumps ``mmu_invalidate_seq`` then drops ``in_progress``.  A KVM
  fault snapshots the seq before resolving the pfn and installs the spte under
  ``mmu_lock`` only if ``mmu_invalidate_retry_gfn()`` says nothing changed.
* **IOMMU SVA** (a hardware secondary MMU that walks the CPU page tables): an
  IOTLB and paging-structure caches, invalidated by
  ``mmu_notifier_arch_invalidate_secondary_tlbs()`` from the CPU flush.

``env.skip_mmu_notifiers`` injects the bug where a zap path does not call the
notifiers (start/end and the secondary TLB hook).
"""

from __future__ import annotations

from .cpu import Cpu, Mm, Step, pgd_of, spin_lock, spin_unlock
from .gup import get_user_page
from .page_alloc import FREE, SpinLock
from .pgtable import PAGE_SHIFT, PMD_SHIFT
from .tlb import flush_all, hw_walk, tlb_key_va, tlb_lookup

IOMMU = -3  #: agent id of the IOMMU


class Kvm:
    __slots__ = ("sptes", "mmu_lock", "in_progress", "seq", "range_start", "range_end")

    def __init__(self, mm_id: int) -> None:
        self.sptes: dict[int, tuple[int, int]] = {}  # gfn(vpn) -> (pfn, gen)
        self.mmu_lock = SpinLock(f"kvm{mm_id}.mmu_lock")
        self.in_progress = 0
        self.seq = 0
        self.range_start = self.range_end = -1


class Iommu:
    """An SVA-bound device: IOTLB + paging-structure caches walking mm->pgd."""

    __slots__ = ("tlb", "psc", "attached")

    def __init__(self) -> None:
        self.tlb: dict[int, tuple[int, int, bool]] = {}
        self.psc: dict[tuple[int, int], tuple[int, int]] = {}
        self.attached = True

    def arch_invalidate_secondary_tlbs(self, cpu: Cpu, start: int, end: int) -> None:
        h = cpu.m.h
        if end < 0 or end - start > (64 << PAGE_SHIFT):
            flush_all(IOMMU, h, self.tlb, self.psc, "arch_invalidate_secondary_tlbs")
            return
        invalidate_span(self.tlb, self.psc, start, end)
        h.emit(IOMMU, "tlb_inv_span", start=start, end=end, why="arch_invalidate_secondary_tlbs")


def _overlaps(va: int, key: int, start: int, end: int) -> bool:
    size = 1 << (PAGE_SHIFT if key >= 0 else PMD_SHIFT)
    return va < end and start < va + size


def invalidate_span(tlb: dict, psc: dict, start: int, end: int) -> None:
    """Drop every leaf in [start, end) and every PSC entry whose range
    overlaps it (a ranged IOTLB/PASID invalidation without the leaf-only hint)."""
    for key in [k for k in tlb if _overlaps(tlb_key_va(k), k, start, end)]:
        del tlb[key]
    for key in list(psc):
        level, prefix = key
        shift = {1: 21, 2: 30, 3: 39}[level]
        lo = prefix << shift
        hi = lo + (1 << shift)
        if lo < end and start < hi:
            del psc[key]


# -- notifier calls (include/linux/mmu_notifier.h) ---------------------------

def mmu_notifier_invalidate_range_start(cpu: Cpu, mm: Mm, start: int, end: int, event: str) -> Step:
    m = cpu.m
    if m.env.skip_mmu_notifiers:
        m.h.emit(cpu.id, "notifier_skipped", mm=mm.id, start=start, end=end, event=event)
        return
    m.h.emit(cpu.id, "notifier_start", mm=mm.id, start=start, end=end, event=event)
    mm.notifier_active += 1
    kvm = mm.kvm
    if kvm is not None:
        # kvm_mmu_notifier_invalidate_range_start()
        yield from spin_lock(cpu, kvm.mmu_lock, "kvm:mmu_lock")
        kvm.in_progress += 1  # kvm_mmu_invalidate_begin()
        if kvm.in_progress == 1:
            kvm.range_start, kvm.range_end = start, end
        else:
            kvm.range_start = min(kvm.range_start, start)
            kvm.range_end = max(kvm.range_end, end)
        lo, hi = start >> PAGE_SHIFT, (end >> PAGE_SHIFT) if end >= 0 else 1 << 40
        for gfn in [g for g in kvm.sptes if lo <= g < hi]:
            pfn, gen = kvm.sptes.pop(gfn)
            m.h.emit(cpu.id, "spte_zap", mm=mm.id, gfn=gfn << PAGE_SHIFT, pfn=pfn, gen=gen)
        spin_unlock(cpu, kvm.mmu_lock)


def mmu_notifier_invalidate_range_end(cpu: Cpu, mm: Mm, start: int, end: int, event: str) -> Step:
    m = cpu.m
    if m.env.skip_mmu_notifiers:
        return
    kvm = mm.kvm
    if kvm is not None:
        yield from spin_lock(cpu, kvm.mmu_lock, "kvm:mmu_lock")
        kvm.seq += 1          # kvm_mmu_invalidate_end()
        kvm.in_progress -= 1
        spin_unlock(cpu, kvm.mmu_lock)
    mm.notifier_active -= 1
    m.h.emit(cpu.id, "notifier_end", mm=mm.id, start=start, end=end, event=event)


def mmu_notifier_release(cpu: Cpu, mm: Mm) -> None:
    """mm/mmu_notifier.c: __mmu_notifier_release(): the mm is going away; KVM
    drops all sptes (kvm_flush_shadow_all()), SVA unbinds the PASID."""
    m = cpu.m
    kvm = mm.kvm
    if kvm is not None:
        for gfn, (pfn, gen) in list(kvm.sptes.items()):
            m.h.emit(cpu.id, "spte_zap", mm=mm.id, gfn=gfn << PAGE_SHIFT, pfn=pfn, gen=gen)
        kvm.sptes.clear()
    if mm.iommu is not None and mm.iommu.attached:
        flush_all(IOMMU, m.h, mm.iommu.tlb, mm.iommu.psc, "mmu_notifier_release (SVA unbind)")
        mm.iommu.attached = False


# -- KVM operations ------------------------------------------------------------

def mmu_invalidate_retry_gfn(kvm: Kvm, mmu_seq: int, gfn: int) -> bool:
    """include/linux/kvm_host.h: mmu_invalidate_retry_gfn() (under mmu_lock)."""
    if kvm.in_progress and kvm.range_start <= gfn < kvm.range_end:
        return True
    return kvm.seq != mmu_seq


def kvm_fault(cpu: Cpu, op) -> Step:
    """arch/x86/kvm/mmu: kvm_tdp_page_fault() for gfn == hva (one memslot
    mapping the whole VMM address space)."""
    m = cpu.m
    mm = cpu.current_mm
    if mm is None or mm.kvm is None:
        return "skipped: no VM"
    kvm = mm.kvm
    addr = op.addr & ~((1 << PAGE_SHIFT) - 1)
    mmu_seq = kvm.seq  # fault->mmu_seq = kvm->mmu_invalidate_seq; smp_rmb()
    yield "kvm_fault:seq"
    page = yield from get_user_page(cpu, mm, addr, "kvm_fault")  # __kvm_faultin_pfn()
    if page is None:
        return "no page"
    yield "kvm_fault:pfn"
    yield from spin_lock(cpu, kvm.mmu_lock, "kvm:mmu_lock")
    if mmu_invalidate_retry_gfn(kvm, mmu_seq, addr):
        spin_unlock(cpu, kvm.mmu_lock)
        m.frames.put_page(cpu.id, page, "kvm_release_faultin_page")
        return "retry: invalidation raced"
    kvm.sptes[addr >> PAGE_SHIFT] = (page.pfn, page.gen)
    m.h.emit(cpu.id, "spte_install", mm=mm.id, gfn=addr, pfn=page.pfn, gen=page.gen)
    spin_unlock(cpu, kvm.mmu_lock)
    m.frames.put_page(cpu.id, page, "kvm_release_faultin_page")
    return f"spte -> pfn {page.pfn:#x}"


def kvm_access(cpu: Cpu, op) -> Step:
    """A guest access to gfn ``addr`` through the sptes (an EPT/NPT hit)."""
    m = cpu.m
    mm = cpu.current_mm
    if mm is None or mm.kvm is None:
        return "skipped: no VM"
    hit = mm.kvm.sptes.get(op.addr >> PAGE_SHIFT)
    if hit is None:
        return (yield from kvm_fault(cpu, op))
    pfn, gen = hit
    m.h.emit(cpu.id, "spte_use", mm=mm.id, gfn=op.addr & ~0xFFF, pfn=pfn, gen=gen)
    f = m.frames.get(pfn)
    if f is not None and f.state != FREE and f.gen == gen:
        f.data += 1
    yield "kvm_access:done"
    return f"guest access pfn {pfn:#x}"


# -- IOMMU operations ------------------------------------------------------------

def iommu_access(cpu: Cpu, op) -> Step:
    """A device DMA to ``addr`` through the IOMMU (ATS translation): IOTLB hit,
    else a hardware walk of mm->pgd through the IOMMU's PSC."""
    m = cpu.m
    mm = cpu.current_mm
    if mm is None or mm.iommu is None or not mm.iommu.attached:
        return "skipped: no device"
    io = mm.iommu
    hit = tlb_lookup(io.tlb, op.addr)
    if hit is None:
        pgd, pgd_gen = pgd_of(mm)
        hit = hw_walk(cpu, IOMMU, io.tlb, io.psc, pgd.pfn, pgd_gen, op.addr, "iommu")
        if hit is None:
            m.h.emit(IOMMU, "iommu_fault", addr=op.addr)
            yield "iommu_access:fault"
            return "page request (not modelled)"
    pfn, gen, _ = hit
    m.h.emit(IOMMU, "tlb_use", va=op.addr & ~0xFFF, pfn=pfn, gen=gen, write=op.write, via="iommu")
    yield "iommu_access:done"
    return f"dma pfn {pfn:#x}"
