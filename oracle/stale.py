"""stale-tlb (I3), stale-psc (I1), stale-secondary (I10): cached
translations that outlive what they point to.

Two ways to fail: an entry is *used* after its frame's generation ended
(``tlb_use``/``hw_read``/``spte_use`` with an old generation), or an entry
still *exists* when the frame is freed (the hardware may use it any time:
speculatively, from a lazy-TLB CPU, or a device at will).  Leaf entries on a
lazy-TLB CPU are exempt at free time: x86 never accesses user memory in lazy
mode and catches up through ``tlb_gen`` before it does.
"""

from __future__ import annotations

from impls.machine.history import Event
from impls.machine.page_alloc import DATA, TABLE

from .base import Check, Handler
from .shadow import IOMMU, Shadow

_LEVEL = {1: "PTE", 2: "PMD", 3: "PUD", 4: "PGD"}


def _agent(a: int) -> str:
    return "IOMMU" if a == IOMMU else f"CPU{a}"


class StaleCheck(Check):
    def handlers(self) -> dict[str, Handler]:
        return {"tlb_use": self.tlb_use, "hw_read": self.hw_read, "spte_use": self.spte_use,
                "free": self.free}

    def tlb_use(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        pfn, gen = a["pfn"], a["gen"]
        if sh.live(pfn, gen) and sh.state.get(pfn) == DATA:
            return
        check = "stale-secondary" if ev.cpu == IOMMU else "stale-tlb"
        self.report(check, (ev.cpu, pfn, gen),
                    f"{_agent(ev.cpu)} used a stale TLB entry va {a['va']:#x} -> pfn {pfn:#x} "
                    f"(generation {gen}, freed)",
                    [sh.fills.get((ev.cpu, pfn, gen)), sh.pte_clears.get((pfn, gen)),
                     sh.frees.get((pfn, gen)), sh.last_alloc.get(pfn), ev],
                    pfn=pfn, va=a["va"], agent=ev.cpu)

    def hw_read(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        pfn, gen = a["pfn"], a["gen"]
        if sh.is_table(pfn, gen):
            return
        check = "stale-secondary" if ev.cpu == IOMMU else "stale-psc"
        lvl = _LEVEL.get(a["level"], "?")
        self.report(check, (ev.cpu, pfn, gen),
                    f"{_agent(ev.cpu)} hardware walk ({a['via']}) of va {a['va']:#x} read freed "
                    f"{lvl} table pfn {pfn:#x} through a cached pointer",
                    [sh.fills.get((ev.cpu, pfn, gen)), sh.unhooks.get((pfn, gen)),
                     sh.frees.get((pfn, gen)), sh.last_alloc.get(pfn), ev],
                    pfn=pfn, va=a["va"], agent=ev.cpu)

    def spte_use(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        pfn, gen = a["pfn"], a["gen"]
        if sh.live(pfn, gen) and sh.state.get(pfn) == DATA:
            return
        self.report("stale-secondary", ("kvm", pfn, gen),
                    f"KVM guest access to gfn {a['gfn']:#x} used an spte to freed pfn {pfn:#x}",
                    [sh.pte_clears.get((pfn, gen)), sh.frees.get((pfn, gen)), ev], pfn=pfn)

    def free(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        pfn, gen, state = a["pfn"], a["gen"], a["state"]
        if state == DATA:
            for agent, tlb in sh.tlb.items():
                for vpn, (p, g, _) in tlb.items():
                    if p == pfn and g == gen:
                        if agent == IOMMU:
                            check = "stale-secondary"
                        elif sh.lazy.get(agent):
                            continue
                        else:
                            check = "stale-tlb"
                        self.report(check, (agent, pfn, gen),
                                    f"page pfn {pfn:#x} freed while {_agent(agent)} still had a "
                                    f"TLB entry for va {vpn << 12:#x}",
                                    [sh.fills.get((agent, pfn, gen)), sh.pte_clears.get((pfn, gen)),
                                     ev], pfn=pfn, va=vpn << 12, agent=agent)
            for sptes in sh.sptes.values():
                for gfn, (p, g, _) in sptes.items():
                    if p == pfn and g == gen:
                        self.report("stale-secondary", ("kvm", pfn, gen),
                                    f"page pfn {pfn:#x} freed while KVM still mapped gfn "
                                    f"{gfn << 12:#x} to it",
                                    [sh.pte_clears.get((pfn, gen)), ev], pfn=pfn)
        elif state == TABLE:
            lvl = _LEVEL.get(a["level"], "?")
            for agent, psc in sh.psc.items():
                for p, g, _ in psc.values():
                    if p == pfn and g == gen:
                        check = "stale-secondary" if agent == IOMMU else "stale-psc"
                        lazy = " (lazy TLB)" if sh.lazy.get(agent) else ""
                        self.report(check, (agent, pfn, gen),
                                    f"{lvl} table pfn {pfn:#x} freed while {_agent(agent)}{lazy} "
                                    "still cached a pointer to it in its paging-structure cache",
                                    [sh.fills.get((agent, pfn, gen)), sh.unhooks.get((pfn, gen)), ev],
                                    pfn=pfn, agent=agent)
            if a["level"] == 4:
                for cpu, pgd in sh.hw_pgd.items():
                    if pgd == pfn:
                        self.report("stale-psc", (cpu, pfn, gen),
                                    f"pgd pfn {pfn:#x} freed while CPU{cpu}'s CR3 still held it",
                                    [ev], pfn=pfn, agent=cpu)
