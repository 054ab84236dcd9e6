"""mm/page_alloc.c: physical frames with allocation generations.

Every allocation of a frame starts a new *generation* of it; a pointer taken by
a walker remembers ``(pfn, gen)``, so any later access can tell "same object"
from "reused frame".  The allocator hands out the most recently freed frame
first (like the per-CPU page lists), which makes a use-after-free visible as
soon as anything allocates again.

A frame is ``FREE``, a page-table page (``TABLE``, with its level), a user
``DATA`` page (with refcount and mapcount), device memory a driver maps with
VM_PFNMAP (``IOMEM``: allocated and released by the driver, no refcount a
mapping holds), or ``OTHER``.  Table contents are a
sparse dict index -> entry value; the content of a freed table stays in the
frame until it is reallocated (no ``init_on_free``), which is what a stale
walker reads.  A transparent huge page is one frame of ``order`` 9 (MODEL:
the folio stands for its 512 pages; a PTE mapping subpage ``i`` carries the
folio's pfn, and the address tells the subpages apart).  A PMD table's
``pmd_huge_pte`` holds the PTE tables deposited for its huge PMDs
(``pgtable_trans_huge_deposit()``).  Xen PV state (``PG_pinned``, the hypervisor's pin/type count and
the read-only direct-map alias) lives here too; only the xen-pv platform
changes it.
"""

from __future__ import annotations

from typing import Any

from .history import History

FREE, TABLE, DATA, OTHER, IOMEM = 0, 1, 2, 3, 4
STATE_NAMES = {FREE: "free", TABLE: "table", DATA: "data", OTHER: "other", IOMEM: "iomem"}
#: states of a frame a user PTE may map: a page (with a struct page the mm
#: counts) or a device frame mapped by VM_PFNMAP (no refcount, no rmap)
LEAF_STATES = (DATA, IOMEM)
LEVEL_NAMES = {1: "pte", 2: "pmd", 3: "pud", 4: "pgd"}


class SpinLock:
    """A spinlock; ``owner`` is a CPU id or None."""

    __slots__ = ("name", "owner", "frame", "gen")

    def __init__(self, name: str, frame: Frame | None = None, gen: int = 0) -> None:
        self.name = name
        self.owner: int | None = None
        self.frame = frame  # the ptdesc the lock lives in (split PTLs), if any
        self.gen = gen


class Frame:
    __slots__ = (
        "pfn", "gen", "state", "level", "mm", "entries", "refcount", "mapcount",
        "ptl", "data", "pinned", "xen_pinned", "ro", "owner_va", "share_count",
        "mapping", "index", "lock_owner", "order", "pmd_huge_pte",
    )

    def __init__(self, pfn: int) -> None:
        self.pfn = pfn
        self.gen = 0
        self.state = FREE
        self.level = 0
        self.mm = -1
        self.entries: dict[int, int] = {}
        self.refcount = 0
        self.mapcount = 0
        self.ptl: SpinLock | None = None
        self.data = 0
        self.pinned = False      # Linux's PG_pinned (Xen PV)
        self.xen_pinned = False  # Xen's pin/type reference on the page
        self.ro = False          # direct-map alias read-only (Xen PV tables)
        self.owner_va = 0        # base VA this table translates (for reports)
        self.share_count = 0     # ptdesc->pt_share_count: other mms sharing this PMD table
        self.mapping: Any = None     # folio->mapping: the file whose page cache holds this page
        self.index = 0           # folio->index: its page offset in that file
        self.lock_owner: int | None = None  # PG_locked (folio_lock()): the CPU holding it
        self.order = 0           # folio order (9: a PMD-sized THP)
        #: PMD tables: the deposited PTE tables, in the order of the kernel's
        #: circular list starting at pmd_huge_pte (pgtable_trans_huge_deposit())
        self.pmd_huge_pte: list[Frame] = []

    def describe(self) -> str:
        if self.state == TABLE:
            return f"{LEVEL_NAMES[self.level]} table pfn {self.pfn:#x} gen {self.gen}"
        return f"{STATE_NAMES[self.state]} page pfn {self.pfn:#x} gen {self.gen}"


class Frames:
    """The physical page allocator."""

    __slots__ = ("frames", "free_list", "h")

    def __init__(self, history: History) -> None:
        # pfn 0 is never handed out, so an entry value of 0 always means "none"
        self.frames: list[Frame] = [Frame(0)]
        self.frames[0].state = OTHER
        self.free_list: list[int] = []
        self.h = history

    def __getitem__(self, pfn: int) -> Frame:
        return self.frames[pfn]

    def get(self, pfn: int) -> Frame | None:
        frames = self.frames
        if 0 <= pfn < len(frames):
            return frames[pfn]
        return None

    def alloc(self, cpu: int, state: int, level: int = 0, mm: int = -1, va: int = 0,
              order: int = 0) -> Frame:
        """alloc_pages(): a zeroed frame (__GFP_ZERO for tables, user pages are
        cleared too); refcount 1.  ``order`` 9 is a PMD-sized folio."""
        if self.free_list:
            f = self.frames[self.free_list.pop()]
        else:
            f = Frame(len(self.frames))
            self.frames.append(f)
        f.gen += 1
        f.state = state
        f.level = level
        f.mm = mm
        f.entries = {}
        f.refcount = 1
        f.mapcount = 0
        f.data = 0
        f.owner_va = va
        f.share_count = 0  # ptdesc_pmd_pts_init()
        f.mapping = None
        f.index = 0
        f.lock_owner = None
        f.ptl = SpinLock("ptl", f, f.gen) if state == TABLE else None
        f.order = order
        if f.pmd_huge_pte:
            f.pmd_huge_pte = []
        a = {"pfn": f.pfn, "gen": f.gen, "state": state, "level": level, "mm": mm, "va": va}
        if order:
            a["order"] = order
        self.h.emit_attrs(cpu, "alloc", a)
        return f

    def free(self, cpu: int, f: Frame, via: str) -> None:
        """mm/page_alloc.c: __free_pages(): drop the allocation's reference;
        the frame's generation ends only when that was the last one
        (``put_page_testzero()``).  Somebody else's reference (a GUP-fast
        speculative ``folio_try_get()`` that landed on the frame) keeps it
        allocated, in its current role, until that holder's ``put_page()``.
        Freeing a free frame is recorded (the oracle reports it) and
        otherwise ignored."""
        if f.state == FREE:
            self.h.emit(cpu, "double_free", pfn=f.pfn, gen=f.gen, via=via)
            return
        if f.refcount > 1:
            f.refcount -= 1
            self.h.emit_attrs(cpu, "free_held", {"pfn": f.pfn, "gen": f.gen, "state": f.state,
                                                 "via": via, "refcount": f.refcount})
            return
        self._release(cpu, f, via)

    def _release(self, cpu: int, f: Frame, via: str) -> None:
        """The last reference is gone: the frame goes back to the allocator."""
        a = {"pfn": f.pfn, "gen": f.gen, "state": f.state, "level": f.level, "via": via,
             "pinned": f.pinned, "xen_pinned": f.xen_pinned, "ro": f.ro,
             "live": sum(1 for v in f.entries.values() if v) if f.state == TABLE else 0}
        if f.order:
            a["order"] = f.order
        if f.pmd_huge_pte:
            # a PMD table freed with PTE tables still deposited: they leak
            a["deposited"] = len(f.pmd_huge_pte)
            f.pmd_huge_pte = []
        self.h.emit_attrs(cpu, "free", a)
        f.state = FREE
        f.refcount = 0
        f.mapcount = 0
        f.ptl = None
        self.free_list.append(f.pfn)

    def put_page(self, cpu: int, f: Frame, via: str) -> None:
        """put_page(): drop a reference, free at zero."""
        if f.state == FREE:
            self.h.emit(cpu, "put_free_page", pfn=f.pfn, gen=f.gen, via=via)
            return
        f.refcount -= 1
        if f.refcount <= 0:
            self._release(cpu, f, via)

    def put_pages(self, cpu: int, f: Frame, nr: int, via: str) -> None:
        """folio_put_refs(): drop ``nr`` references at once, free at zero."""
        if f.state == FREE:
            self.h.emit(cpu, "put_free_page", pfn=f.pfn, gen=f.gen, via=via)
            return
        f.refcount -= nr
        if f.refcount <= 0:
            self._release(cpu, f, via)

    def get_page_unless_zero(self, f: Frame) -> bool:
        """folio_try_get(): the speculative reference of GUP-fast; fails on a
        frame whose refcount is zero (free)."""
        if f.refcount <= 0 or f.state == FREE:
            return False
        f.refcount += 1
        return True
