"""bad-walk (I9): a walker followed a PMD (or PUD, PGD) value as a table
pointer when it was not one.

A software walker (GUP-fast, ``pte_offset_map()`` users, faults, zaps) or the
hardware walker that accesses a frame as a page table, in the generation the
frame has now, while the frame is not a table (a THP folio, any data page),
and a live upper-level entry points to that frame: the walker took a huge
leaf, the not-present value ``pmdp_invalidate()`` leaves while a huge PMD is
split, or an entry to a frame that stopped being a table, for a table
pointer.  The kernel's rule (include/linux/pgtable.h, mm/gup.c): read the
entry once, and descend only if it is ``pmd_present() && !pmd_leaf()``
(``___pte_offset_map()`` returns NULL for none, migration, huge and bad
values; ``gup_fast_pmd_range()`` sends leaves to ``gup_fast_pmd_leaf()``).

Not flagged here: an access through a pointer taken when the frame had
another generation, or to a freed frame (that is a use-after-free:
table-uaf, stale-psc); a walk into a frame no live entry points to (the
pointer came from garbage a use-after-free read, reported there).
"""

from __future__ import annotations

from impls.machine.history import Event
from impls.machine.page_alloc import DATA, STATE_NAMES
from impls.machine.pgtable import entry_class

from .base import Check, Handler
from .shadow import IOMMU, Shadow

_LEVEL = {2: "PMD", 3: "PUD", 4: "PGD"}


def misclassified(sh: Shadow, pfn: int, gen: int) -> tuple[int, int] | None:
    """(table pfn, index) of the live upper-level entry that points to frame
    ``pfn`` if an access to ``(pfn, gen)`` as a table is a bad walk: the
    frame has that generation now and is not a table."""
    if sh.state.get(pfn, 0) < DATA or sh.gen.get(pfn) != gen:
        return None
    return sh.upper_entry_to(pfn)


class BadWalkCheck(Check):
    def handlers(self) -> dict[str, Handler]:
        return {"sw_read": self.access, "sw_touch": self.access, "entry_write": self.access,
                "hw_read": self.access}

    def access(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        pfn = a["pfn"]
        if sh.state.get(pfn, 0) < DATA:  # a table, or free: not a misclassification
            return
        parent = misclassified(sh, pfn, a["gen"])
        if parent is None:
            return
        tpfn, idx = parent
        val = sh.entries.get(tpfn, {}).get(idx, 0)
        lvl = sh.level.get(tpfn, 2)
        what = entry_class(lvl, val)
        folio = " (a THP folio)" if what in ("huge", "invalid-huge") else ""
        if ev.kind == "hw_read":
            who = f"{'IOMMU' if ev.cpu == IOMMU else f'CPU{ev.cpu}'} hardware walk ({a['via']})"
        else:
            who = f"CPU{ev.cpu} {a.get('who') or a.get('what') or a.get('why') or '?'}"
        op = sh.last_op.get(ev.cpu)
        self.report("bad-walk", (ev.cpu, op.seq if op else -1, pfn, a["gen"]),
                    f"{who} followed the {_LEVEL.get(lvl, '?')} entry {val:#x} ({what}) as a table "
                    f"pointer: it used pfn {pfn:#x}, a {STATE_NAMES.get(sh.state.get(pfn, 0), '?')} "
                    f"page{folio}, as a page table",
                    [op, sh.last_alloc.get(pfn), ev], pfn=pfn, entry=val, entry_class=what)
