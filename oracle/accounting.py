"""accounting (I11), plus kernel-bug and liveness.

During the run: a double free, a put on a free page, a table freed while it
still mapped pages (worked example B), a PMD table freed with PTE tables still
deposited for its huge PMDs.  At quiescence (the ``final`` event):
every table frame is part of a live tree or deposited for one of its huge
PMDs (an unhooked table that was never freed leaks), data pages' reference
counts equal their mappings (a PMD-mapped THP is one mapping, each PTE of a
split one another; plus one for a page the page cache holds), RSS and
nr_ptes/nr_pmds/nr_puds match the trees (a table shared by several mms is in
each of their trees), no RCU callback is pending, and the page tables the
oracle rebuilt from the history agree with the machine's.
"""

from __future__ import annotations

from impls.machine.history import Event
from impls.machine.page_alloc import DATA, IOMEM, TABLE
from impls.machine.pgtable import HPAGE_PMD_NR, entry_pfn, entry_present, index

from .base import Check, Handler
from .shadow import Shadow


class AccountingCheck(Check):
    def handlers(self) -> dict[str, Handler]:
        return {"double_free": self.double_free, "put_free_page": self.double_free,
                "free": self.free}

    def double_free(self, ev: Event, sh: Shadow) -> None:
        self.report("accounting", ("double", ev.a["pfn"], ev.a["gen"]),
                    f"pfn {ev.a['pfn']:#x} freed (or put) again after it was freed ({ev.a['via']})",
                    [sh.frees.get((ev.a["pfn"], ev.a["gen"])), ev], pfn=ev.a["pfn"])

    def free(self, ev: Event, sh: Shadow) -> None:
        a = ev.a
        if a.get("deposited"):
            self.report("accounting", ("deposited", a["pfn"], a["gen"]),
                        f"PMD table pfn {a['pfn']:#x} freed with {a['deposited']} PTE table(s) still "
                        "deposited for huge PMDs: they leak", [ev], pfn=a["pfn"])
        if a["state"] == TABLE and a["live"]:
            self.report("accounting", ("live", a["pfn"], a["gen"]),
                        f"table pfn {a['pfn']:#x} freed while it still held {a['live']} present "
                        "entries: what they map is leaked and unreachable",
                        [sh.unhooks.get((a["pfn"], a["gen"])), ev], pfn=a["pfn"])

    def finish(self, sh: Shadow, final: Event | None) -> None:
        if final is None:
            return
        f = final.a
        in_tree: set[tuple[int, int]] = set()
        mapped: dict[tuple[int, int], int] = {}
        # device frames (VM_PFNMAP) are mapped without counting in RSS
        iomem = {(fr[0], fr[1]) for fr in f["frames"] if fr[2] == IOMEM}
        # hugetlb folios: order-9 pages of a file's page cache (a THP is anonymous)
        hugetlb = {(fr[0], fr[1]) for fr in f["frames"] if fr[2] == DATA and len(fr) > 9 and fr[9]}
        shared_seen: set[tuple[int, int] | None] = set()
        for mm in f["mms"]:
            if mm["freed"]:
                continue
            tabs = mm["tables"]
            in_tree.update((p, g) for p, g, _ in tabs)
            counts = {1: 0, 2: 0, 3: 0}
            for _, _, lvl in tabs:
                if lvl in counts:
                    counts[lvl] += 1
            name = f"mm{mm['id']}"
            for lvl, field in ((1, "nr_ptes"), (2, "nr_pmds"), (3, "nr_puds")):
                if mm[field] != counts[lvl]:
                    self.report("accounting", (name, field),
                                f"{name}: {field} = {mm[field]} but its tree has {counts[lvl]} "
                                "such tables", [final])
            huge = mm.get("huge", ())
            # hugetlb pages (page-cache folios mapped by a huge PMD) are not in
            # RSS: hugetlb_count_add() counts them apart
            pages = sum(1 for _, pg in mm["mapping"] if pg not in iomem) + HPAGE_PMD_NR * sum(
                1 for _, pg in huge if pg not in hugetlb)
            if mm["rss"] != pages:
                self.report("accounting", (name, "rss"),
                            f"{name}: RSS = {mm['rss']} but {pages} pages are mapped",
                            [final])
            for va, (pfn, gen) in huge:
                # a PMD-mapped THP: one mapping, one reference; a hugetlb PMD
                # table shared by several mms maps its pages once (its entry)
                if (pfn, gen) in hugetlb:
                    entry = _pmd_entry(sh, mm["id"], va)
                    if entry in shared_seen:
                        continue
                    shared_seen.add(entry)
                mapped[(pfn, gen)] = mapped.get((pfn, gen), 0) + 1
                if sh.translate(mm["id"], va) != (pfn, gen):
                    self.report("accounting", ("shadow", mm["id"], va),
                                f"{name} va {va:#x}: the page tables rebuilt from the history "
                                f"disagree with the machine's (huge pfn {pfn:#x}): a simulator bug",
                                [final])
            for va, (pfn, gen) in mm["mapping"]:
                mapped[(pfn, gen)] = mapped.get((pfn, gen), 0) + 1
                if sh.translate(mm["id"], va) != (pfn, gen):
                    self.report("accounting", ("shadow", mm["id"], va),
                                f"{name} va {va:#x}: the page tables rebuilt from the history "
                                f"disagree with the machine's (pfn {pfn:#x}): a simulator bug",
                                [final])
        for pfn, gen, state, level, ref, mapcount, *rest in f["frames"]:
            cached = rest[3] if len(rest) > 3 else 0  # in a file's page cache: its reference
            if state == TABLE and (pfn, gen) not in in_tree:
                self.report("accounting", ("leak", pfn, gen),
                            f"{'pgd' if level == 4 else 'table'} pfn {pfn:#x} is neither in a live "
                            "page-table tree nor freed: leaked",
                            [sh.last_alloc.get(pfn), sh.unhooks.get((pfn, gen)), final], pfn=pfn)
            elif state == DATA:
                n = mapped.get((pfn, gen), 0)
                if mapcount != n or ref != n + cached:
                    self.report("accounting", ("page", pfn, gen),
                                f"page pfn {pfn:#x}: refcount {ref}, mapcount {mapcount}, but "
                                f"mapped {n} time(s)" + (" and in the page cache" if cached else "")
                                + (": leaked" if n == 0 and not cached else ""),
                                [sh.last_alloc.get(pfn), sh.pte_clears.get((pfn, gen)), final],
                                pfn=pfn)
        if f["rcu_pending"]:
            self.report("accounting", "rcu", f"{f['rcu_pending']} RCU callbacks never ran", [final])


def _pmd_entry(sh: Shadow, mm: int, va: int) -> tuple[int, int] | None:
    """(PMD table pfn, index) of ``va`` in ``mm``'s live tables: the entry
    that maps a huge page, which several mms reach when they share the table."""
    pfn = sh.pgd_of_mm.get(mm)
    for level in (4, 3):
        if pfn is None:
            return None
        val = sh.entries.get(pfn, {}).get(index(level, va), 0)
        if not entry_present(val):
            return None
        pfn = entry_pfn(val)
    return (pfn, index(2, va)) if pfn is not None else None


class KernelBugCheck(Check):
    def handlers(self) -> dict[str, Handler]:
        return {"bug": self.bug, "xen_pin_op_on_stale_frame": self.bug,
                "deadlock": self.liveness, "step_limit": self.liveness}

    def bug(self, ev: Event, sh: Shadow) -> None:
        what = ev.a.get("what") or f"hypercall on stale frame pfn {ev.a.get('pfn', 0):#x}"
        self.report("kernel-bug", what, what, [sh.last_op.get(ev.cpu), ev])

    def liveness(self, ev: Event, sh: Shadow) -> None:
        # a label is what the CPU's code yielded; None is a bare `yield` (a plug-in's, usually)
        where = ", ".join(f"CPU{c} at {label}" if label is not None else f"CPU{c} at a bare `yield` (no label)"
                          for c, label in ev.a["cpus"])
        what = "deadlock" if ev.kind == "deadlock" else f"step limit ({ev.a['steps'] - 1:,} steps)"
        self.report("liveness", ev.kind, f"{what} in the {ev.a['phase']} phase: {where or 'no CPU'}", [ev])
