"""mm/mmap.c, mm/vma.c, mm/madvise.c, kernel/fork.c: mapping and unmapping,
process exit, and the last reference to an mm.

* ``munmap`` (do_vmi_align_munmap(), v6.12+): detach the VMAs under the mmap
  write lock, downgrade to read, then ``vms_clear_ptes()``:
  ``tlb_gather_mmu()``, ``unmap_vmas()``, ``free_pgtables()`` between the
  neighbours, ``tlb_finish_mmu()``.
* ``madvise(MADV_DONTNEED)`` under the mmap read lock: one mmu_gather for the
  call, ``zap_page_range_single_batched()`` per VMA with
  ``details.reclaim_pt`` (PT_RECLAIM frees empty PTE tables here, while the
  VMA still exists and faults may run concurrently).
* ``exit_mmap()``: ``mmu_notifier_release()``, mmap read lock,
  ``arch_exit_mmap()`` (Xen: drop every vCPU's reference, unpin),
  ``tlb_gather_mmu_fullmm()``, ``unmap_vmas()``, then under the write lock
  ``free_pgtables()`` and ``tlb_finish_mmu()``.
* ``__mmdrop()`` when the last lazy-TLB user lets go: ``pgd_free()``.
"""

from __future__ import annotations

from .cpu import Cpu, Mm, Step, Vma, down_read, down_write, downgrade_write, up_read, up_write
from .memory import FIRST_USER_ADDRESS, USER_PGTABLES_CEILING, ZapDetails, free_pgtables, unmap_vmas
from .mmu_gather import tlb_gather_mmu
from .mmu_notifier import mmu_notifier_release


def do_mmap(cpu: Cpu, op) -> Step:
    mm = cpu.current_mm
    if mm is None:
        return "skipped: kernel thread"
    start, end = op.addr, op.addr + op.len
    yield from down_write(cpu, mm.mmap_lock)
    try:
        if any(v.start < end and start < v.end for v in mm.vmas):
            return "EEXIST"
        mm.vmas.append(Vma(start, end))
        mm.vmas.sort(key=lambda v: v.start)
        cpu.m.h.emit(cpu.id, "vma_add", mm=mm.id, start=start, end=end)
        return "mapped"
    finally:
        up_write(cpu, mm.mmap_lock)


def _detach(mm: Mm, start: int, end: int) -> tuple[list[tuple[int, int]], int, int]:
    """Split and detach the VMA parts in [start, end): returns the detached
    ranges and the floor/ceiling (prev->vm_end, next->vm_start)."""
    kept: list[Vma] = []
    removed: list[tuple[int, int]] = []
    for v in mm.vmas:
        if v.end <= start or v.start >= end:
            kept.append(v)
            continue
        if v.start < start:
            kept.append(Vma(v.start, start))
        if v.end > end:
            kept.append(Vma(end, v.end))
        removed.append((max(v.start, start), min(v.end, end)))
    kept.sort(key=lambda v: v.start)
    mm.vmas = kept
    prev = [v for v in kept if v.end <= start]
    nxt = [v for v in kept if v.start >= end]
    floor = prev[-1].end if prev else FIRST_USER_ADDRESS
    ceiling = nxt[0].start if nxt else USER_PGTABLES_CEILING
    return removed, floor, ceiling


def do_munmap(cpu: Cpu, op) -> Step:
    m = cpu.m
    mm = cpu.current_mm
    if mm is None:
        return "skipped: kernel thread"
    start, end = op.addr, op.addr + op.len
    yield from down_write(cpu, mm.mmap_lock)
    removed, floor, ceiling = _detach(mm, start, end)
    if not removed:
        up_write(cpu, mm.mmap_lock)
        return "nothing mapped"
    m.h.emit(cpu.id, "vma_remove", mm=mm.id, ranges=tuple(removed))
    downgrade_write(cpu, mm.mmap_lock)  # mmap_write_downgrade()
    yield "munmap:detached"
    # vms_clear_ptes()
    S = m.S
    tlb = tlb_gather_mmu(cpu, mm)
    yield from unmap_vmas(tlb, removed, removed[0][0], removed[-1][1], ZapDetails(False), "UNMAP")
    yield from free_pgtables(tlb, removed, floor, ceiling)
    yield from S.tlb_finish_mmu(tlb)
    up_read(cpu, mm.mmap_lock)
    return f"unmapped {len(removed)} vma(s)"


def madvise_dontneed(cpu: Cpu, op) -> Step:
    """mm/madvise.c: madvise(MADV_DONTNEED)."""
    m = cpu.m
    mm = cpu.current_mm
    if mm is None:
        return "skipped: kernel thread"
    start, end = op.addr, op.addr + op.len
    yield from down_read(cpu, mm.mmap_lock)
    ranges = [(max(v.start, start), min(v.end, end)) for v in mm.vmas if v.start < end and start < v.end]
    if not ranges:
        up_read(cpu, mm.mmap_lock)
        return "ENOMEM"
    S = m.S
    tlb = tlb_gather_mmu(cpu, mm)
    details = ZapDetails(reclaim_pt=True)
    for s, e in ranges:
        # zap_page_range_single_batched()
        yield from unmap_vmas(tlb, [(s, e)], s, e, details, "CLEAR")
    yield from S.tlb_finish_mmu(tlb)
    up_read(cpu, mm.mmap_lock)
    return "zapped"


def exit_mmap(cpu: Cpu, mm: Mm) -> Step:
    """mm/mmap.c: exit_mmap()."""
    m = cpu.m
    S = m.S
    mmu_notifier_release(cpu, mm)
    yield from down_read(cpu, mm.mmap_lock)
    if m.P.exit_mmap is not None:
        yield from m.P.exit_mmap(cpu, mm)  # arch_exit_mmap()
    ranges = [(v.start, v.end) for v in mm.vmas]
    tlb = tlb_gather_mmu(cpu, mm, fullmm=True)
    if ranges:
        yield from unmap_vmas(tlb, ranges, 0, -1, ZapDetails(False), "UNMAP")
    up_read(cpu, mm.mmap_lock)
    yield "exit_mmap:unmapped"
    yield from down_write(cpu, mm.mmap_lock)
    if ranges:
        yield from free_pgtables(tlb, ranges, FIRST_USER_ADDRESS, USER_PGTABLES_CEILING)
    yield from S.tlb_finish_mmu(tlb)
    mm.vmas = []
    mm.exited = True
    up_write(cpu, mm.mmap_lock)
    m.h.emit(cpu.id, "exit_mmap_done", mm=mm.id, rss=mm.rss, nr_ptes=mm.nr_ptes,
             nr_pmds=mm.nr_pmds, nr_puds=mm.nr_puds)


def mmdrop_check(cpu: Cpu, mm: Mm) -> None:
    """kernel/fork.c: mmdrop() -> __mmdrop() once the mm has exited and no CPU
    holds it as ``active_mm`` (lazy-TLB references, MMU_LAZY_TLB_REFCOUNT):
    pgd_free() (Xen: xen_pgd_free()), the pgd's generation ends."""
    m = cpu.m
    if not mm.exited or mm.freed:
        return
    if any(c.active_mm is mm for c in m.cpus):
        return
    mm.freed = True
    if m.P.pgd_free is not None:
        m.P.pgd_free(cpu, mm)
    m.h.emit(cpu.id, "mmdrop", mm=mm.id, pgd=mm.pgd.pfn)
    m.frames.free(cpu.id, mm.pgd, "pgd_free")
