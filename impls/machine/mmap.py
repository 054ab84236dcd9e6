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

A file VMA (``mmap`` with ``file``) is linked into its file's ``i_mmap``
(``vma_link_file()``) under ``i_mmap_rwsem``; splitting one for a partial
munmap updates ``i_mmap`` under the same lock; the detached part stays there
until ``free_pgtables()`` unlinks it, right before its tables are freed.

Read at mainline v6.19.
"""

from __future__ import annotations

from .cpu import Cpu, Mm, Step, Vma, down_read, down_write, downgrade_write, pgd_of, up_read, up_write
from .filemap import i_mmap_lock_write, i_mmap_unlock_write, vma_link_file
from .hugetlb import hugetlb_range_ok, is_vm_hugetlb_page
from .memory import FIRST_USER_ADDRESS, USER_PGTABLES_CEILING, ZapDetails, free_pgtables, unmap_vmas
from .mmu_gather import VM_HUGETLB, VM_IO, VM_PFNMAP, VM_SHARED, tlb_gather_mmu
from .mmu_notifier import mmu_notifier_release
from .pgtable import PAGE_SIZE

#: vm_flags of a file mapping, by file kind (MAP_SHARED, PROT_READ|PROT_WRITE)
FILE_VM_FLAGS = {"shmem": VM_SHARED, "device": VM_SHARED | VM_IO | VM_PFNMAP,
                 "hugetlb": VM_SHARED | VM_HUGETLB}


def do_mmap(cpu: Cpu, op) -> Step:
    """mm/mmap.c: do_mmap() with MAP_FIXED_NOREPLACE: anonymous, or
    MAP_SHARED of file ``op.file`` at byte offset ``op.offset``."""
    m = cpu.m
    mm = cpu.current_mm
    if mm is None:
        return "skipped: kernel thread"
    start, end = op.addr, op.addr + op.len
    mapping = None
    if op.file is not None:
        if not 0 <= op.file < len(m.files) or op.offset % PAGE_SIZE:
            return "EINVAL"
        mapping = m.files[op.file]
    yield from down_write(cpu, mm.mmap_lock)
    try:
        if any(v.start < end and start < v.end for v in mm.vmas):
            return "EEXIST"
        if mapping is None:
            vma = Vma(start, end, mm=mm)
        else:
            vma = Vma(start, end, mapping, op.offset // PAGE_SIZE, FILE_VM_FLAGS.get(mapping.kind, VM_SHARED), mm)
        mm.vmas.append(vma)
        mm.vmas.sort(key=lambda v: v.start)
        if mapping is None:
            m.h.emit(cpu.id, "vma_add", mm=mm.id, start=start, end=end)
        else:
            m.h.emit(cpu.id, "vma_add", mm=mm.id, start=start, end=end, file=mapping.id, pgoff=vma.pgoff)
            yield from vma_link_file(cpu, vma)
        return "mapped"
    finally:
        up_write(cpu, mm.mmap_lock)


def detach_vmas(cpu: Cpu, mm: Mm, start: int, end: int) -> Step:
    """mm/vma.c: vms_gather_munmap_vmas() + the split: split the VMAs at
    ``start``/``end`` and detach the parts inside.  Returns the detached
    VMAs and the floor/ceiling of free_pgtables() (prev->vm_end,
    next->vm_start).  A split file VMA is replaced in its file's i_mmap by its
    pieces, under i_mmap_rwsem (vma_prepare()); the detached piece stays in
    i_mmap until free_pgtables() unlinks it."""
    kept: list[Vma] = []
    removed: list[Vma] = []
    for v in mm.vmas:
        if v.end <= start or v.start >= end:
            kept.append(v)
            continue
        pieces = []
        if v.start < start:
            pieces.append(v.piece(v.start, start))
        if v.end > end:
            pieces.append(v.piece(end, v.end))
        gone = v if pieces == [] else v.piece(max(v.start, start), min(v.end, end))
        if v.file is not None and gone is not v:
            yield from i_mmap_lock_write(cpu, v.file)
            if v in v.file.i_mmap:
                v.file.i_mmap.remove(v)
            v.file.i_mmap.extend([*pieces, gone])
            i_mmap_unlock_write(cpu, v.file)
        kept.extend(pieces)
        removed.append(gone)
    kept.sort(key=lambda v: v.start)
    mm.vmas = kept
    prev = [v for v in kept if v.end <= start]
    nxt = [v for v in kept if v.start >= end]
    floor = prev[-1].end if prev else FIRST_USER_ADDRESS
    ceiling = nxt[0].start if nxt else USER_PGTABLES_CEILING
    return removed, floor, ceiling


def do_vmi_align_munmap(cpu: Cpu, mm: Mm, start: int, end: int, downgrade: bool) -> Step:
    """mm/vma.c: do_vmi_align_munmap() with the mmap lock held for write:
    detach, (downgrade to read,) then vms_clear_ptes(): tlb_gather_mmu(),
    unmap_vmas(), free_pgtables() between the neighbours, tlb_finish_mmu().
    Returns the number of VMAs unmapped."""
    m = cpu.m
    removed, floor, ceiling = yield from detach_vmas(cpu, mm, start, end)
    if not removed:
        return 0
    m.h.emit(cpu.id, "vma_remove", mm=mm.id, ranges=tuple((v.start, v.end) for v in removed))
    if downgrade:
        downgrade_write(cpu, mm.mmap_lock)  # mmap_write_downgrade()
    yield "munmap:detached"
    # vms_clear_ptes()
    tlb = tlb_gather_mmu(cpu, mm)
    yield from unmap_vmas(tlb, removed, removed[0].start, removed[-1].end, ZapDetails(False), "UNMAP")
    yield from free_pgtables(tlb, removed, floor, ceiling)
    yield from m.S.tlb_finish_mmu(tlb)
    return len(removed)


def hugetlb_misaligned(mm: Mm, start: int, end: int) -> bool:
    """A range that cuts a hugetlb VMA off a huge-page boundary: munmap()
    fails with EINVAL (hugetlb_vm_op_split()), madvise() too."""
    return any(is_vm_hugetlb_page(v) and not hugetlb_range_ok(v, max(start, v.start), min(end, v.end))
               for v in mm.vmas if v.start < end and start < v.end)


def do_munmap(cpu: Cpu, op) -> Step:
    mm = cpu.current_mm
    if mm is None:
        return "skipped: kernel thread"
    start, end = op.addr, op.addr + op.len
    if hugetlb_misaligned(mm, start, end):
        return "EINVAL: hugetlb range not huge-page aligned"
    yield from down_write(cpu, mm.mmap_lock)
    n = yield from do_vmi_align_munmap(cpu, mm, start, end, downgrade=True)
    if not n:
        up_write(cpu, mm.mmap_lock)
        return "nothing mapped"
    up_read(cpu, mm.mmap_lock)
    return f"unmapped {n} vma(s)"


def madvise_dontneed(cpu: Cpu, op) -> Step:
    """mm/madvise.c: madvise(MADV_DONTNEED)."""
    m = cpu.m
    mm = cpu.current_mm
    if mm is None:
        return "skipped: kernel thread"
    start, end = op.addr, op.addr + op.len
    if hugetlb_misaligned(mm, start, end):
        return "EINVAL: hugetlb range not huge-page aligned"
    yield from down_read(cpu, mm.mmap_lock)
    ranges = [v.piece(max(v.start, start), min(v.end, end)) for v in mm.vmas
              if v.start < end and start < v.end]
    if not ranges:
        up_read(cpu, mm.mmap_lock)
        return "ENOMEM"
    S = m.S
    tlb = tlb_gather_mmu(cpu, mm)
    details = ZapDetails(reclaim_pt=True)
    for v in ranges:
        # zap_page_range_single_batched()
        yield from unmap_vmas(tlb, [v], v.start, v.end, details, "CLEAR")
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
    ranges = list(mm.vmas)
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
    pgd, _ = pgd_of(mm)
    m.h.emit(cpu.id, "mmdrop", mm=mm.id, pgd=pgd.pfn)
    m.frames.free(cpu.id, pgd, "pgd_free")
