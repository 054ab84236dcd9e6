"""stale-tlb (I3), stale-psc (I1), stale-secondary (I10): cached
translations that outlive what they point to.

Two ways to fail: an entry is *used* after its frame's generation ended
(``tlb_use``/``hw_read``/``spte_use`` with an old generation), or an entry
still *exists* when the frame is freed (the hardware may use it any time:
speculatively, from a lazy-TLB CPU, or a device at will).  Leaf entries on a
lazy-TLB CPU are exempt at free time: x86 never accesses user memory in lazy
mode and catches up through ``tlb_gen`` before it does.

Entries of an ASID that is not current on its CPU (a PCID or arm64 ASID the
CPU switched away from) are exempt at free time too: the hardware uses only
the current ASID's entries, and the kernel catches up before loading that
ASID again (x86: ``choose_new_asid()`` flushes when ``tlb_gen`` moved; arm64:
a TLBI by ASID reaches every CPU).  The existence check moves to the moment
they become usable again: an ASID loaded without a flush, or a lazy CPU
resuming its mm without one, while an entry of it still points to a freed
frame, is a violation ("a stale translation survived a switch away and
back").
"""

from __future__ import annotations

from impls.machine.history import Event
from impls.machine.page_alloc import DATA, LEAF_STATES, TABLE

from .bad_walk import misclassified
from .base import Check, Handler
from .shadow import IOMMU, Shadow, tlb_key_va

_LEVEL = {1: "PTE", 2: "PMD", 3: "PUD", 4: "PGD"}


def _agent(a: int) -> str:
    return "IOMMU" if a == IOMMU else f"CPU{a}"


class StaleCheck(Check):
    def handlers(self) -> dict[str, Handler]:
        return {"tlb_use": self.tlb_use, "hw_read": self.hw_read, "spte_use": self.spte_use,
                "free": self.free, "cr3_load": self.cr3_load, "switch_mm": self.switch_mm}

    def _revived(self, ev: Event, sh: Shadow, tlb: dict, psc: dict, how: str) -> None:
        """Entries that become usable again without a flush: each must point
        to a frame still in the generation it was filled for."""
        cpu = ev.cpu
        for vpn, (pfn, gen, _) in tlb.items():
            if not sh.live(pfn, gen):
                self.report("stale-tlb", (cpu, pfn, gen),
                            f"CPU{cpu} {how} with a TLB entry for va {vpn << 12:#x} to pfn {pfn:#x}, "
                            "freed since: a stale translation survived a switch away and back",
                            [sh.fills.get((cpu, pfn, gen)), sh.pte_clears.get((pfn, gen)),
                             sh.frees.get((pfn, gen)), ev], pfn=pfn, va=vpn << 12, agent=cpu)
        for pfn, gen, _ in psc.values():
            if not sh.is_table(pfn, gen):
                self.report("stale-psc", (cpu, pfn, gen),
                            f"CPU{cpu} {how} with a paging-structure-cache entry to table pfn "
                            f"{pfn:#x}, freed since: it survived a switch away and back",
                            [sh.fills.get((cpu, pfn, gen)), sh.unhooks.get((pfn, gen)),
                             sh.frees.get((pfn, gen)), ev], pfn=pfn, agent=cpu)

    def cr3_load(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        if a.get("flush", True) or ev.cpu < 0:
            return
        asid = a.get("asid", 0)
        if sh.is_current(ev.cpu, asid):
            return
        ctx = sh.ctx_store.get((ev.cpu, asid))
        if ctx is not None:
            self._revived(ev, sh, ctx[0], ctx[1], f"loaded ASID {asid} without a flush")

    def switch_mm(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        if a["lazy"] or a.get("flush", True) or not sh.lazy.get(ev.cpu):
            return
        # a lazy CPU resuming its mm without a flush (tlb_gen unchanged): its
        # leaf entries, exempt while it was lazy, are usable again
        self._revived(ev, sh, sh.tlb.get(ev.cpu, {}), {}, "left lazy TLB mode")

    def tlb_use(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        pfn, gen = a["pfn"], a["gen"]
        if sh.live(pfn, gen) and sh.state.get(pfn) in LEAF_STATES:
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
        if misclassified(sh, pfn, gen) is not None:
            return  # not stale: a walk into a frame a live entry points to (bad-walk)
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
        if state in LEAF_STATES:  # a page, or a device frame a driver lets go
            for agent, tlb in sh.tlb.items():
                for key, (p, g, _) in tlb.items():
                    if p == pfn and g == gen:
                        va = tlb_key_va(key)
                        if agent == IOMMU:
                            check = "stale-secondary"
                        elif sh.lazy.get(agent):
                            continue
                        else:
                            check = "stale-tlb"
                        size = "" if key >= 0 else " (2 MiB)"
                        self.report(check, (agent, pfn, gen),
                                    f"page pfn {pfn:#x} freed while {_agent(agent)} still had a "
                                    f"TLB entry{size} for va {va:#x}",
                                    [sh.fills.get((agent, pfn, gen)), sh.pte_clears.get((pfn, gen)),
                                     ev], pfn=pfn, va=va, agent=agent)
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
