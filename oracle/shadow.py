"""The oracle's own picture of the machine, rebuilt from the history alone.

Frames (generation, state, level, owner mm, base VA), page-table contents,
per-agent TLB and paging-structure caches, what each CPU's hardware has in
CR3 and whether it is lazy, which table each table pointer points to.  The
checks read it *before* each event is applied, so at a ``free`` they see the
frame still alive and every cache entry that still refers to it.

It deliberately re-implements the few hardware rules it needs (what an
invalidation drops) instead of trusting the machine's caches: a disagreement
between the two shows up as an accounting violation at quiescence.

A table may have several owners: a hugetlb PMD table shared between mms
(``huge_pmd_share()``) is linked from a PUD entry of each, maybe at a
different virtual address in each, and a table that ``mremap()`` moved is
linked where it now is.  The shadow keeps every link (parent table and index)
of every table, and :meth:`Shadow.placements` answers "which mms reach this
table, and at which address": the union over its links, from each parent's
own placements.  The checks ask it instead of the allocating mm.

Huge PMDs (THP): a 2 MiB TLB entry is kept under the negative key
``huge_key(va)`` as the machine does; ``translate()`` stops at a present huge
PMD; clearing a huge PMD is a leaf clear of its folio (``pte_clears``), not
the unhook of a table.  A deposited PTE table is linked nowhere; when a split
links it again (maybe for another 2 MiB of the same PMD table: the deposit
list is per PMD table) its placement follows the new link.
"""

from __future__ import annotations

from collections.abc import Callable

from impls.machine.history import Event
from impls.machine.page_alloc import DATA, FREE, TABLE
from impls.machine.pgtable import (
    _INDEX_MASK,
    _PAGE_PRESENT,
    _PAGE_PSE,
    LEVEL_SHIFT,
    PAGE_SHIFT,
    PMD_SHIFT,
    TABLE_SPAN,
    entry_pfn,
    index,
    is_table_entry,
    pmd_leaf,
)

PSC_SHIFTS = ((1, 21), (2, 30), (3, 39))
#: (level, shift of its index) from the PGD down, for translate()
_WALK = tuple((level, LEVEL_SHIFT[level]) for level in (4, 3, 2, 1))
IOMMU = -3


def tlb_key_va(key: int) -> int:
    """The first VA a TLB key translates (negative keys: 2 MiB entries)."""
    return key << PAGE_SHIFT if key >= 0 else (-1 - key) << PMD_SHIFT


def _entry_overlaps(key: int, start: int, end: int) -> bool:
    va = tlb_key_va(key)
    return va < end and start < va + (1 << (PAGE_SHIFT if key >= 0 else PMD_SHIFT))


class Shadow:
    def __init__(self) -> None:
        self.gen: dict[int, int] = {}
        self.state: dict[int, int] = {}
        self.level: dict[int, int] = {}
        self.mm_of: dict[int, int] = {}
        self.va_of: dict[int, int] = {}
        self.entries: dict[int, dict[int, int]] = {}
        self.pgd_of_mm: dict[int, int] = {}
        self.tlb: dict[int, dict[int, tuple[int, int, int]]] = {}
        self.psc: dict[int, dict[tuple[int, int], tuple[int, int, int]]] = {}
        self.hw_pgd: dict[int, int] = {}      # cpu -> pgd pfn in the hardware CR3
        # ASIDs (x86 PCIDs, arm64 ASIDs): tlb/psc above are each agent's
        # current ASID's entries; another ASID's stay in ctx_store until it is
        # loaded again (with or without a flush) or invalidated by ASID
        self.cur_asid: dict[int, int] = {}    # cpu -> the ASID its hardware uses
        self.ctx_store: dict[tuple[int, int], tuple[dict, dict]] = {}  # (cpu, asid) -> (tlb, psc)
        self.ctx_mm: dict[tuple[int, int], int] = {}   # (cpu, asid) -> the mm it was loaded for
        self.lazy: dict[int, bool] = {}
        self.current: dict[int, int] = {}     # cpu -> mm of the running task (-1: kthread)
        self.irq_off: dict[int, int] = {}
        self.sptes: dict[int, dict[int, tuple[int, int, int]]] = {}  # mm -> gfn -> (pfn, gen, seq)
        self.last_alloc: dict[int, Event] = {}
        self.frees: dict[tuple[int, int], Event] = {}
        self.unhooks: dict[tuple[int, int], Event] = {}
        self.pte_clears: dict[tuple[int, int], Event] = {}
        self.fills: dict[tuple[int, int, int], Event] = {}   # (agent, pfn, gen) -> last fill
        self.last_op: dict[int, Event] = {}
        self.boot: Event | None = None
        #: table pfn -> {(parent table pfn, index)}: the entries that point to it now
        self.links: dict[int, set[tuple[int, int]]] = {}
        self._placements: dict[int, tuple[tuple[int, int], ...]] = {}

    def updaters(self) -> dict[str, Callable[..., None]]:
        """Event kind -> bound update method; each takes the event (and, to
        share the checks' ``handler(ev, shadow)`` calling convention, ignores
        a second argument).  Built on demand rather than kept on the instance:
        a dict of bound methods on ``self`` would make every shadow a reference
        cycle, left to the cycle collector."""
        return {
            "boot": self._boot, "alloc": self._alloc, "free": self._free,
            "entry_write": self._entry_write, "tlb_fill": self._tlb_fill,
            "psc_fill": self._psc_fill, "tlb_inv": self._tlb_inv,
            "tlb_inv_all": self._tlb_inv_all, "tlb_inv_leaf_all": self._tlb_inv_leaf_all,
            "tlb_inv_span": self._tlb_inv_span, "cr3_load": self._cr3_load,
            "switch_mm": self._switch_mm, "context_switch": self._context_switch,
            "irq_off": self._irq_off, "irq_on": self._irq_on, "spte_install": self._spte_install,
            "spte_zap": self._spte_zap, "op_begin": self._op_begin, "thread_killed": self._killed,
        }

    def apply(self, ev: Event) -> None:
        fn = self.updaters().get(ev.kind)
        if fn is not None:
            fn(ev)

    # -- queries -----------------------------------------------------------------
    def live(self, pfn: int, gen: int) -> bool:
        return self.gen.get(pfn) == gen and self.state.get(pfn, FREE) != FREE

    def is_table(self, pfn: int, gen: int) -> bool:
        return self.gen.get(pfn) == gen and self.state.get(pfn) == TABLE

    def mm_of_cpu_hw(self, cpu: int) -> int | None:
        pgd = self.hw_pgd.get(cpu, 0)
        return self.mm_of.get(pgd) if pgd else None

    def translate(self, mm: int, va: int) -> tuple[int, int] | None:
        """What the live page tables of ``mm`` map at ``va``."""
        pfn = self.pgd_of_mm.get(mm)
        if pfn is None:
            return None
        entries = self.entries
        # index(), entry_present(), entry_pfn(), pmd_leaf() and
        # is_table_entry() inlined (checks ask this a few dozen times a run)
        for level, shift in _WALK:
            table = entries.get(pfn)
            val = table.get((va >> shift) & _INDEX_MASK, 0) if table is not None else 0
            if not val & _PAGE_PRESENT:
                return None
            child = val >> PAGE_SHIFT
            if level == 2 and val & _PAGE_PSE:
                return child, self.gen.get(child, 0)  # a huge PMD maps the folio
            if level > 1:
                if val & _PAGE_PSE or self.state.get(child) != TABLE:  # not a table entry
                    return None
                pfn = child
            else:
                return child, self.gen.get(child, 0)
        return None

    def pmd_table_of(self, mm: int, va: int) -> int | None:
        """The PMD table the live tables of ``mm`` use for ``va``, or None."""
        pfn = self.pgd_of_mm.get(mm)
        for level in (4, 3):
            if pfn is None:
                return None
            val = self.entries.get(pfn, {}).get(index(level, va), 0)
            if not is_table_entry(val):
                return None
            pfn = entry_pfn(val)
        return pfn

    def upper_entry_to(self, pfn: int) -> tuple[int, int] | None:
        """A live upper-level table entry (PMD, PUD, PGD) whose value points
        to frame ``pfn``, as (table pfn, index), or None.  A scan: only asked
        when a walker treats a frame that is not a table as one."""
        for tpfn, entries in self.entries.items():
            if self.state.get(tpfn) != TABLE or self.level.get(tpfn, 1) < 2:
                continue
            for idx, val in entries.items():
                if val and entry_pfn(val) == pfn:
                    return tpfn, idx
        return None

    def placements(self, pfn: int) -> tuple[tuple[int, int], ...]:
        """The (mm, base VA) pairs under which table ``pfn`` is reachable: a
        pgd is its mm's at 0; a linked table is reachable wherever a table
        linking it is, at that table's base plus the index's span; a table
        linked nowhere (not yet, or no longer) counts as its allocating mm's,
        at the address it was allocated for."""
        got = self._placements.get(pfn)
        if got is not None:
            return got
        links = self.links.get(pfn)
        if self.level.get(pfn) == 4 or not links:
            got = ((self.mm_of.get(pfn, -1), self.va_of.get(pfn, 0)),)
        else:
            out: dict[tuple[int, int], None] = {}
            for parent, idx in sorted(links):
                shift = LEVEL_SHIFT[self.level.get(parent, 2)]
                for mm, base in self.placements(parent):
                    out[(mm, base | (idx << shift))] = None
            got = tuple(out)
        self._placements[pfn] = got
        return got

    def mms_of(self, pfn: int) -> set[int]:
        """Every mm that reaches table ``pfn`` (its owners: several for a
        shared table)."""
        return {mm for mm, _ in self.placements(pfn)}

    def table_span(self, pfn: int) -> tuple[int, int]:
        lvl = self.level.get(pfn, 1)
        base = self.va_of.get(pfn, 0)
        return base, base + TABLE_SPAN[lvl]

    # -- updates -------------------------------------------------------------------
    def _boot(self, ev: Event, _sh: object = None) -> None:
        self.boot = ev

    def _alloc(self, ev: Event, _sh: object = None) -> None:
        a = ev.a
        pfn = a["pfn"]
        self.gen[pfn] = a["gen"]
        self.state[pfn] = a["state"]
        self.level[pfn] = a["level"]
        self.mm_of[pfn] = a["mm"]
        self.va_of[pfn] = a["va"]
        self.entries[pfn] = {}
        self.last_alloc[pfn] = ev
        if self.links.pop(pfn, None) is not None or pfn in self._placements:
            self._placements.clear()
        if a["state"] == TABLE and a["level"] == 4:
            self.pgd_of_mm[a["mm"]] = pfn

    def _free(self, ev: Event, _sh: object = None) -> None:
        pfn = ev.a["pfn"]
        self.state[pfn] = FREE
        self.frees[(pfn, ev.a["gen"])] = ev

    def _entry_write(self, ev: Event, _sh: object = None) -> None:
        a = ev.a
        pfn, idx, old, new = a["pfn"], a["idx"], a["old"], a["new"]
        table = self.entries.setdefault(pfn, {})
        nr = a.get("nr", 1)
        for i in range(idx, idx + nr):
            if new:
                table[i] = new
            else:
                table.pop(i, None)
        live = self.state.get(pfn) == TABLE and a["gen"] == self.gen.get(pfn)
        upper = self.level.get(pfn, 1) > 1
        if old and old != new and live:
            child = entry_pfn(old)
            key = (child, self.gen.get(child, 0))
            if upper and not pmd_leaf(old):
                self.unhooks[key] = ev
            else:
                self.pte_clears[key] = ev  # a leaf: a 4 KiB page or a huge PMD's folio
        if upper and live and old != new:
            if old and is_table_entry(old):
                links = self.links.get(entry_pfn(old))
                if links is not None:
                    links.discard((pfn, idx))
                self._placements.clear()
            if new and is_table_entry(new):
                self.links.setdefault(entry_pfn(new), set()).add((pfn, idx))
                self._placements.clear()

    def _tlb_fill(self, ev: Event, _sh: object = None) -> None:
        a = ev.a
        key = -1 - (a["va"] >> PMD_SHIFT) if a.get("huge") else a["va"] >> PAGE_SHIFT
        self.tlb.setdefault(ev.cpu, {})[key] = (a["pfn"], a["gen"], ev.seq)
        self.fills[(ev.cpu, a["pfn"], a["gen"])] = ev

    def _psc_fill(self, ev: Event, _sh: object = None) -> None:
        a = ev.a
        shift = LEVEL_SHIFT[a["level"] + 1]
        self.psc.setdefault(ev.cpu, {})[(a["level"], a["prefix"] >> shift)] = (a["pfn"], a["gen"], ev.seq)
        self.fills[(ev.cpu, a["pfn"], a["gen"])] = ev

    def context(self, cpu: int, asid: int | None) -> tuple[dict, dict]:
        """The (tlb, psc) entries of ``cpu``'s ASID ``asid`` (None: the
        current one), created empty if need be."""
        if asid is None or asid == self.cur_asid.get(cpu, 0):
            return self.tlb.setdefault(cpu, {}), self.psc.setdefault(cpu, {})
        ctx = self.ctx_store.get((cpu, asid))
        if ctx is None:
            ctx = self.ctx_store[(cpu, asid)] = ({}, {})
        return ctx

    def is_current(self, cpu: int, asid: int) -> bool:
        return self.cur_asid.get(cpu, 0) == asid

    def contexts_of(self, mm: int) -> list[tuple[int, int]]:
        """The (cpu, ASID) pairs not current on their CPU that were last
        loaded for ``mm``: where entries of ``mm`` may wait for the ASID to be
        loaded again."""
        cur = self.cur_asid
        return [key for key, m in self.ctx_mm.items() if m == mm and key[0] >= 0
                and cur.get(key[0], 0) != key[1]]

    def _tlb_inv(self, ev: Event, _sh: object = None) -> None:
        a = ev.a
        tlb, psc = self.context(ev.cpu, a.get("asid"))
        step = 1 << a.get("stride", PAGE_SHIFT)
        drop_psc = a.get("psc", True)
        if drop_psc == "all":
            psc.clear()
            drop_psc = False
        addr = a["start"]
        while addr < a["end"]:
            tlb.pop(addr >> PAGE_SHIFT, None)
            tlb.pop(-1 - (addr >> PMD_SHIFT), None)
            if drop_psc:
                for lvl, shift in PSC_SHIFTS:
                    psc.pop((lvl, addr >> shift), None)
            addr += step

    def _tlb_inv_all(self, ev: Event, _sh: object = None) -> None:
        asid = ev.a.get("asid")
        if asid is None or asid == self.cur_asid.get(ev.cpu, 0):
            self.tlb.pop(ev.cpu, None)
            self.psc.pop(ev.cpu, None)
        else:
            self.ctx_store.pop((ev.cpu, asid), None)

    def _tlb_inv_leaf_all(self, ev: Event, _sh: object = None) -> None:
        self.context(ev.cpu, ev.a.get("asid"))[0].clear()

    def _tlb_inv_span(self, ev: Event, _sh: object = None) -> None:
        start, end = ev.a["start"], ev.a["end"]
        tlb = self.tlb.get(ev.cpu, {})
        for key in [k for k in tlb if _entry_overlaps(k, start, end)]:
            del tlb[key]
        psc = self.psc.get(ev.cpu, {})
        for pkey in list(psc):
            lvl, prefix = pkey
            shift = dict(PSC_SHIFTS)[lvl]
            lo = prefix << shift
            if lo < end and start < lo + (1 << shift):
                del psc[pkey]

    def _cr3_load(self, ev: Event, _sh: object = None) -> None:
        """The hardware switches to ASID ``asid`` (0 without ASIDs): the
        current entries are kept under the old ASID, the new ASID's come
        back (a flush of them is the ``tlb_inv_all`` that follows).  A CPU
        whose CR3 now holds another pgd has left lazy-TLB mode, whatever the
        kernel bookkeeping says (inside switch_mm_irqs_off())."""
        a = ev.a
        cpu = ev.cpu
        asid = a.get("asid", 0)
        cur = self.cur_asid.get(cpu, 0)
        if asid != cur:
            t = self.tlb.pop(cpu, None)
            p = self.psc.pop(cpu, None)
            if t or p:
                self.ctx_store[(cpu, cur)] = (t or {}, p or {})
            t, p = self.ctx_store.pop((cpu, asid), (None, None))
            if t:
                self.tlb[cpu] = t
            if p:
                self.psc[cpu] = p
            self.cur_asid[cpu] = asid
        if self.hw_pgd.get(cpu) != a["pfn"]:
            self.lazy[cpu] = False
        self.hw_pgd[cpu] = a["pfn"]
        self.ctx_mm[(cpu, asid)] = a.get("mm", self.mm_of.get(a["pfn"], -1))

    def _switch_mm(self, ev: Event, _sh: object = None) -> None:
        self.lazy[ev.cpu] = bool(ev.a["lazy"])

    def _context_switch(self, ev: Event, _sh: object = None) -> None:
        self.current[ev.cpu] = ev.a["to"]

    def _killed(self, ev: Event, _sh: object = None) -> None:
        self.current[ev.cpu] = -1

    def _irq_off(self, ev: Event, _sh: object = None) -> None:
        self.irq_off[ev.cpu] = self.irq_off.get(ev.cpu, 0) + 1

    def _irq_on(self, ev: Event, _sh: object = None) -> None:
        self.irq_off[ev.cpu] = self.irq_off.get(ev.cpu, 0) - 1

    def _spte_install(self, ev: Event, _sh: object = None) -> None:
        self.sptes.setdefault(ev.a["mm"], {})[ev.a["gfn"] >> PAGE_SHIFT] = (ev.a["pfn"], ev.a["gen"], ev.seq)

    def _spte_zap(self, ev: Event, _sh: object = None) -> None:
        self.sptes.get(ev.a["mm"], {}).pop(ev.a["gfn"] >> PAGE_SHIFT, None)

    def _op_begin(self, ev: Event, _sh: object = None) -> None:
        self.last_op[ev.cpu] = ev

    def data_page(self, pfn: int) -> bool:
        return self.state.get(pfn) == DATA
