"""table-uaf (I2, I8): a software access to a page-table page through a
pointer taken when the page had another generation.

Every software load (``sw_read``), other access (``sw_touch``: the split PTL,
a rescan) and store (``entry_write``) names the generation the walker believes
the frame has; if the frame has since been freed or reused, that is a
use-after-free.  Reading a table that is detached but not yet freed is legal.
"""

from __future__ import annotations

from impls.machine.history import Event
from impls.machine.page_alloc import STATE_NAMES, TABLE

from .bad_walk import misclassified
from .base import Check, Handler
from .shadow import Shadow


class TableUafCheck(Check):
    def handlers(self) -> dict[str, Handler]:
        return {"sw_read": self.access, "sw_touch": self.access, "entry_write": self.access}

    def access(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        pfn, gen = a["pfn"], a["gen"]
        if sh.gen.get(pfn) == gen and sh.state.get(pfn) == TABLE:
            return
        if sh.gen.get(pfn, 0) == 0:
            return  # pfn 0 / never allocated: not a table access (garbage pointer)
        if misclassified(sh, pfn, gen) is not None:
            return  # not a use-after-free: the walker took a non-table for a table (bad-walk)
        now = STATE_NAMES.get(sh.state.get(pfn, 0), "?")
        reused = sh.gen.get(pfn) != gen
        what = {"sw_read": "read", "sw_touch": "touched", "entry_write": "wrote"}[ev.kind]
        who = a.get("who") or a.get("what") or a.get("why") or "?"
        op = sh.last_op.get(ev.cpu)
        self.report("table-uaf", (ev.cpu, op.seq if op else -1, pfn, gen),
                    f"CPU{ev.cpu} {who} {what} table pfn {pfn:#x} (generation {gen}) after it "
                    f"was freed{' and reused as a ' + now + ' page' if reused else ''}",
                    [op, sh.unhooks.get((pfn, gen)), sh.frees.get((pfn, gen)),
                     sh.last_alloc.get(pfn) if reused else None, ev],
                    pfn=pfn, who=who)
