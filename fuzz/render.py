"""Race diagrams: one run's history drawn the way kernel commit messages draw races.

A :class:`Story` reads a judged run (``fuzz.run.Run``) and picks the events that tell
what happened: operation boundaries, IRQ-off sections that other CPUs run through,
lockless walkers mapping and reading a table, unhooks, tlb flushes with their mechanism
(IPI, hypercall, INVLPGB, local only) and the CPUs they reached, IPIs sent and taken,
multicalls queued and issued, grace periods and callbacks, frees and reuse of the frames
involved, and every witness event of the verdict.  Each event gets a lane (a CPU, the RCU
agent, the IOMMU or the hypervisor) and a one-line description in kernel vocabulary.

:func:`text_diagram` lays the story out in CPU columns (at most ``width`` columns);
:func:`html_timeline` writes a standalone HTML page of every event, one lane per CPU plus
RCU, IPI/hypercall and table-life lanes, with the story highlighted.

Event numbers (``#135``) are history sequence numbers, the ones ``shootdown run`` prints
in a witness.
"""

from __future__ import annotations

import html
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from impls.machine.history import Event
from impls.machine.program import Program

from .run import Run

# -- vocabulary ----------------------------------------------------------------------

FREE, TABLE, DATA = 0, 1, 2  # impls.machine.page_alloc frame states, as events carry them
RCU_AGENT, HW_AGENT, IOMMU_AGENT = -1, -2, -3
LEVEL_TABLE = {1: "PT", 2: "PMD table", 3: "PUD table", 4: "PGD"}
ENTRY_NAME = {1: "pte", 2: "pmd", 3: "pud", 4: "pgd"}
PAGE_SHIFT = 12
_PRESENT = 0x1

#: Xen hypercalls that only keep a table's pin/alias state (noise for the diagram; the
#: free event says whether the frame was still pinned)
_XEN_NOISE_OPS = frozenset({"MMU_UPDATE", "update_va_mapping(RO)", "update_va_mapping(RW)",
                            "update_va_mapping(RO)+PIN", "UNPIN+update_va_mapping(RW)", "pin"})
#: kinds never drawn unless they are witness events
_QUIET = frozenset({
    "boot", "phase", "vma_add", "vma_remove", "context_switch", "tlb_gather", "tlb_finish",
    "tlb_batch_page", "table_batch", "fault_done", "populated", "exit_group", "exit_mmap_done",
    "hw_read", "psc_fill", "tlb_fill", "tlb_use", "sw_touch", "xen_pin", "xen_unpin", "mmdrop",
    "final", "notifier_start", "notifier_end", "gup_unpin",
})
_FLUSH_WHY = re.compile(r"\b(xen flush|invlpgb|flush) (\d+)$")
_MERGES = {("op_begin", "op_end"), ("flush_begin", "flush_end"), ("ipi_recv", "ipi_done"),
           ("gp_start", "gp_end"), ("zap", "zap"), ("sync_rcu_begin", "sync_rcu_end")}

Lane = int | str | None  # a CPU number, "RCU", "IOMMU", "hw"; None: spans every lane


def lane_name(lane: Lane) -> str:
    return f"CPU{lane}" if isinstance(lane, int) else (lane or "")


def _lane_order(lane: Lane) -> tuple[int, int]:
    if isinstance(lane, int):
        return (0, lane)
    return (1, ["hw", "IOMMU", "RCU"].index(lane) if lane in ("hw", "IOMMU", "RCU") else 9)


def _rng(start: int, end: int) -> str:
    return "all" if end == -1 or (start == 0 and end < 0) else f"{start:#x}-{end:#x}"


def _cpus(cpus: Sequence[int]) -> str:
    return ",".join(f"CPU{c}" for c in cpus) or "no CPU"


# -- the story -----------------------------------------------------------------------

@dataclass
class Row:
    """One line of the diagram: one event, or a few merged (``op_begin`` + ``op_end``
    with nothing in between, a run of PTE clears...)."""

    seqs: list[int]
    lane: Lane
    text: str
    tag: str = ""
    key: Any = None
    marks: list[str] = field(default_factory=list)  #: verdict words of violations it ends
    witness: bool = False
    setup: bool = False

    @property
    def seq(self) -> int:
        return self.seqs[0]


@dataclass
class _Flush:
    """What one tlb flush did, read ahead from the history: its mechanism and the
    CPUs it actually reached (a TLB invalidation, or the flush IPI handled there)."""

    id: int
    cpu: int
    mask: tuple[int, ...] = ()
    ipi_targets: list[int] = field(default_factory=list)
    hypercall: bool = False
    invlpgb: bool = False
    reached: set[int] = field(default_factory=set)


class Story:
    """The events of one run that tell its story, described and laid in lanes.

    ``rows``: the drawn rows in history order (merged); ``text``: a description of
    every event by sequence number (story or not) and ``lane_of`` its lane;
    ``story``: the sequence numbers of the drawn events; ``tables``: the page-table
    frames the story is about (witness tables, walker-mapped tables, or the tables
    unhooked in the concurrent part of a clean run)."""

    def __init__(self, program: Program, run: Run, title: str = "", path: str = "",
                 description: str = "", expectation: str = "", others: str = "") -> None:
        self.program = program
        self.run = run
        self.history = run.history
        self.verdict = run.verdict
        self.events: list[Event] = list(run.history.events)
        self.title = title
        self.path = path
        self.description = description
        self.expectation = expectation
        self.others = others
        self.strategy = run.verdict.strategy or run.history.strategy
        self.platform = run.verdict.platform or run.history.platform
        self.text: dict[int, str] = {}
        self.lane_of: dict[int, Lane] = {}
        self.story: set[int] = set()
        self.rows: list[Row] = []
        self.witness: set[int] = {e.seq for v in self.verdict.violations for e in v.witness}
        self.marks: dict[int, list[str]] = {}
        for v in self.verdict.violations:
            if v.witness:
                last = max(e.seq for e in v.witness)
                words = self.marks.setdefault(last, [])
                if v.verdict_word not in words:
                    words.append(v.verdict_word)
        self.concurrent_from = next((e.seq for e in self.events if e.kind == "phase"),
                                    next((e.seq for e in self.events if e.kind == "op_begin"), 0))
        self.flushes = self._scan_flushes()
        self.tables, self.focus, self.pages = self._involved()
        self._describe_all()
        self._merge()

    # -- pre-passes ---------------------------------------------------------------

    def _scan_flushes(self) -> dict[int, _Flush]:
        flushes: dict[int, _Flush] = {}
        open_by_cpu: dict[int, _Flush] = {}
        ipi_flush: dict[Any, _Flush] = {}
        for e in self.events:
            a = e.a
            if e.kind == "flush_begin":
                f = _Flush(a.get("id", e.seq), e.cpu, mask=tuple(a.get("mask", ())))
                flushes[f.id] = f
                open_by_cpu[e.cpu] = f
            elif e.kind == "flush_end":
                open_by_cpu.pop(e.cpu, None)
            elif e.cpu in open_by_cpu:
                f = open_by_cpu[e.cpu]
                if e.kind == "ipi_send":
                    f.ipi_targets += [t for t in a.get("targets", ()) if t not in f.ipi_targets]
                elif e.kind == "xen_hypercall":
                    f.hypercall = True
                elif e.kind == "invlpgb":
                    f.invlpgb = True
            if e.kind == "ipi_send" and e.cpu in open_by_cpu:
                ipi_flush[a.get("id")] = open_by_cpu[e.cpu]
            elif e.kind == "ipi_done" and a.get("id") in ipi_flush:
                ipi_flush[a["id"]].reached.add(e.cpu)  # flush_tlb_func ran there
            if e.kind in ("tlb_inv", "tlb_inv_all", "tlb_inv_leaf_all"):
                m = _FLUSH_WHY.search(str(a.get("why", "")))
                if m and int(m.group(2)) in flushes:
                    flushes[int(m.group(2))].reached.add(e.cpu)
            elif e.kind == "invlpgb_land" and a.get("id") in flushes:
                flushes[a["id"]].reached.add(e.cpu)
        return flushes

    def _involved(self) -> tuple[list[int], set[int], set[int]]:
        """The table frames to give a life lane (witness tables, walker-mapped tables,
        or in a clean run the tables unhooked in the concurrent part); the subset whose
        allocation and writes are worth drawing (witness and walker-mapped tables);
        the data pages the witnesses and GUP name."""
        tables: list[int] = []
        pages: set[int] = set()

        def add(pfn: Any) -> None:
            if isinstance(pfn, int) and pfn > 0 and pfn not in tables:
                tables.append(pfn)

        level: dict[int, int] = {}
        unhooked_children: list[int] = []
        for e in self.events:
            a = e.a
            if e.kind == "alloc":
                level[a["pfn"]] = a.get("level", 0) if a.get("state") == TABLE else 0
            if e.kind == "entry_write" and e.seq >= self.concurrent_from:
                child = self._child(a.get("old", 0), level.get(a.get("pfn"), 0))
                if child is not None:
                    unhooked_children.append(child)
            if e.kind == "walker_map":
                add(a.get("pfn"))
        for v in self.verdict.violations:
            for e in v.witness:
                a = e.a
                if e.kind == "entry_write":
                    child = self._child(a.get("old", 0), self._level_before(a.get("pfn"), e.seq))
                    add(child if child is not None else a.get("pfn"))
                elif e.kind in ("alloc", "free"):
                    if a.get("state") == TABLE:
                        add(a.get("pfn"))
                    else:
                        pages.add(a.get("pfn"))
                elif e.kind in ("sw_read", "walker_map", "psc_fill", "xen_unpin_failed", "sw_touch",
                                "cr3_load", "table_batch", "xen_current_cr3", "xen_cr3"):
                    add(a.get("pfn"))
                elif isinstance(a.get("pfn"), int):
                    pages.add(a["pfn"])
        focus = set(tables)
        if not self.verdict.violations:
            for c in unhooked_children:
                add(c)
        for e in self.events:
            if e.kind in ("gup_grab", "gup_return"):
                pages.add(e.a.get("pfn"))
        return tables[:8], focus, pages

    def _level_before(self, pfn: Any, seq: int) -> int:
        lv = 0
        for e in self.events[:seq]:
            if e.kind == "alloc" and e.a.get("pfn") == pfn:
                lv = e.a.get("level", 0) if e.a.get("state") == TABLE else 0
        return lv

    @staticmethod
    def _child(entry: Any, level: int) -> int | None:
        """The table an upper-level entry points to (MODEL: no huge leaves)."""
        if isinstance(entry, int) and level >= 2 and entry & _PRESENT:
            return entry >> PAGE_SHIFT
        return None

    # -- describing ---------------------------------------------------------------

    def _thing(self, pfn: int, state: int | None = None, level: int | None = None) -> str:
        if state is None:
            state, level = self._frame_state.get(pfn, (None, None, 0))[1:]
        if state == TABLE:
            return f"{LEVEL_TABLE.get(level or 0, 'table')} pfn {pfn:#x}"
        if state == DATA:
            return f"page pfn {pfn:#x}"
        return f"frame pfn {pfn:#x}"

    def _describe_all(self) -> None:
        #: pfn -> (gen, state, level) as of the event being described
        self._frame_state: dict[int, tuple[int, int, int]] = {}
        freed: set[int] = set()
        irq_depth: dict[int, int] = {}
        irq_stack: dict[int, list[int]] = {}
        irq_pairs: list[tuple[int, int | None, int]] = []  # (off seq, on seq, cpu)
        walker: dict[int, tuple[str, int, int]] = {}  # cpu -> (who, pfn, gen)
        ipi_open: dict[int, int] = {}  # cpu -> seq of the ipi_recv being handled
        mc_pending: set[int] = set()
        cur_op: dict[int, int] = {}
        hw_owner: int | None = None
        last_cr3: dict[int, int] = {}
        rows: dict[int, Row] = {}
        show: set[int] = set()
        flush_cpu_open: dict[int, _Flush] = {}

        for e in self.events:
            a = e.a
            k = e.kind
            seq = e.seq
            setup = seq < self.concurrent_from
            lane: Lane = e.cpu
            prefix = ""
            if e.cpu == RCU_AGENT:
                lane = "RCU"
            elif e.cpu == IOMMU_AGENT:
                lane = "IOMMU"
            elif e.cpu == HW_AGENT:
                lane = hw_owner if hw_owner is not None else "hw"
                if hw_owner is not None:
                    prefix = "Xen: " if k.startswith("xen") else "hw: "
            if e.cpu >= 0:
                hw_owner = e.cpu
            elif e.cpu != HW_AGENT:
                hw_owner = None

            text = ""
            tag = ""
            key: Any = None
            visible = not setup  # setup events: only op boundaries and witnesses
            pfn = a.get("pfn")

            if k == "op_begin":
                cur_op[e.cpu] = a.get("op")
                text = a.get("desc") or a.get("name", "op")
                if setup:
                    text = "[setup] " + text
                tag, key, visible = "op_begin", (e.cpu, a.get("op")), True
            elif k == "op_end":
                res = str(a.get("result", "") or "")
                text = f"{a.get('name', 'op')} -> {res}" if res else f"{a.get('name', 'op')} returns"
                tag, key, visible = "op_end", (e.cpu, a.get("op")), True
                cur_op.pop(e.cpu, None)
            elif k == "irq_off":
                text = "local_irq_disable()"
                irq_depth[e.cpu] = irq_depth.get(e.cpu, 0) + 1
                irq_stack.setdefault(e.cpu, []).append(seq)
                visible = False  # decided below: drawn only if other CPUs run meanwhile
            elif k == "irq_on":
                text = "local_irq_enable()"
                irq_depth[e.cpu] = max(0, irq_depth.get(e.cpu, 0) - 1)
                st = irq_stack.get(e.cpu)
                if st:
                    irq_pairs.append((st.pop(), seq, e.cpu))
                visible = False
            elif k == "walker_map":
                who = a.get("who", "walker")
                walker[e.cpu] = (who, pfn, a.get("gen", 0))
                if who == "gup_fast":
                    text = f"pmd = *pmdp  // -> PT pfn {pfn:#x}"
                else:
                    text = f"{who}: pte_offset_map() -> PT pfn {pfn:#x} (rcu_read_lock)"
            elif k == "walker_unmap":
                walker.pop(e.cpu, None)
                text = f"pte_unmap(PT pfn {pfn:#x})"
            elif k == "sw_read":
                who = a.get("who", "")
                w = walker.get(e.cpu)
                mine = w is not None and w[0] == who and w[1] == pfn
                gen, state, level = self._frame_state.get(pfn, (a.get("gen"), TABLE, 1))
                tname = LEVEL_TABLE.get(level, "table") if state == TABLE else "table"
                if mine:
                    text = f"pte = PT[{a.get('idx')}] = {a.get('val', 0):#x}"
                else:
                    text = f"{who}: {ENTRY_NAME.get(level, 'entry')} = {tname}[{a.get('idx')}]"
                if state == FREE:
                    text += "  // freed memory"
                elif gen != a.get("gen"):
                    text += f"  // freed memory, reused as {self._thing(pfn, state, level).split(' pfn')[0]} gen {gen}"
                visible = mine and not setup
            elif k == "entry_write":
                gen, state, level = self._frame_state.get(pfn, (a.get("gen"), TABLE, 0))
                old, new = a.get("old", 0), a.get("new", 0)
                fn = str(a.get("why", "write")).split(" ")[0]
                ent = ENTRY_NAME.get(level, "entry")
                child_old = self._child(old, level)
                child_new = self._child(new, level)
                if child_old is not None and child_new != child_old:
                    text = f"{fn}({ent}p)  // unhook {LEVEL_TABLE.get(level - 1, 'table')} pfn {child_old:#x}"
                elif child_new is not None:
                    text = f"{ent}_populate(): hook {LEVEL_TABLE.get(level - 1, 'table')} pfn {child_new:#x}"
                    cg = self._frame_state.get(child_new, (1,))[0]
                    visible = visible and (child_new in self.focus or cg > 1)
                elif level == 1 and old & _PRESENT and not new & _PRESENT:
                    text = f"zap: clear pte -> page pfn {old >> PAGE_SHIFT:#x}"
                    tag, key = "zap", (e.cpu, cur_op.get(e.cpu), [old >> PAGE_SHIFT])
                elif level == 1 and new & _PRESENT:
                    text = (f"{fn}(PT pfn {pfn:#x}[{a.get('idx')}]) -> page pfn {new >> PAGE_SHIFT:#x}")
                    visible = visible and pfn in self.focus
                else:
                    text = f"{fn}: {self._thing(pfn)}[{a.get('idx')}] {old:#x} -> {new:#x}"
                    visible = visible and pfn in self.focus
            elif k == "alloc":
                state, level = a.get("state"), a.get("level", 0)
                text = f"alloc {self._thing(pfn, state, level)}, gen {a.get('gen')}"
                reuse = pfn in freed
                if reuse:
                    text += " (reused frame)"
                visible = visible and (reuse or pfn in self.focus or pfn in self.pages)
                self._frame_state[pfn] = (a.get("gen", 0), state, level)
            elif k == "free":
                state, level = a.get("state"), a.get("level", 0)
                text = f"free {self._thing(pfn, state, level)}"
                if a.get("via"):
                    text += f" ({a['via']})"
                notes = []
                if a.get("xen_pinned") or a.get("pinned"):
                    notes.append("still pinned by Xen" if a.get("xen_pinned") else "still PG_pinned")
                if a.get("ro"):
                    notes.append("read-only")
                if a.get("live"):
                    notes.append(f"still maps {a['live']} page(s)")
                if notes:
                    text += "  // " + ", ".join(notes)
                freed.add(pfn)
                g = self._frame_state.get(pfn, (a.get("gen", 0), state, level))[0]
                self._frame_state[pfn] = (g, FREE, level)
            elif k in ("double_free", "put_free_page"):
                text = f"{k.replace('_', ' ')}: {self._thing(pfn)} ({a.get('via', '')})"
            elif k == "flush_begin":
                f = self.flushes.get(a.get("id"))
                flush_cpu_open[e.cpu] = f
                text = self._flush_text(f, a)
                tag, key = "flush_begin", a.get("id")
            elif k == "flush_end":
                flush_cpu_open.pop(e.cpu, None)
                text = "flush done"
                tag, key = "flush_end", a.get("id")
            elif k in ("tlb_inv", "tlb_inv_all", "tlb_inv_leaf_all"):
                why = str(a.get("why", ""))
                what = ("TLB+PSC" if a.get("psc") else "TLB") if k == "tlb_inv" else (
                    "whole TLB+PSC" if k == "tlb_inv_all" else "leaf TLB")
                m = _FLUSH_WHY.search(why)
                f = self.flushes.get(int(m.group(2))) if m else None
                visible = visible and f is not None and f.cpu != e.cpu
                if e.cpu in ipi_open and visible:
                    recv = rows[ipi_open[e.cpu]]
                    recv.text += f": {what} flushed"
                    self.text[recv.seq] = recv.text
                    visible = False
                    text = f"{what} flushed ({why})"
                elif m and m.group(1) in ("xen flush", "invlpgb"):
                    src = "Xen" if m.group(1) == "xen flush" else "INVLPGB"
                    text = f"{what} flushed by {src}, no interrupt"
                    if irq_depth.get(e.cpu, 0):
                        text += " (IRQs off here)"
                else:
                    text = f"{what} flushed ({why})"
            elif k == "invlpgb_land":
                text = f"INVLPGB {a.get('id')} lands: {a.get('effect', '')}"
            elif k == "ipi_send":
                text = f"send IPI {a.get('what')} -> {_cpus(a.get('targets', ()))}"
            elif k == "ipi_recv":
                text = f"take IPI {a.get('what')} from CPU{a.get('src')}"
                tag, key = "ipi_recv", (e.cpu, a.get("id"))
                ipi_open[e.cpu] = seq
            elif k == "ipi_done":
                ipi_open.pop(e.cpu, None)
                text = f"IPI {a.get('what')} done"
                tag, key = "ipi_done", (e.cpu, a.get("id"))
            elif k == "call_rcu":
                text = f"call_rcu({a.get('what')})  // after GP {a.get('gp')}"
            elif k == "gp_start":
                readers = a.get("readers", ())
                text = f"grace period {a.get('gp')} starts" + (
                    f", waits for {_cpus(readers)}" if readers else " (no reader)")
                tag, key = "gp_start", a.get("gp")
            elif k == "gp_end":
                text = f"grace period {a.get('gp')} ends"
                tag, key = "gp_end", a.get("gp")
            elif k == "rcu_cb":
                text = f"{a.get('what')}() runs"
            elif k == "sync_rcu_begin":
                text = f"synchronize_rcu() waits for GP {a.get('gp')}"
                tag, key = "sync_rcu_begin", (e.cpu, a.get("gp"))
            elif k == "sync_rcu_end":
                text = "synchronize_rcu() returns"
                tag, key = "sync_rcu_end", (e.cpu, a.get("gp"))
            elif k == "xen_hypercall":
                raw_ops = [str(x) for x in a.get("ops", ())]
                ops = [x.replace("+", " + ") for x in raw_ops]
                if e.cpu in mc_pending:
                    mc_pending.discard(e.cpu)
                    text = f"xen_mc_flush(): issue {', '.join(ops)}"
                else:
                    text = f"hypercall {', '.join(ops)}"
                    f = flush_cpu_open.get(e.cpu)
                    noise = all(o in _XEN_NOISE_OPS for o in raw_ops)
                    visible = visible and not noise and f is None
            elif k == "xen_mc_deferred":
                mc_pending.add(e.cpu)
                text = f"queue multicall {', '.join(str(x) for x in a.get('ops', ()))} (lazy {a.get('lazy')})"
            elif k == "xen_cr3":
                text = f"xen_cr3 = {self._pgd(pfn)}  (logical)"
            elif k == "xen_current_cr3":
                text = f"xen_current_cr3 = {self._pgd(pfn)}  (Xen's cr3)"
                visible = visible and last_cr3.get(e.cpu) != seq - 1
            elif k == "cr3_load":
                last_cr3[e.cpu] = seq
                mm = a.get("mm")
                text = f"load cr3 = {self._pgd(pfn)} ({'init_mm' if mm == -1 else f'mm{mm}'})"
            elif k == "switch_mm":
                why = str(a.get("why", ""))
                if a.get("lazy"):
                    text = f"enter_lazy_tlb(): mm{a.get('mm')} stays loaded"
                elif why.startswith("leave_mm"):
                    caller = why.partition(" (")[2].rstrip(")")
                    text = "leave_mm()" + (f" in {caller}" if caller else "") + ": switch to init_mm"
                else:
                    mm = a.get("mm")
                    text = f"switch_mm({'init_mm' if mm == -1 else f'mm{mm}'})"
            elif k == "xen_unpin_failed":
                text = (f"{prefix or 'Xen: '}unpin of {self._pgd(pfn)} refused: still cr3 of "
                        f"{_cpus(a.get('cpus', ()))}")
                prefix = ""
                visible = True
            elif k == "xen_pin_op_on_stale_frame":
                text = f"pin op {a.get('what')} on stale {self._thing(pfn)}"
                visible = True
            elif k == "invlpgb":
                text = f"INVLPGB {_rng(a.get('start', 0), a.get('end', -1))}"
            elif k == "tlbsync":
                text = "TLBSYNC: wait for the INVLPGBs"
            elif k == "gup_grab":
                text = f"try_grab_folio_fast(page pfn {pfn:#x})"
            elif k == "gup_grab_failed":
                text = f"try_grab_folio_fast(page pfn {pfn:#x}) fails"
            elif k == "gup_put":
                text = f"pmd/pte changed: put page pfn {pfn:#x}"
            elif k == "gup_return":
                text = f"return pinned page pfn {pfn:#x}"
            elif k == "alloc_fail":
                text = f"{a.get('what')} allocation fails (GFP_NOWAIT)"
            elif k == "note":
                text = str(a.get("text", ""))
            elif k == "pt_reclaim":
                text = f"pt_reclaim {a.get('path')} path: {a.get('result')}"
                if isinstance(pfn, int):
                    text += f" PT pfn {pfn:#x}"
            elif k == "need_resched":
                text = f"need_resched() in {a.get('where')}: drop PTL, resched"
            elif k == "pmd_changed":
                text = f"{a.get('who')}: pmd changed, retry"
            elif k == "notifier_skipped":
                text = f"mmu_notifier {a.get('event')} SKIPPED"
            elif k == "notifier_start":
                text = f"mmu_notifier_invalidate_range_start({_rng(a.get('start', 0), a.get('end', -1))})"
                visible = visible and (self.program.env.kvm or self.program.env.iommu)
            elif k == "notifier_end":
                text = "mmu_notifier_invalidate_range_end()"
                visible = visible and (self.program.env.kvm or self.program.env.iommu)
            elif k == "spte_install":
                text = f"KVM: map gfn {a.get('gfn', 0):#x} -> page pfn {pfn:#x}"
            elif k == "spte_zap":
                text = f"KVM: zap gfn {a.get('gfn', 0):#x}"
            elif k == "spte_use":
                text = f"KVM guest access gfn {a.get('gfn', 0):#x} -> page pfn {pfn:#x} (gen {a.get('gen')})"
            elif k == "iommu_fault":
                text = f"IOMMU fault at {a.get('addr', 0):#x}"
            elif k == "tlb_inv_span":
                text = f"IOTLB+PSC invalidated {_rng(a.get('start', 0), a.get('end', -1))}"
            elif k == "tlb_use":
                who = "DMA" if a.get("via") == "iommu" else "access"
                text = f"{who} through TLB: va {a.get('va', 0):#x} -> page pfn {pfn:#x} (gen {a.get('gen')})"
            elif k == "tlb_fill":
                text = f"TLB caches va {a.get('va', 0):#x} -> page pfn {pfn:#x}"
            elif k == "psc_fill":
                text = f"PSC caches {self._thing(pfn, TABLE, a.get('level'))} (va {a.get('prefix', 0):#x})"
            elif k == "hw_read":
                text = f"hardware walk reads {self._thing(pfn)}[{a.get('idx')}]"
            elif k == "sw_touch":
                text = f"{a.get('what')}: touches {self._thing(pfn)}"
            elif k == "bug":
                text = f"BUG: {a.get('what')}"
                visible = True
            elif k in ("deadlock", "step_limit"):
                text = f"{k.replace('_', ' ').upper()}: " + " ".join(f"{x}={v}" for x, v in a.items())
                lane, visible, prefix = None, True, ""
            elif k == "final":
                text = "at quiescence: final state checked"
                lane, prefix = None, ""
            elif k == "cpumask_clear":
                text = f"cpumask_clear_cpu(mm{a.get('mm')}): {a.get('why', '')}"
            elif k == "thread_killed":
                text = f"thread of mm{a.get('mm')} killed"
            else:
                parts = e.brief().split(" ", 2)  # an event kind this module does not know yet
                text = parts[2] if len(parts) > 2 else k

            if k in _QUIET and k not in ("notifier_start", "notifier_end"):
                visible = False
            text = prefix + text
            witness = seq in self.witness
            row = Row([seq], lane, text, tag, key, list(self.marks.get(seq, [])), witness, setup)
            self.text[seq] = text
            self.lane_of[seq] = lane
            rows[seq] = row
            if visible or witness:
                show.add(seq)

        # IRQ-off sections: drawn when another CPU's story runs through them
        for off, on, cpu in irq_pairs:
            crossed = any(off < s < on and rows[s].lane not in (cpu, None) for s in show)
            if crossed and off >= self.concurrent_from:
                show.add(off)
                show.add(on)
        for stack in irq_stack.values():  # never re-enabled
            for off in stack:
                if off >= self.concurrent_from:
                    show.add(off)
        self.story = show
        self._rows_by_seq = rows

    def _pgd(self, pfn: Any) -> str:
        if pfn == 0:
            return "swapper_pg_dir"
        return f"PGD pfn {pfn:#x}" if isinstance(pfn, int) else "?"

    def _flush_text(self, f: _Flush | None, a: dict[str, Any]) -> str:
        rng = _rng(a.get("start", 0), a.get("end", -1))
        text = f"tlb flush {rng}" + (", freed_tables" if a.get("freed_tables") else "")
        if f is None:
            return text
        if f.ipi_targets:
            how = f"IPI to {_cpus(f.ipi_targets)}"
        elif f.hypercall:
            how = "hypercall (no IPI)"
        elif f.invlpgb:
            how = "INVLPGB (no IPI)"
        else:
            how = "local only"
        text += f": {how}"
        missed = [c for c in f.mask if c not in f.reached]
        if missed:
            text += f"; {_cpus(missed)} not flushed"
        return text

    def _merge(self) -> None:
        out: list[Row] = []
        for seq in sorted(self.story):
            r = self._rows_by_seq[seq]
            r = Row(list(r.seqs), r.lane, r.text, r.tag, r.key, list(r.marks), r.witness, r.setup)
            prev = out[-1] if out else None
            if prev is not None and (prev.tag, r.tag) in _MERGES and prev.lane == r.lane \
                    and self._same_key(prev, r):
                prev.seqs += r.seqs
                prev.witness = prev.witness or r.witness
                prev.marks += [m for m in r.marks if m not in prev.marks]
                if r.tag == "op_end":
                    res = self._rows_by_seq[r.seq].text.split(" -> ", 1)
                    prev.text += f" -> {res[1]}" if len(res) > 1 else ""
                elif r.tag == "flush_end":
                    prev.text += ", done"
                elif r.tag == "gp_end":
                    prev.text = prev.text.replace(" starts", ": starts and ends")
                elif r.tag == "sync_rcu_end":
                    prev.text += ", returns"
                elif r.tag == "zap":
                    prev.key = (*prev.key[:2], prev.key[2] + r.key[2])
                    pages = ", ".join(f"{p:#x}" for p in prev.key[2])
                    prev.text = f"zap: clear {len(prev.key[2])} ptes -> page pfn {pages}"
                prev.tag = r.tag if r.tag == "zap" else ""
                continue
            out.append(r)
        self.rows = out

    @staticmethod
    def _same_key(prev: Row, cur: Row) -> bool:
        if cur.tag == "zap":
            return prev.key[:2] == cur.key[:2]
        return prev.key == cur.key

    # -- layout helpers -------------------------------------------------------------

    def lanes(self) -> list[Lane]:
        seen = {r.lane for r in self.rows if r.lane is not None}
        return sorted(seen, key=_lane_order)

    def lane_title(self, lane: Lane, width: int = 1000) -> str:
        """``CPU0 (munmap, access)``: the CPU and its operations, as many as fit."""
        if isinstance(lane, int):
            ops = [op.kind for op in self.program.ops if op.cpu == lane]
            if not ops:
                ops = [op.kind for op in self.program.setup if op.cpu == lane]
            names = list(dict.fromkeys(ops))
            title = f"CPU{lane}"
            for i in range(len(names), 0, -1):
                more = ", ..." if i < len(names) else ""
                t = f"CPU{lane} ({', '.join(names[:i])}{more})"
                if len(t) <= width:
                    return t
            return title
        return {"RCU": "RCU", "IOMMU": "IOMMU", "hw": "hardware/Xen"}.get(
            str(lane), str(lane))


# -- text ----------------------------------------------------------------------------

def _wrap(text: str, width: int, indent: str = "") -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False) or [indent.rstrip()]


def header_lines(story: Story, width: int = 100) -> list[str]:
    out = []
    head = story.path or "program"
    if story.title:
        head += f": {story.title}"
    out += _wrap(head, width)
    v = story.verdict
    checks = ", ".join(v.checks())
    out += _wrap(f"strategy {story.strategy} on platform {story.platform}: {v.word}"
                 + (f" {checks}" if checks else "") + story.expectation, width)
    if story.others:
        out += _wrap(f"other strategies: {story.others}", width)
    return out


def verdict_lines(story: Story, width: int = 100) -> list[str]:
    v = story.verdict
    if not v.violations:
        return _wrap(f"Clean: no check fires for strategy {story.strategy} on this interleaving "
                     f"(outcome: {v.outcome}).", width)
    out = _wrap("Legend: !! the violating event, * the other witness events; #N is the event number "
                "in `shootdown run` witnesses.", width) + [""]
    explained: list[str] = []
    for x in v.violations:
        wit = " ".join(f"#{e.seq}" for e in x.witness)
        out += textwrap.wrap(f"{x.verdict_word} ({x.check}): {x.summary}" + (f"  [witness {wit}]" if wit else ""),
                             width=width, subsequent_indent="    ", break_on_hyphens=False)
        if x.check not in explained:
            explained.append(x.check)
    for check in explained:
        expl = next(x.explanation for x in v.violations if x.check == check)
        word = next(x.verdict_word for x in v.violations if x.check == check)
        out.append("")
        out += textwrap.wrap(f"why {word}: {expl}", width=width, break_on_hyphens=False)
    return out


def _row_text(r: Row) -> str:
    return r.text + (f"  <== {', '.join(r.marks)}" if r.marks else "")


def _column_widths(story: Story, lanes: list[Lane], avail: int) -> dict[Lane, int]:
    """Share ``avail`` columns among the lanes so that the diagram is as short as
    possible (fewest wrapped lines in all), by dynamic programming over the widths;
    a lane never gets more than its longest row needs, nor less than 16 columns
    (or its own need)."""
    texts = {x: [_row_text(r) for r in story.rows if r.lane == x] for x in lanes}
    want = {x: max(max((len(t) for t in texts[x]), default=0), min(len(story.lane_title(x)), 30), 12)
            for x in lanes}
    lo = {x: min(want[x], 20) for x in lanes}
    if sum(lo.values()) >= avail:
        return {x: max(avail // max(len(lanes), 1), 1) for x in lanes}

    def nlines(x: Lane, w: int) -> int:
        return sum(1 if len(t) <= w else
                   len(textwrap.wrap(t, w, subsequent_indent="  ", break_on_hyphens=False)) or 1
                   for t in texts[x])

    # best[c] = (lines, widths) for the lanes so far using exactly c columns
    best: dict[int, tuple[int, tuple[int, ...]]] = {0: (0, ())}
    for x in lanes:
        cost = {w: nlines(x, w) for w in range(lo[x], min(want[x], avail) + 1)}
        nxt: dict[int, tuple[int, tuple[int, ...]]] = {}
        for c, (n, ws) in best.items():
            for w, k in cost.items():
                if c + w <= avail:
                    cand = (n + k, ws + (w,))
                    if c + w not in nxt or cand[0] < nxt[c + w][0]:
                        nxt[c + w] = cand
        best = nxt
    lines, widths = min(best.values(), key=lambda v: (v[0], -sum(v[1])))
    out = dict(zip(lanes, widths, strict=True))
    spare = avail - sum(widths)  # share what no lane needs, for looks
    for x in lanes:
        add = min(spare, max(0, avail // len(lanes) - out[x]), want[x] + 4 - out[x])
        if add > 0:
            out[x] += add
            spare -= add
    return out


def text_diagram(story: Story, width: int = 100) -> str:
    """The interleaving in CPU columns, kernel-commit-message style, with the verdict
    and the check's explanation under it; no line longer than ``width``."""
    width = max(width, 60)
    lanes = story.lanes()
    maxseq = max((r.seq for r in story.rows), default=0)
    seqw = len(str(maxseq)) + 1
    gutter = 3 + seqw + 1
    n = max(len(lanes), 1)
    widths = _column_widths(story, lanes, width - gutter - 2 * (n - 1))
    colw = min(widths.values(), default=width)
    out = header_lines(story, width)
    out.append("")
    if not story.rows:
        out += ["(no event to draw)", ""] + verdict_lines(story, width)
        return "\n".join(out)
    narrow = colw < 20
    if narrow:  # too many lanes for columns: one line per event, lane first
        lw = max(len(lane_name(x)) for x in lanes) if lanes else 4
        body_w = width - gutter - lw - 1
    else:
        titles = []
        for lane in lanes:
            t, w = story.lane_title(lane, widths[lane]), widths[lane]
            titles.append(t[:w].ljust(w))
        out.append((" " * gutter + "  ".join(titles)).rstrip())
        out.append((" " * gutter + "  ".join("-" * widths[x] for x in lanes)).rstrip())
    in_setup = any(r.setup for r in story.rows)
    for r in story.rows:
        if in_setup and not r.setup:
            in_setup = False
            label = " concurrent part "
            dash = (width - gutter - len(label)) // 2
            out.append(" " * gutter + "-" * dash + label + "-" * (width - gutter - dash - len(label)))
        mark = "!! " if r.marks else (" * " if r.witness else "   ")
        text = _row_text(r)
        lead = f"{mark}{('#' + str(r.seq)).ljust(seqw)} "
        if r.lane is None:
            lines = _wrap(text, width - gutter)
            out += [(lead if i == 0 else " " * gutter) + ln for i, ln in enumerate(lines)]
            continue
        if narrow:
            lines = textwrap.wrap(text, body_w, subsequent_indent="  ", break_on_hyphens=False) or [""]
            for i, ln in enumerate(lines):
                name = lane_name(r.lane).ljust(lw) if i == 0 else " " * lw
                out.append(((lead if i == 0 else " " * gutter) + name + " " + ln).rstrip())
            continue
        col = lanes.index(r.lane)
        lines = textwrap.wrap(text, widths[r.lane], subsequent_indent="  ", break_on_hyphens=False) or [""]
        pad = " " * sum(widths[x] + 2 for x in lanes[:col])
        for i, ln in enumerate(lines):
            out.append(((lead if i == 0 else " " * gutter) + pad + ln).rstrip())
    out.append("")
    out += verdict_lines(story, width)
    return "\n".join(ln[:width] if len(ln) > width else ln for ln in out)


# -- HTML ----------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.3em;margin:0 0 .3em}
pre,code,.tl td{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
.meta{color:#555;margin:.2em 0}
.viol{border-left:4px solid #c62828;background:#fdecea;padding:.5em .8em;margin:.6em 0}
.viol b{color:#b71c1c}
.clean{border-left:4px solid #2e7d32;background:#e8f5e9;padding:.5em .8em;margin:.6em 0}
.why{color:#333;margin:.3em 0 0}
.legend span{display:inline-block;padding:0 .5em;margin-right:.6em;border:1px solid #ccc}
table.tl{border-collapse:collapse;margin-top:.6em}
.tl th{position:sticky;top:0;background:#f5f5f5;border-bottom:2px solid #999;padding:3px 6px;
  text-align:left;vertical-align:bottom;font-size:12px}
.tl td{border-bottom:1px solid #eee;padding:2px 6px;vertical-align:top;max-width:26em}
.tl td.seq{color:#888;text-align:right}
.tl tr.noise{display:none;color:#888}
.tl tr.phase td{border-top:3px double #555;font-style:italic;color:#555}
#all:checked ~ table tr.noise{display:table-row}
.tl tr.wit td{background:#fff8e1}
.tl tr.vio td{background:#ffcdd2;font-weight:bold}
.tl tr.vio td.seq::before{content:"!! ";color:#b71c1c}
.tl tr:hover td{outline:1px solid #90caf9}
.tl tr.sel td{background:#bbdefb}
td.irqoff{border-left:4px solid #ef6c00}
td.inflight{border-left:4px solid #6a1b9a}
td.gp{border-left:4px solid #00838f}
td.t-none{}
td.t-live{border-left:6px solid #43a047}
td.t-unhooked{border-left:6px solid #fbc02d}
td.t-freed{border-left:6px solid #e53935;color:#b71c1c}
td.t-reused{border-left:6px solid #8e24aa}
#detail{position:fixed;right:1em;bottom:1em;width:28em;max-height:45vh;overflow:auto;background:#fafafa;
  border:1px solid #999;padding:.5em;font:12px ui-monospace,monospace;white-space:pre-wrap;display:none}
"""

_JS = """
(function(){
  var panel=document.getElementById('detail');
  panel.style.display='block';
  var sel=null;
  document.querySelectorAll('table.tl tbody tr').forEach(function(tr){
    tr.addEventListener('click',function(){
      if(sel){sel.classList.remove('sel');}
      sel=tr; tr.classList.add('sel');
      panel.textContent=tr.getAttribute('title');
    });
  });
  var v=document.querySelector('tr.vio');
  if(v){panel.textContent='violating event:\\n'+v.getAttribute('title')+'\\n\\n(click any row for its raw event)';}
})();
"""


def _msg_text(e: Event) -> str:
    a = e.a
    src = lane_name(e.cpu) if e.cpu >= 0 else {-1: "RCU", -2: "Xen/hw", -3: "IOMMU"}.get(e.cpu, "")
    k = e.kind
    if k == "ipi_send":
        return f"IPI#{a.get('id')} {a.get('what')} {src} -> {_cpus(a.get('targets', ()))}"
    if k == "ipi_recv":
        return f"IPI#{a.get('id')} taken by {src}"
    if k == "ipi_done":
        return f"IPI#{a.get('id')} done on {src}"
    if k == "xen_hypercall":
        return f"{src} -> Xen: {', '.join(str(x) for x in a.get('ops', ()))}"
    if k == "xen_mc_deferred":
        return f"{src} queues multicall {', '.join(str(x) for x in a.get('ops', ()))}"
    if k == "invlpgb":
        return f"{src} INVLPGB#{a.get('id')}"
    if k == "tlbsync":
        return f"{src} TLBSYNC"
    if k == "flush_begin":
        return f"flush#{a.get('id')} from {src} begins"
    if k == "flush_end":
        return f"flush#{a.get('id')} complete"
    return ""


_MSG_KINDS = frozenset({"ipi_send", "ipi_recv", "ipi_done", "xen_hypercall", "xen_mc_deferred", "invlpgb",
                        "tlbsync", "flush_begin", "flush_end"})


def html_timeline(story: Story) -> str:
    """A standalone HTML page (inline CSS and JS only, nothing fetched): the verdict
    and its explanation, then every event as a row, time flowing down, in lanes (one
    per CPU, RCU, IOMMU, IPIs/hypercalls, and one per page-table frame involved,
    showing its life: alloc, unhook, free, reuse).  Story rows are shown, the rest
    behind a checkbox; the violating event is highlighted; each row's tooltip (and,
    with JS, the detail panel) gives the raw event."""
    esc = html.escape
    ev = story.events
    cpu_lanes = [x for x in story.lanes() if isinstance(x, int)]
    for e in ev:  # every CPU that did anything, even outside the story
        if e.cpu >= 0 and e.cpu not in cpu_lanes and e.kind not in ("boot",):
            cpu_lanes.append(e.cpu)
    cpu_lanes.sort()
    agents = ["IOMMU"] if any(e.cpu == IOMMU_AGENT for e in ev) else []
    has_rcu = any(e.cpu == RCU_AGENT or e.kind in ("call_rcu", "sync_rcu_begin") for e in ev)
    lanes: list[Lane] = [*cpu_lanes, *agents] + (["RCU"] if has_rcu else [])
    has_msg = any(e.kind in _MSG_KINDS or e.cpu == HW_AGENT for e in ev)
    tables = story.tables
    table_name: dict[int, str] = {}
    for e in ev:
        if e.kind == "alloc" and e.a.get("pfn") in tables and e.a.get("pfn") not in table_name:
            table_name[e.a["pfn"]] = LEVEL_TABLE.get(e.a.get("level", 0), "table")

    v = story.verdict
    title = story.title or story.path or "shootdown explain"
    p: list[str] = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                    f"<title>shootdown explain: {esc(title)}</title>", f"<style>{_CSS}</style></head><body>"]
    p.append(f"<h1>{esc(title)}</h1>")
    if story.path:
        p.append(f'<p class="meta"><code>{esc(story.path)}</code></p>')
    checks = ", ".join(v.checks())
    p.append(f'<p class="meta">strategy <b>{esc(story.strategy)}</b> on platform <b>{esc(story.platform)}</b>: '
             f"<b>{esc(v.word)}</b> {esc(checks)}{esc(story.expectation)}</p>")
    if story.others:
        p.append(f'<p class="meta">other strategies: {esc(story.others)}</p>')
    if story.description:
        p.append(f'<p class="meta">{esc(story.description)}</p>')
    if v.violations:
        explained: set[str] = set()
        for x in v.violations:
            wit = " ".join(f'<a href="#ev{e.seq}">#{e.seq}</a>' for e in x.witness)
            p.append(f'<div class="viol"><b>{esc(x.verdict_word)}</b> ({esc(x.check)}): {esc(x.summary)}'
                     + (f"<br>witness: {wit}" if wit else ""))
            if x.check not in explained:
                explained.add(x.check)
                p.append(f'<p class="why"><b>why:</b> {esc(x.explanation)}</p>')
            p.append("</div>")
    else:
        p.append(f'<div class="clean">Clean: no check fires for strategy {esc(story.strategy)} on this '
                 f"interleaving (outcome: {esc(v.outcome)}).</div>")
    p.append('<p class="legend"><span style="border-left:4px solid #ef6c00">IRQs off</span>'
             '<span style="border-left:4px solid #6a1b9a">IPI / flush in flight</span>'
             '<span style="border-left:4px solid #00838f">grace period / callbacks pending</span>'
             '<span style="border-left:6px solid #43a047">table live</span>'
             '<span style="border-left:6px solid #fbc02d">unhooked</span>'
             '<span style="border-left:6px solid #e53935">freed</span>'
             '<span style="border-left:6px solid #8e24aa">reused</span>'
             '<span style="background:#fff8e1">witness</span>'
             '<span style="background:#ffcdd2">violating event</span></p>')
    p.append("<details><summary>text diagram (for a commit message)</summary><pre>"
             f"{esc(text_diagram(story))}</pre></details>")
    n_noise = len(ev) - len(story.story)
    p.append(f'<input type="checkbox" id="all"> <label for="all">show all {len(ev)} events '
             f"({n_noise} hidden as noise)</label>")
    p.append('<table class="tl"><thead><tr><th>#</th>')
    for lane in lanes:
        t = story.lane_title(lane)
        name, _, ops = t.partition(" (")
        p.append(f"<th>{esc(name)}" + (f"<br><small>{esc(ops.rstrip(')'))}</small>" if ops else "") + "</th>")
    if has_msg:
        p.append("<th>IPIs / hypercalls<br><small>Xen, hardware</small></th>")
    for pfn in tables:
        p.append(f"<th>{esc(table_name.get(pfn, 'table'))} pfn {pfn:#x}<br><small>life of the frame</small></th>")
    p.append("</tr></thead><tbody>")

    irq: dict[int, int] = {}
    ipis: set[Any] = set()
    flushes_open: set[Any] = set()
    rcu_pending: set[Any] = set()
    gp_open = False
    tstate: dict[int, str] = {pfn: "none" for pfn in tables}
    level: dict[int, int] = {}
    for e in ev:
        a = e.a
        k = e.kind
        lane = story.lane_of.get(e.seq)
        if e.cpu == HW_AGENT and lane is not None and has_msg:
            lane = "msg"  # the hypervisor/hardware acting on its own: the message lane
        # state changes that take effect at this event
        if k == "irq_off":
            irq[e.cpu] = irq.get(e.cpu, 0) + 1
        if k == "ipi_send":
            ipis.add(a.get("id"))
        if k == "flush_begin":
            flushes_open.add(a.get("id"))
        if k == "call_rcu":
            rcu_pending.add(a.get("id"))
        if k == "gp_start":
            gp_open = True
        labels: dict[int, str] = {}
        if k == "alloc":
            level[a.get("pfn")] = a.get("level", 0) if a.get("state") == TABLE else 0
            if a.get("pfn") in tstate:
                reused = tstate[a["pfn"]] in ("freed", "reused") or a.get("gen", 1) > 1
                tstate[a["pfn"]] = "reused" if reused else "live"
                what = story._thing(a["pfn"], a.get("state"), a.get("level"))
                labels[a["pfn"]] = f"{'reused as' if reused else 'alloc'} {what} gen {a.get('gen')}"
        elif k == "free" and a.get("pfn") in tstate:
            tstate[a["pfn"]] = "freed"
            labels[a["pfn"]] = f"freed (gen {a.get('gen')}) by {lane_name(lane) or 'RCU'}"
        elif k == "entry_write":
            lv = level.get(a.get("pfn"), 0)
            c_old = Story._child(a.get("old", 0), lv)
            c_new = Story._child(a.get("new", 0), lv)
            if c_old in tstate and c_new != c_old and tstate[c_old] in ("live", "reused"):
                tstate[c_old] = "unhooked"
                labels[c_old] = f"unhooked ({str(a.get('why', '')).split(' ')[0]})"
            if c_new in tstate and c_new != c_old:
                labels[c_new] = "hooked"
            if a.get("pfn") in tstate and a.get("pfn") not in labels:
                labels[a["pfn"]] = f"[{a.get('idx')}] {a.get('old', 0):#x} -> {a.get('new', 0):#x}"
        elif a.get("pfn") in tstate and k not in ("alloc", "free"):
            short = {"walker_map": f"{lane_name(lane)} {a.get('who')} holds a pointer",
                     "walker_unmap": f"{lane_name(lane)} drops its pointer",
                     "sw_read": f"{lane_name(lane)} {a.get('who')} reads [{a.get('idx')}]",
                     "psc_fill": f"cached in {lane_name(lane)} PSC",
                     "hw_read": f"{lane_name(lane)} hw walk reads [{a.get('idx')}]",
                     "xen_unpin_failed": "Xen refuses unpin"}.get(k, k)
            labels[a["pfn"]] = short

        seq = e.seq
        cls = "story" if seq in story.story else "noise"
        if k == "phase":
            cls = "story phase"
        if seq in story.witness:
            cls += " wit"
        if seq in story.marks:
            cls += " vio"
        txt = story.text.get(seq, k)
        if k == "phase":
            txt = "concurrent part begins (setup above)"
            lane = lanes[0] if lanes else None
        if seq in story.marks:
            txt += "  <== " + ", ".join(story.marks[seq])
        p.append(f'<tr id="ev{seq}" class="{cls}" title="{esc(e.brief())}">'
                 f'<td class="seq">{seq}</td>')
        for ln in lanes:
            c = []
            if isinstance(ln, int) and irq.get(ln, 0) > 0:
                c.append("irqoff")
            if ln == "RCU" and (gp_open or rcu_pending):
                c.append("gp")
            body = esc(txt) if (ln == lane or (lane is None and ln == lanes[0])) else ""
            if ln == "RCU" and k == "call_rcu":
                body = esc(f"callback {a.get('what')} queued by {lane_name(lane)}")
            p.append(f'<td class="{" ".join(c)}">{body}</td>' if c else f"<td>{body}</td>")
        if has_msg:
            c = "inflight" if (ipis or flushes_open) else ""
            body = esc(_msg_text(e)) if k in _MSG_KINDS else (esc(txt) if lane == "msg" else "")
            p.append(f'<td class="{c}">{body}</td>' if c else f"<td>{body}</td>")
        for pfn in tables:
            p.append(f'<td class="t-{tstate[pfn]}">{esc(labels.get(pfn, ""))}</td>')
        p.append("</tr>")
        # state changes that end after this event
        if k == "irq_on":
            irq[e.cpu] = max(0, irq.get(e.cpu, 0) - 1)
        if k == "ipi_done":
            ipis.discard(a.get("id"))
        if k == "flush_end":
            flushes_open.discard(a.get("id"))
        if k == "rcu_cb":
            rcu_pending.discard(a.get("id"))
        if k == "gp_end":
            gp_open = False
    p.append("</tbody></table>")
    p.append('<div id="detail">click a row to see its raw event</div>')
    p.append(f"<noscript><p>Hover a row for its raw event.</p></noscript><script>{_JS}</script>")
    p.append("</body></html>")
    return "\n".join(p) + "\n"
