"""leaked-gup-pin (I6) and leaked-xen-pin (I7).

GUP: a speculative reference is legitimate only if, when it was taken, the
page was the one mapped at the address; GUP-fast may return it only then, and
must drop every reference it does not return.  Xen: a frame may only go back
to the allocator unpinned, writable and without ``PG_pinned``; an unpin of a
pgd still in some vCPU's effective CR3 fails.
"""

from __future__ import annotations

from impls.machine.history import Event
from impls.machine.page_alloc import DATA

from .base import Check, Handler
from .shadow import Shadow


class GupPinCheck(Check):
    def __init__(self, strategy: str) -> None:
        super().__init__(strategy)
        self.grabs: dict[int, tuple[Event, bool]] = {}
        self.returned: dict[int, Event] = {}

    def handlers(self) -> dict[str, Handler]:
        return {"gup_grab": self.grab, "gup_put": self.put, "gup_return": self.ret,
                "gup_unpin": self.unpin}

    def grab(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        mapped = sh.translate(a["mm"], a["addr"])
        ok = (mapped == (a["pfn"], a["gen"]) and sh.state.get(a["pfn"]) == DATA)
        self.grabs[ev.cpu] = (ev, ok)

    def put(self, ev: Event, sh: Shadow) -> None:
        self.grabs.pop(ev.cpu, None)

    def ret(self, ev: Event, sh: Shadow) -> None:
        grab = self.grabs.pop(ev.cpu, None)
        self.returned[ev.cpu] = ev
        if grab is not None and not grab[1]:
            g = grab[0]
            self.report("leaked-gup-pin", (ev.cpu, g.seq),
                        f"GUP-fast on CPU{ev.cpu} returned pfn {g.pfn:#x} for va {g.addr:#x}, "
                        "but that page was not mapped there when the reference was taken",
                        [sh.last_op.get(ev.cpu), sh.pte_clears.get((g.pfn, g.gen)),
                         sh.frees.get((g.pfn, g.gen)), g, ev], pfn=g.pfn)

    def unpin(self, ev: Event, sh: Shadow) -> None:
        self.returned.pop(ev.cpu, None)

    def finish(self, sh: Shadow, final: Event | None) -> None:
        if final is None:
            return  # the run did not finish its operations
        for cpu, (g, _) in self.grabs.items():
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
