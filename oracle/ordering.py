"""ordering (I4, I5): unhook < invalidation completed on every CPU that
could cache it < free, whether or not any stale entry happened to exist.

When an entry pointing to a table is cleared, every CPU whose hardware CR3
holds that mm (lazy-TLB CPUs included: they walk speculatively) owes an
invalidation of the table's paging-structure-cache entries.  When a PTE is
cleared, every CPU running the mm non-lazily owes an invalidation of the
leaf.  A debt is paid by an invalidation that drops the entry *on that CPU*
(``tlb_inv`` with the PSC covering the table, a full flush, a CR3 reload);
what counts is when it took effect there, so a Xen flush still sitting in a
lazy multicall queue, or an INVLPGB that has not landed, pays nothing.  A
free with a debt outstanding is a violation; so is freeing a table that is
still linked into the tree.

With ASIDs (x86 PCIDs, arm64 ASIDs) a debt is owed by a (CPU, ASID): the
CPUs whose hardware runs the mm owe it in their current ASID, and a CPU that
keeps the mm's entries under an ASID it switched away from owes it there.
Such an ASID may be invalidated while inactive (INVLPGB and arm64 TLBIs work
by ASID), or not at all: the kernel catches up when it loads the ASID again
(x86 ``choose_new_asid()`` flushes when ``tlb_gen`` moved).  So a free with
a debt owed only in inactive ASIDs is not a violation yet; the debt waits
(``dormant``), and loading that ASID again without a flush is the violation.

Debts accumulate until the free: a table unhooked by several mms (a shared
hugetlb PMD table: every sharer but the last unshares it, the last frees
it), a table unhooked and linked again elsewhere (``mremap()``'s
``move_normal_pmd()``), a page whose PTEs in several mms were cleared (a
page-cache page), each unhook adds the CPUs that then ran the mm it was
unhooked from, at the address it had there.  The CPUs that must have
invalidated before the free are the union.

THP: clearing a huge PMD is a leaf clear of its folio over 2 MiB; a PTE
cleared in a table that is already unhooked (a collapse clears the old
table after ``pmdp_collapse_flush()``) is owed only by the (CPU, ASID)s that
still owe that table's invalidation: nobody else can have loaded a leaf
through it since.
"""

from __future__ import annotations

from impls.machine.history import Event
from impls.machine.page_alloc import TABLE
from impls.machine.pgtable import (
    LEVEL_SHIFT,
    PAGE_SHIFT,
    PMD_SHIFT,
    TABLE_SPAN,
    entry_pfn,
    is_table_entry,
    pmd_leaf,
)

from .base import Check, Handler
from .shadow import Shadow


class _Debt:
    __slots__ = ("event", "need", "lo", "hi", "table", "mm")

    def __init__(self, event: Event, need: set[tuple[int, int]], lo: int, hi: int, table: bool,
                 mm: int) -> None:
        self.event = event
        self.need = need
        self.lo = lo
        self.hi = hi
        self.table = table
        self.mm = mm


def _hits(start: int, end: int, stride: int, lo: int, hi: int) -> bool:
    """Does some address start + k*stride < end fall in [lo, hi)?"""
    if end <= lo or start >= hi:
        return False
    if start >= lo:
        return True
    k = -(-(lo - start) // stride)
    a = start + k * stride
    return a < min(end, hi)


class OrderingCheck(Check):
    def __init__(self, strategy: str) -> None:
        super().__init__(strategy)
        self.debts: dict[tuple[int, int], list[_Debt]] = {}
        #: table -> {(parent pfn, index): the write that linked it there}
        self.linked: dict[tuple[int, int], dict[tuple[int, int], Event]] = {}
        #: (cpu, asid) -> [(debt, the free)]: debts owed in an ASID that was
        #: inactive when the frame was freed
        self.dormant: dict[tuple[int, int], list[tuple[_Debt, Event]]] = {}

    def handlers(self) -> dict[str, Handler]:
        return {"entry_write": self.write, "tlb_inv": self.inv, "tlb_inv_all": self.inv_all,
                "tlb_inv_leaf_all": self.inv_leaf_all, "switch_mm": self.switch, "free": self.free,
                "cr3_load": self.cr3_load}

    def _cpus_on(self, sh: Shadow, mm: int, include_lazy: bool) -> set[tuple[int, int]]:
        """The (cpu, asid) pairs that may cache an entry of ``mm``: the
        current ASID of every CPU whose hardware runs it (lazy ones too if
        asked), and every inactive ASID last loaded for it."""
        pgd = sh.pgd_of_mm.get(mm)
        cur = sh.cur_asid
        out = {(c, cur.get(c, 0)) for c, p in sh.hw_pgd.items()
               if c >= 0 and p == pgd and (include_lazy or not sh.lazy.get(c))}
        if sh.ctx_mm:
            out.update(sh.contexts_of(mm))
        return out

    def write(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        pfn, old, new = a["pfn"], a["old"], a["new"]
        if sh.state.get(pfn) != TABLE or a["gen"] != sh.gen.get(pfn):
            return
        level = sh.level.get(pfn, 1)
        idx = a["idx"]
        if new and level > 1 and is_table_entry(new) and new != old:
            child = entry_pfn(new)
            self.linked.setdefault((child, sh.gen.get(child, 0)), {})[(pfn, idx)] = ev
        if not old or old == new:
            return
        child = entry_pfn(old)
        key = (child, sh.gen.get(child, 0))
        debts = self.debts.setdefault(key, [])
        if level > 1 and not pmd_leaf(old):
            links = self.linked.get(key)
            if links is not None:
                links.pop((pfn, idx), None)
            shift = LEVEL_SHIFT[level]
            for mm, base in sh.placements(pfn):
                lo = base | (idx << shift)
                debts.append(_Debt(ev, self._cpus_on(sh, mm, True), lo, lo + TABLE_SPAN[level - 1],
                                   True, mm))
        elif level == 2:
            # a huge PMD cleared (THP): a 2 MiB leaf of its folio
            for mm, base in sh.placements(pfn):
                lo = base | (idx << PMD_SHIFT)
                debts.append(_Debt(ev, self._cpus_on(sh, mm, False), lo, lo + (1 << PMD_SHIFT),
                                   False, mm))
        else:
            nr = a.get("nr", 1)
            tkey = (pfn, a["gen"])
            owed = None
            if not self.linked.get(tkey) and tkey in self.debts:
                # a PTE cleared in a table already unhooked (a THP collapse
                # clears the old table after pmdp_collapse_flush()): only a
                # (CPU, ASID) that has not yet invalidated the table since its
                # unhook can hold a leaf loaded through it
                owed = set()
                for d in self.debts[tkey]:
                    if d.table:
                        owed |= d.need
            for mm, base in sh.placements(pfn):
                lo = base | (idx << PAGE_SHIFT)
                need = self._cpus_on(sh, mm, False)
                if owed is not None:
                    need &= owed
                debts.append(_Debt(ev, need, lo, lo + (nr << PAGE_SHIFT), False, mm))

    def _all(self):
        for ds in self.debts.values():
            yield from ds

    def inv(self, ev: Event, sh: Shadow) -> None:
        if ev.cpu < 0:
            return
        a = ev.a
        start, end, stride = a["start"], a["end"], 1 << a.get("stride", PAGE_SHIFT)
        psc = a.get("psc", True)
        key = (ev.cpu, a.get("asid", sh.cur_asid.get(ev.cpu, 0)))
        every_psc = psc == "all"
        for d in self._all():
            if key in d.need and (psc or not d.table) and \
                    (every_psc and d.table or _hits(start, end, stride, d.lo, d.hi)):
                d.need.discard(key)
        waiting = self.dormant.get(key)
        if waiting:
            waiting[:] = [(d, f) for d, f in waiting
                          if not ((psc or not d.table)
                                  and (every_psc and d.table or _hits(start, end, stride, d.lo, d.hi)))]

    def _key(self, ev: Event, sh: Shadow) -> tuple[int, int]:
        return ev.cpu, ev.a.get("asid", sh.cur_asid.get(ev.cpu, 0))

    def inv_all(self, ev: Event, sh: Shadow) -> None:
        key = self._key(ev, sh)
        for d in self._all():
            d.need.discard(key)
        self.dormant.pop(key, None)

    def inv_leaf_all(self, ev: Event, sh: Shadow) -> None:
        key = self._key(ev, sh)
        for d in self._all():
            if not d.table:
                d.need.discard(key)
        waiting = self.dormant.get(key)
        if waiting:
            waiting[:] = [(d, f) for d, f in waiting if d.table]

    def switch(self, ev: Event, sh: Shadow) -> None:
        if ev.a["lazy"]:  # a lazy CPU owes no leaf invalidation (tlb_gen catch-up)
            key = (ev.cpu, sh.cur_asid.get(ev.cpu, 0))
            for d in self._all():
                if not d.table:
                    d.need.discard(key)

    def cr3_load(self, ev: Event, sh: Shadow) -> None:
        """An ASID loaded again: without a flush, every debt it still owed for
        a frame freed meanwhile is a violation (the kernel's catch-up did not
        happen); with one, the debts are paid (the ``tlb_inv_all`` that
        follows)."""
        a = ev.a
        key = (ev.cpu, a.get("asid", 0))
        waiting = self.dormant.pop(key, None)
        if not waiting or a.get("flush", True):
            return
        for d, free in waiting:
            what = "table" if d.table else "page"
            pfn = free.a["pfn"]
            self.report("ordering", ("dormant", pfn, free.a["gen"], ev.cpu),
                        f"CPU{ev.cpu} loaded ASID {key[1]} without a flush after {what} pfn {pfn:#x} "
                        f"(mm{d.mm} va {d.lo:#x}), which that ASID may cache, was freed without "
                        "an invalidation there",
                        [d.event, free, ev], pfn=pfn, cpus=(ev.cpu,))

    def free(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        key = (a["pfn"], a["gen"])
        links = self.linked.pop(key, None)
        if links and a["state"] == TABLE:
            link = links[min(links)]
            self.report("ordering", ("linked",) + key,
                        f"table pfn {a['pfn']:#x} freed while still linked into the page tables",
                        [link, ev], pfn=a["pfn"])
        debts = self.debts.pop(key, None)
        if not debts:
            return
        cur = sh.cur_asid
        owed = []
        for d in debts:
            if not d.need:
                continue
            active = {k for k in d.need if cur.get(k[0], 0) == k[1]}
            for k in d.need - active:
                self.dormant.setdefault(k, []).append((d, ev))
            if active:
                d.need = active
                owed.append(d)
        if not owed:
            return
        d = owed[0]
        need = sorted({c for x in owed for c, _ in x.need})
        what = "table" if d.table else "page"
        cpus = ", ".join(f"CPU{c}" for c in need)
        lazy = [c for c in need if sh.lazy.get(c)]
        note = f" ({', '.join(f'CPU{c}' for c in sorted(lazy))} lazy)" if lazy else ""
        if len(owed) == 1 and len({x.mm for x in debts}) == 1:
            where = f"va {d.lo:#x}"
        else:
            where = ", ".join(dict.fromkeys(f"mm{x.mm} va {x.lo:#x}" for x in owed))
        self.report("ordering", key,
                    f"{what} pfn {a['pfn']:#x} ({where}) freed before {cpus}{note} "
                    "invalidated it after the unhook",
                    [x.event for x in owed] + [ev], pfn=a["pfn"], cpus=tuple(need))
