"""leaked-gup-pin (I6) and leaked-xen-pin (I7).

GUP (primer 3.2, I6, GUP-fast's actual contract): the page a lockless walker
returns for an address must have been mapped there, *in the generation it
holds a reference to*, at some instant of the walk (from ``gup_start`` to
``gup_return``); references may be taken only on allocated pages; every
reference not returned must be dropped.  What this deliberately does not flag:
an ABA (the page freed and the same frame mapped again at the address, with
the same PTE value, before the re-check: the page returned *is* the one mapped
there, and GUP-fast's re-check is its linearisation point), and a walker
without a re-check whose page stayed mapped until it took its reference (x86
before v4.13 on bare metal, where the flush IPI holds the free off).

A pin must also keep its page: a THP collapse (``collapse_copy``) may not
copy a page away while a GUP-fast reference to it is held (returned, or
taken and not yet put back by a walk that then returns it).
``__collapse_huge_page_isolate()`` refuses a page whose refcount its mappings
do not explain, and ``tlb_remove_table_sync_one()`` plus GUP-fast's PMD
re-check make sure no walker that read the old PMD takes a reference after
that check (70cbc3cc78a9, 2ba99c5e0881); otherwise the pinned page is
replaced and writes through the pin are lost.

A walk in a shared hugetlb PMD table (mm/hugetlb.c, 8ce720d5bd91): once
its mm unshared the table (cleared its PUD entry) the walk may still read
it, and find there a huge page another sharer faulted in since.  Such a page
is the file's page for that offset, the one the walk's own mapping of the
file maps (or would map) at the address; the kernel accepts it ("no
difference compared to GUP-fast just sleeping for a while after grabbing the
page", 8ce720d5bd91) and only forbids walking a table that is no longer a
shared hugetlb table, which the sync after a full unshare ensures.  So a
walk may also return a hugetlb page-cache folio that a huge PMD of a PMD
table on its path (at some instant of the walk) mapped at the address's
index at some instant; anything else found through such a table (a PTE
table of an anonymous VMA its remaining owner put there, 1013af4f585f) is
still a leak.

Xen: a frame may only go back to the allocator unpinned, writable and without
``PG_pinned``; an unpin of a pgd still in some vCPU's effective CR3 fails.
"""

from __future__ import annotations

from impls.machine.history import Event
from impls.machine.page_alloc import FREE
from impls.machine.pgtable import entry_pfn, entry_present, index, pmd_leaf

from .base import Check, Handler
from .shadow import Shadow


class _Walk:
    """One GUP-fast walk in progress on a CPU: every (pfn, gen) that the live
    page tables mapped at its address at some instant since it started."""

    __slots__ = ("mm", "addr", "seen", "grab", "tables")

    def __init__(self, mm: int, addr: int, now: tuple[int, int] | None) -> None:
        self.mm = mm
        self.addr = addr
        self.seen: set[tuple[int, int] | None] = {now}
        self.grab: Event | None = None
        #: with hugetlb folios about: the PMD tables on the walk's path at some instant
        self.tables: set[int] = set()


class GupPinCheck(Check):
    def __init__(self, strategy: str) -> None:
        super().__init__(strategy)
        self.walks: dict[int, _Walk] = {}
        self.grabs: dict[int, Event] = {}
        self.returned: dict[int, Event] = {}
        #: cpu -> the collapse that copied away the page its walk holds
        self.collapsed: dict[int, Event] = {}
        #: hugetlb page-cache folios (pagecache_add with huge); empty without hugetlb
        self.hugetlb: set[tuple[int, int]] = set()

    def handlers(self) -> dict[str, Handler]:
        return {"gup_start": self.start, "entry_write": self.write, "gup_grab": self.grab,
                "gup_put": self.put, "gup_return": self.ret, "gup_unpin": self.unpin,
                "collapse_copy": self.collapse_copy, "pagecache_add": self.pagecache_add}

    def pagecache_add(self, ev: Event, sh: Shadow) -> None:
        if ev.a.get("huge"):
            self.hugetlb.add((ev.a["pfn"], ev.a["gen"]))

    def _instant(self, w: _Walk, sh: Shadow) -> None:
        """One instant of walk ``w``: what its mm maps at its address and, with
        hugetlb, the hugetlb folios the PMD tables it may be in map there."""
        w.seen.add(sh.translate(w.mm, w.addr))
        if not self.hugetlb:
            return
        t = sh.pmd_table_of(w.mm, w.addr)
        if t is not None:
            w.tables.add(t)
        idx = index(2, w.addr)
        for t in w.tables:
            val = sh.entries.get(t, {}).get(idx, 0)
            if entry_present(val) and pmd_leaf(val):
                page = (entry_pfn(val), sh.gen.get(entry_pfn(val), 0))
                if page in self.hugetlb:
                    w.seen.add(page)

    def collapse_copy(self, ev: Event, sh: Shadow) -> None:
        pages = set(ev.a["pages"])
        for cpu, r in self.returned.items():
            if (r.a["pfn"], r.a["gen"]) in pages:
                self._pin_lost(cpu, r, ev, sh)
        for cpu, g in self.grabs.items():
            if (g.a["pfn"], g.a["gen"]) in pages:
                self.collapsed[cpu] = ev

    def _pin_lost(self, cpu: int, pin: Event, copy: Event, sh: Shadow) -> None:
        a = pin.a
        self.report("leaked-gup-pin", (cpu, pin.seq, "collapse"),
                    f"a THP collapse on CPU{copy.cpu} copied pfn {a['pfn']:#x} away (va "
                    f"{a['addr']:#x} now maps the new huge page) while GUP-fast on CPU{cpu} held a "
                    "pin on it: writes through the pin are lost; __collapse_huge_page_isolate() "
                    "must refuse a page whose refcount its mappings do not explain",
                    [sh.last_op.get(cpu), self.grabs.get(cpu), pin, copy], pfn=a["pfn"])

    def start(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        w = self.walks[ev.cpu] = _Walk(a["mm"], a["addr"], sh.translate(a["mm"], a["addr"]))
        if self.hugetlb:
            self._instant(w, sh)

    def write(self, ev: Event, sh: Shadow) -> None:
        # the state before this store is one instant of every walk in progress
        # (the state after the last store is seen at the next grab or return)
        for w in self.walks.values():
            self._instant(w, sh)

    def grab(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        if sh.state.get(a["pfn"], FREE) == FREE or sh.gen.get(a["pfn"]) != a["gen"]:
            self.report("leaked-gup-pin", (ev.cpu, ev.seq),
                        f"GUP-fast on CPU{ev.cpu} took a reference on pfn {a['pfn']:#x}, a free "
                        "page: a speculative reference may only be taken on an allocated page "
                        "(folio_try_get() fails on a zero refcount)",
                        [sh.last_op.get(ev.cpu), sh.frees.get((a["pfn"], a["gen"])), ev], pfn=a["pfn"])
        self.grabs[ev.cpu] = ev
        w = self.walks.get(ev.cpu)
        if w is not None:
            self._instant(w, sh)

    def put(self, ev: Event, sh: Shadow) -> None:
        self.grabs.pop(ev.cpu, None)
        self.collapsed.pop(ev.cpu, None)

    def ret(self, ev: Event, sh: Shadow) -> None:
        copy = self.collapsed.pop(ev.cpu, None)
        if copy is not None:
            self._pin_lost(ev.cpu, ev, copy, sh)
        g = self.grabs.pop(ev.cpu, None)
        w = self.walks.pop(ev.cpu, None)
        self.returned[ev.cpu] = ev
        a = ev.a
        page = (a["pfn"], a["gen"])
        if w is not None and self.hugetlb:
            self._instant(w, sh)
        if w is None or page in w.seen or sh.translate(w.mm, w.addr) == page:
            return
        self.report("leaked-gup-pin", (ev.cpu, ev.seq),
                    f"GUP-fast on CPU{ev.cpu} returned pfn {a['pfn']:#x} (generation {a['gen']}) "
                    f"for va {a['addr']:#x}, but that page was not mapped there at any instant "
                    "of the walk",
                    [sh.last_op.get(ev.cpu), sh.pte_clears.get(page), sh.frees.get(page),
                     sh.last_alloc.get(a["pfn"]), g, ev], pfn=a["pfn"])

    def unpin(self, ev: Event, sh: Shadow) -> None:
        self.returned.pop(ev.cpu, None)

    def finish(self, sh: Shadow, final: Event | None) -> None:
        if final is None:
            return  # the run did not finish its operations
        for cpu, g in self.grabs.items():
            self.report("leaked-gup-pin", (cpu, g.seq),
                        f"GUP-fast on CPU{cpu} took a reference on pfn {g.pfn:#x} and never "
                        "dropped or returned it", [g], pfn=g.pfn)
        for cpu, r in self.returned.items():
            self.report("leaked-gup-pin", (cpu, r.seq),
                        f"the pin GUP-fast returned on CPU{cpu} (pfn {r.pfn:#x}) was never "
                        "released", [r], pfn=r.pfn)


class XenPinCheck(Check):
    def handlers(self) -> dict[str, Handler]:
        return {"free": self.free, "xen_unpin_failed": self.unpin_failed}

    def free(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        if not (a["pinned"] or a["xen_pinned"] or a["ro"]):
            return
        why = ", ".join(w for w, on in (("PG_pinned", a["pinned"]),
                                        ("pinned/typed by Xen", a["xen_pinned"]),
                                        ("read-only", a["ro"])) if on)
        self.report("leaked-xen-pin", (a["pfn"], a["gen"]),
                    f"frame pfn {a['pfn']:#x} returned to the allocator while {why}",
                    [sh.last_alloc.get(a["pfn"]), sh.unhooks.get((a["pfn"], a["gen"])), ev],
                    pfn=a["pfn"])

    def unpin_failed(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        cpus = ", ".join(f"CPU{c}" for c in a["cpus"])
        self.report("leaked-xen-pin", ("unpin", a["pfn"], a["gen"]),
                    f"Xen refused to unpin mm{a['mm']}'s pgd pfn {a['pfn']:#x}: still the "
                    f"effective CR3 of {cpus}; the tree stays pinned and read-only", [ev],
                    pfn=a["pfn"])
