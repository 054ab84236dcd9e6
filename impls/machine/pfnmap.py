"""VM_PFNMAP mappings: a driver maps raw frames (mm/memory.c
``vmf_insert_pfn()``), and revokes them (``unmap_mapping_range()``) from
another CPU.

Read at mainline v6.19; the driver follows the pattern of
drivers/vfio/pci/vfio_pci_core.c: ``mmap()`` sets ``VM_PFNMAP | VM_IO`` and
the VMA's ``->fault`` inserts the frame of the faulting offset under the
driver's ``memory_lock`` (read); a revoke (``vfio_pci_zap_and_down_write_
memory_lock()``: a reset, a BAR disabled, the device released) takes
``memory_lock`` for write, zaps every user mapping of the device file with
``unmap_mapping_range()`` and then lets the frames go (the device's memory is
disabled or reused).

No struct page holds such a frame while it is mapped: ``vm_normal_page()`` is
NULL, so a zap queues nothing on the mmu_gather and GUP refuses the PTE
(``pte_special()``).  What keeps a CPU from reaching a released frame is only
the TLB flush that ``unmap_mapping_range()`` -- or the unmapper's own gather --
did before the driver let go.  Two rules of the mmu_gather exist for that:
``tlb_finish_mmu()`` forces a full flush when another gather on the mm is
pending (``mm_tlb_flush_nested()``: the revoke found the PTE already cleared
by a munmap that has not flushed yet, 99baac21e458), and ``free_pgtables()``
first calls ``tlb_free_vmas()``: a munmap that zapped a VM_PFNMAP VMA flushes
before the VMA leaves the file's i_mmap, since a revoke that no longer finds
the VMA returns at once (b67fbebd4cf9, "mmu_gather: Force tlb-flush VM_PFNMAP
vmas", 2022; moved to ``tlb_free_vmas()`` in 2025).

MODEL: the device's frames are ordinary frames in the ``IOMEM`` state,
allocated by the driver at the first fault of an offset and released to the
allocator by a revoke (where the kernel would disable or reassign device
memory), so that a stale translation to one is visible as a use of a reused
frame.  No huge PFN mappings.
"""

from __future__ import annotations

from .cpu import Cpu, Step, down_read, down_write, up_read, up_write
from .page_alloc import IOMEM
from .pgtable import PAGE_SHIFT


def device_frame(cpu: Cpu, mapping, index: int):
    """The driver's frame for page ``index`` of its device (allocated on first use)."""
    f = mapping.pfns.get(index)
    if f is None:
        f = cpu.m.frames.alloc(cpu.id, IOMEM, mm=-1, va=index << PAGE_SHIFT)
        mapping.pfns[index] = f
    return f


def pfnmap_fault(cpu: Cpu, vma, addr: int) -> Step:
    """The driver's ``->fault`` (vfio_pci_mmap_huge_fault() for a 4 KiB page):
    under ``memory_lock`` for read, the frame to insert.  The caller inserts
    it (vmf_insert_pfn() -> insert_pfn()) before :func:`pfnmap_fault_done`."""
    mapping = vma.file
    yield from down_read(cpu, mapping.dev_lock, "memory_lock")
    return device_frame(cpu, mapping, vma.linear_page_index(addr))


def pfnmap_fault_done(cpu: Cpu, vma) -> None:
    up_read(cpu, vma.file.dev_lock)


def revoke_op(cpu: Cpu, op) -> Step:
    """A driver revoking device file ``op.file``'s mappings and frames, from
    whatever this CPU runs."""
    from .memory import unmap_mapping_range
    m = cpu.m
    if op.file is None or not 0 <= op.file < len(m.files):
        return "EBADF"
    mapping = m.files[op.file]
    if mapping.kind != "device":
        return "ENODEV"
    yield from down_write(cpu, mapping.dev_lock, "memory_lock")
    m.h.emit(cpu.id, "revoke_begin", file=mapping.id, frames=len(mapping.pfns))
    yield "revoke:locked"
    yield from unmap_mapping_range(cpu, mapping, 0, (1 << 36) - 1)
    frames = [mapping.pfns[i] for i in sorted(mapping.pfns)]
    mapping.pfns.clear()
    for f in frames:  # the device's memory goes away
        m.frames.free(cpu.id, f, "device revoked")
    m.h.emit(cpu.id, "revoke_end", file=mapping.id, frames=len(frames))
    up_write(cpu, mapping.dev_lock)
    return f"revoked {len(frames)} frame(s)"
