"""include/linux/fs.h (``struct address_space``), mm/filemap.c, mm/shmem.c,
mm/truncate.c: files, their page cache and their ``i_mmap`` rmap.

Read at mainline v6.19.

A file (``AddressSpace``) has:

* a **page cache**: index -> folio, each holding one reference on its page
  (``filemap_add_folio()``); a page lives as long as the cache or a mapping
  or a GUP pin or an mmu_gather holds a reference, whatever any mm does;
* an **i_mmap** rmap: every VMA of every mm that maps the file, under
  ``i_mmap_rwsem``.  Writers: ``vma_link_file()`` (mmap), a VMA split, and
  ``unlink_file_vma()``, which ``free_pgtables()`` calls *before* it frees
  the VMA's page tables; readers: ``unmap_mapping_range()``, which may
  therefore walk a VMA's page tables from any CPU without the mm's mmap lock;
* ``i_rwsem`` (``inode_lock()``), taken by hole punching.

Faults (``shmem_fault()``, from ``do_fault()``): find or allocate the folio
in the cache and lock it (``folio_lock()``, a sleeping lock), re-check that it
is still in the cache, map it under the PTL (``finish_fault()``), unlock.

Hole punching (``shmem_fallocate(FALLOC_FL_PUNCH_HOLE)``, the ``truncate``
operation): mark the range as being punched (``inode->i_private``: faults in
it wait until the punch is over, ``shmem_falloc_wait()``),
``unmap_mapping_range()`` (a zap with an mmu_gather on each mm mapping the
range, from this CPU: see mm/memory.c), then ``shmem_undo_range()``: lock each
folio, unmap it again if a fault mapped it meanwhile
(``truncate_cleanup_folio()`` -> ``unmap_mapping_folio()``), remove it from
the cache (``filemap_remove_folio()``: the cache's reference is dropped), unlock.

MODEL: shmem only: no swap, no large folios, no i_size (a file is as large as
its mappings), no fault-around (``filemap_map_pages()``), no private (COW)
mappings of files; the first-pass ``folio_trylock()`` of
``shmem_undo_range()`` and its second pass are one ``folio_lock()`` pass;
the interval tree of ``i_mmap`` is walked in (``vm_pgoff``, mm, address)
order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cpu import Cpu, RwSem, Step, Vma, down_read, down_write, up_read, up_write, wait_until
from .page_alloc import DATA, Frame
from .pgtable import PAGE_SHIFT

if TYPE_CHECKING:
    pass


class AddressSpace:
    """struct address_space (with the inode bits the model needs)."""

    __slots__ = ("id", "kind", "i_mmap", "i_mmap_rwsem", "i_rwsem", "pages", "punching", "dev_lock", "pfns")

    def __init__(self, fid: int, kind: str) -> None:
        self.id = fid
        self.kind = kind
        #: the rmap: every VMA, of any mm, that maps this file
        self.i_mmap: list[Vma] = []
        self.i_mmap_rwsem = RwSem(f"file{fid}.i_mmap_rwsem")
        self.i_rwsem = RwSem(f"file{fid}.i_rwsem")
        #: the page cache: page index -> folio
        self.pages: dict[int, Frame] = {}
        #: inode->i_private (struct shmem_falloc): the page ranges being punched
        self.punching: list[tuple[int, int]] = []
        #: a device file (impls/machine/pfnmap.py): the driver's lock between its
        #: faults and a revoke, and the frames it maps (page index -> frame)
        self.dev_lock = RwSem(f"file{fid}.memory_lock")
        self.pfns: dict[int, Frame] = {}

    @property
    def name(self) -> str:
        return f"file{self.id}"

    def vmas_in(self, first: int, last: int) -> list[Vma]:
        """vma_interval_tree_foreach(): the VMAs mapping a page in [first, last]."""
        out = [v for v in self.i_mmap
               if v.pgoff <= last and first <= v.pgoff + ((v.end - v.start) >> PAGE_SHIFT) - 1]
        out.sort(key=lambda v: (v.pgoff, v.mm.id if v.mm is not None else -1, v.start))
        return out


# -- the rmap ------------------------------------------------------------------------

def i_mmap_lock_write(cpu: Cpu, mapping: AddressSpace) -> Step:
    yield from down_write(cpu, mapping.i_mmap_rwsem, "i_mmap_lock_write")


def i_mmap_unlock_write(cpu: Cpu, mapping: AddressSpace) -> None:
    up_write(cpu, mapping.i_mmap_rwsem)


def i_mmap_lock_read(cpu: Cpu, mapping: AddressSpace) -> Step:
    yield from down_read(cpu, mapping.i_mmap_rwsem, "i_mmap_lock_read")


def i_mmap_unlock_read(cpu: Cpu, mapping: AddressSpace) -> None:
    up_read(cpu, mapping.i_mmap_rwsem)


def vma_link_file(cpu: Cpu, vma: Vma) -> Step:
    """mm/vma.c: vma_link_file(): the new VMA becomes visible to the rmap."""
    mapping = vma.file
    yield from i_mmap_lock_write(cpu, mapping)
    mapping.i_mmap.append(vma)
    i_mmap_unlock_write(cpu, mapping)


def unlink_file_vma(cpu: Cpu, vma: Vma) -> Step:
    """mm/mmap.c: unlink_file_vma_batch_final() for one VMA: hide it from the
    rmap (``unmap_mapping_range()``) before its page tables are freed."""
    mapping = vma.file
    yield from i_mmap_lock_write(cpu, mapping)
    if vma in mapping.i_mmap:
        mapping.i_mmap.remove(vma)
    i_mmap_unlock_write(cpu, mapping)
    cpu.m.h.emit(cpu.id, "vma_unlink_file", mm=vma.mm.id, file=mapping.id, start=vma.start, end=vma.end)


# -- folios ------------------------------------------------------------------------------

def folio_lock(cpu: Cpu, folio: Frame) -> Step:
    """mm/filemap.c: folio_lock() (sleeps until PG_locked is clear)."""
    if folio.lock_owner is not None:
        yield from wait_until(cpu, lambda: folio.lock_owner is None, "folio_lock")
    folio.lock_owner = cpu.id


def folio_unlock(cpu: Cpu, folio: Frame) -> None:
    folio.lock_owner = None


def filemap_add_folio(cpu: Cpu, mapping: AddressSpace, index: int, mm_id: int) -> Frame:
    """mm/shmem.c: shmem_alloc_and_add_folio(): a new locked folio in the
    cache; one reference for the cache and one for the caller."""
    folio = cpu.m.frames.alloc(cpu.id, DATA, mm=mm_id, va=index << PAGE_SHIFT)
    folio.refcount += 1  # the page cache's (folio_ref_add(folio, nr) in __filemap_add_folio())
    folio.mapping = mapping
    folio.index = index
    folio.lock_owner = cpu.id  # __folio_set_locked()
    mapping.pages[index] = folio
    cpu.m.h.emit(cpu.id, "pagecache_add", file=mapping.id, index=index, pfn=folio.pfn, gen=folio.gen)
    return folio


def filemap_remove_folio(cpu: Cpu, folio: Frame) -> None:
    """mm/filemap.c: filemap_remove_folio(): delete from the cache, drop the
    cache's reference (the page is freed here if nobody else holds one)."""
    mapping: Any = folio.mapping
    if mapping.pages.get(folio.index) is folio:
        del mapping.pages[folio.index]
    folio.mapping = None
    cpu.m.h.emit(cpu.id, "pagecache_remove", file=mapping.id, index=folio.index, pfn=folio.pfn,
                 gen=folio.gen)
    cpu.m.frames.put_page(cpu.id, folio, "filemap_remove_folio")


def shmem_falloc_covers(mapping: AddressSpace, index: int) -> bool:
    return any(lo <= index <= hi for lo, hi in mapping.punching)


def shmem_fault(cpu: Cpu, vma: Vma, addr: int) -> Step:
    """mm/shmem.c: shmem_fault() -> shmem_get_folio_gfp(SGP_CACHE): the folio
    at the faulting index, locked and with a reference for the caller, or a
    string (VM_FAULT_RETRY/NOPAGE) when a hole punch covers the index
    (``shmem_falloc_wait()``: wait for it to finish, then let the fault be
    retried)."""
    m = cpu.m
    mapping: AddressSpace = vma.file
    index = vma.linear_page_index(addr)
    if shmem_falloc_covers(mapping, index):
        m.h.emit(cpu.id, "fault_waits_for_punch", file=mapping.id, index=index)
        yield from wait_until(cpu, lambda: not shmem_falloc_covers(mapping, index), "shmem_falloc_wait")
        return "retry: hole punched"
    while True:  # repeat:
        folio = mapping.pages.get(index)  # filemap_get_entry()
        if folio is None:
            return filemap_add_folio(cpu, mapping, index, vma.mm.id)
        folio.refcount += 1  # folio_try_get() (a cached page has the cache's reference)
        yield "shmem_fault:lookup"
        yield from folio_lock(cpu, folio)
        if folio.mapping is mapping and folio.index == index:
            return folio
        # truncated meanwhile: unlock, put, look again
        folio_unlock(cpu, folio)
        m.frames.put_page(cpu.id, folio, "shmem_get_folio: truncated")


# -- hole punching (the truncate operation) ------------------------------------------------

def truncate_op(cpu: Cpu, op) -> Step:
    """mm/shmem.c: shmem_fallocate(FALLOC_FL_PUNCH_HOLE) of [off, off+len) of
    file ``op.file``, from whatever this CPU runs (a process that need not map
    the file at all)."""
    from .memory import unmap_mapping_range
    m = cpu.m
    if op.file is None or not 0 <= op.file < len(m.files):
        return "EBADF"
    mapping: AddressSpace = m.files[op.file]
    if mapping.kind != "shmem":
        return "EOPNOTSUPP"
    first = op.offset >> PAGE_SHIFT
    last = ((op.offset + op.len) >> PAGE_SHIFT) - 1
    if last < first:
        return "nothing to punch"
    yield from down_write(cpu, mapping.i_rwsem, "inode_lock")
    hole = (first, last)
    mapping.punching.append(hole)  # inode->i_private = &shmem_falloc
    m.h.emit(cpu.id, "punch_begin", file=mapping.id, first=first, last=last)
    yield "truncate:punching"
    yield from unmap_mapping_range(cpu, mapping, first, last)
    n = yield from shmem_undo_range(cpu, mapping, first, last)
    mapping.punching.remove(hole)  # inode->i_private = NULL; wake_up_all()
    m.h.emit(cpu.id, "punch_end", file=mapping.id, first=first, last=last, pages=n)
    up_write(cpu, mapping.i_rwsem)
    return f"punched {n} page(s)"


def shmem_undo_range(cpu: Cpu, mapping: AddressSpace, first: int, last: int) -> Step:
    """mm/shmem.c: shmem_undo_range() -> truncate_inode_folio(): every cached
    folio of the range, locked, unmapped again if still (or again) mapped,
    removed from the cache."""
    from .memory import unmap_mapping_folio
    m = cpu.m
    n = 0
    for index in sorted(i for i in mapping.pages if first <= i <= last):
        folio = mapping.pages.get(index)
        if folio is None:
            continue
        folio.refcount += 1  # find_lock_entries(): folio_try_get()
        yield from folio_lock(cpu, folio)
        if folio.mapping is mapping:
            # truncate_inode_folio() -> truncate_cleanup_folio()
            if folio.mapcount > 0:
                m.h.emit(cpu.id, "folio_still_mapped", file=mapping.id, index=index, pfn=folio.pfn,
                         mapcount=folio.mapcount)
                yield from unmap_mapping_folio(cpu, folio)
            filemap_remove_folio(cpu, folio)
            n += 1
        folio_unlock(cpu, folio)
        m.frames.put_page(cpu.id, folio, "shmem_undo_range: folio_batch_release")
        yield "truncate:folio"
    return n
