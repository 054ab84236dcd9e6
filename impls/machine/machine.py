"""The simulated SMP machine: boots a program, runs its CPUs as generators
under a scheduler that asks every decision of a :class:`Choices`, and returns
the history.

Phases: boot (address spaces, VMAs, initial tasks), ``setup`` (the program's
sequential part, run with the default policy and drained to quiescence), the
concurrent part (the schedule), and quiescence (every CPU done, every IPI
taken, every RCU callback run, the platform's work in flight finished), after
which a ``final`` event records the state the accounting and divergence checks
read.

Agents: CPUs ``0..n-1`` and the RCU agent (``RCU`` = -1).  A CPU is runnable
if it can make progress (not blocked) or if it has an IPI pending and IRQs on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import (
    fault,
    filemap,
    gup,
    huge_memory,
    khugepaged,
    mmap,
    mmu_notifier,
    mremap,
    pfnmap,
    pgtable_generic,
    sched_core,
)
from .choices import RCU, Choices, Replay
from .cpu import Cpu, Mm, Step, Vma, pgd_of
from .history import HW, Event, History, new_event
from .page_alloc import DATA, FREE, TABLE, Frame, Frames
from .pgtable import LEVEL_SHIFT, PAGE_SHIFT, entry_pfn, entry_present, garbage_entry, is_table_entry, pmd_trans_huge
from .pgtable_generic import Ptr
from .platform import platform_options
from .plugin import Ops
from .program import Op, Program
from .rcu import Rcu
from .smp import deliver_ipi

OpFn = Callable[[Cpu, Op], Step]

#: operation kind -> implementation (see program.OP_KINDS for the docs)
OPS: dict[str, OpFn] = {
    "mmap": mmap.do_mmap,
    "munmap": mmap.do_munmap,
    "madvise": mmap.madvise_dontneed,
    "access": fault.access,
    "populate": fault.populate,
    "gup_fast": gup.gup_fast_op,
    "pte_walk": pgtable_generic.pte_walk,
    "switch": sched_core.switch_op,
    "exit": sched_core.exit_op,
    "spec_walk": fault.spec_walk,
    "kvm_fault": mmu_notifier.kvm_fault,
    "kvm_access": mmu_notifier.kvm_access,
    "iommu_access": mmu_notifier.iommu_access,
    "truncate": filemap.truncate_op,
    "mremap": mremap.mremap_op,
    "revoke": pfnmap.revoke_op,
    "collapse": khugepaged.madvise_collapse,
    "khugepaged": khugepaged.khugepaged_scan_op,
    "split": huge_memory.split_op,
}

DEFAULT_MAX_STEPS = 20_000

_descs: dict[Op, str] = {}


def _describe(op: Op) -> str:
    d = _descs.get(op)
    if d is None:
        if len(_descs) > 50_000:
            _descs.clear()
        d = _descs[op] = op.describe()
    return d


class Machine:
    def __init__(self, program: Program, strategy: Ops, platform: Ops,
                 choices: Choices | None = None, max_steps: int = DEFAULT_MAX_STEPS) -> None:
        self.program = program
        self.S = strategy
        self.P = platform
        self.env = program.env
        self.h = History(strategy.name, platform.name)
        self.frames = Frames(self.h)
        self.ncpus = program.cpus
        self.cpus = [Cpu(i, self) for i in range(program.cpus)]
        self.rcu = Rcu(self)
        self.rcu_cpu = Cpu(RCU, self)
        self.init_mm = Mm(-1, None)
        self.mms: list[Mm] = []
        #: the program's files (struct address_space each)
        self.files: list[filemap.AddressSpace] = []
        self.csd_seq = 0
        self.flush_seq = 0
        self.choices = choices if choices is not None else Replay(program.schedule)
        self.max_steps = max_steps
        self.steps = 0
        self.pv: dict[str, Any] = {}
        self.outcome = "running"
        #: the platform's options (its OPTIONS defaults, then the program's
        #: env.options); x86 code reads the two it needs as attributes
        self.popts: dict[str, str] = platform_options(platform, program.env)
        self.pcid = self.popts.get("pcid") == "on"
        self.invlpg_all_psc = self.popts.get("invlpg") == "intel"

    # -- memory accesses that the oracle checks ------------------------------

    def sw_read(self, cpu: Cpu, f: Frame, gen: int, idx: int, who: str) -> int:
        """A software load of entry ``idx`` from table ``f`` by a walker that
        believes the frame has generation ``gen``."""
        st = f.state
        if st == TABLE or st == FREE:
            val = f.entries.get(idx, 0)
        elif st == DATA:
            val = garbage_entry(f.pfn, f.gen, idx)
        else:
            val = 0
        # History.emit_attrs(), inlined: the commonest event
        events = self.h.events
        events.append(new_event(Event, (len(events), cpu.id, "sw_read",
                                        {"pfn": f.pfn, "gen": gen, "idx": idx, "val": val, "who": who})))
        return val

    def sw_touch(self, cpu: Cpu, f: Frame, gen: int, what: str) -> None:
        """A software access to a table page other than an entry load (its
        split PTL, a full rescan)."""
        self.h.emit_attrs(cpu.id, "sw_touch", {"pfn": f.pfn, "gen": gen, "what": what})

    def sw_write(self, cpu: Cpu, f: Frame, gen: int, idx: int, val: int, why: str, nr: int = 1) -> None:
        """A store to entry ``idx`` of table ``f`` (believed generation ``gen``).
        ``nr`` > 1: the same store to entries ``idx .. idx+nr-1``, which hold
        the same old value (set_ptes() of a split, clear_full_ptes() of a
        large folio's PTE batch): one event."""
        old = f.entries.get(idx, 0) if f.state in (TABLE, FREE) else 0
        a = {"pfn": f.pfn, "gen": gen, "idx": idx, "old": old, "new": val, "why": why}
        if nr > 1:
            a["nr"] = nr
        self.h.emit_attrs(cpu.id, "entry_write", a)
        if f.state in (TABLE, FREE):
            entries = f.entries
            for i in range(idx, idx + nr):
                if val:
                    entries[i] = val
                else:
                    entries.pop(i, None)

    def set_pxd(self, cpu: Cpu, ptr: Ptr, val: int, why: str) -> None:
        """set_pmd()/set_pud()/set_p4d() (pmd_clear(), pmd_populate(), ...):
        through the platform, which may queue it (Xen lazy MMU mode)."""
        hook = self.P.set_pxd
        if hook is not None:
            hook(cpu, ptr, val, why)
        else:
            self.sw_write(cpu, ptr.frame, ptr.gen, ptr.idx, val, why)

    # -- boot ------------------------------------------------------------------

    def boot(self) -> None:
        p = self.program
        h = self.h
        a = {"cpus": p.cpus, "mms": p.mms, "platform": self.P.name, "strategy": self.S.name,
             "pt_reclaim": p.env.pt_reclaim, "kvm": p.env.kvm, "iommu": p.env.iommu}
        if p.env.thp:
            a["thp"] = True
        h.emit_attrs(HW, "boot", a)
        if self.P.init is not None:
            self.P.init(self)
        boot_cpu = self.cpus[0]
        for i in range(p.mms):
            pgd = self.frames.alloc(HW, TABLE, level=4, mm=i, va=0)
            mm = Mm(i, pgd)
            if p.env.kvm:
                mm.kvm = mmu_notifier.Kvm(i)
            if p.env.iommu:
                mm.iommu = mmu_notifier.Iommu()
            self.mms.append(mm)
            if self.P.enter_mmap is not None:
                self.P.enter_mmap(boot_cpu, mm)
        for mm_id, start, length in p.vmas:
            mm = self.mms[mm_id]
            mm.vmas.append(Vma(start, start + length, mm=mm))
            mm.vmas.sort(key=lambda v: v.start)
            h.emit(HW, "vma_add", mm=mm_id, start=start, end=start + length)
        self.files = [filemap.AddressSpace(i, kind) for i, kind in enumerate(p.files)]
        for mm_id, start, length, fid, off in p.file_vmas:
            mm = self.mms[mm_id]
            f = self.files[fid]
            vma = Vma(start, start + length, f, off >> PAGE_SHIFT, mmap.FILE_VM_FLAGS.get(f.kind, 0), mm)
            mm.vmas.append(vma)
            mm.vmas.sort(key=lambda v: v.start)
            f.i_mmap.append(vma)
            h.emit(HW, "vma_add", mm=mm_id, start=start, end=start + length, file=fid, pgoff=vma.pgoff)
        for c in self.cpus:
            c.loaded_mm = self.init_mm
            c.active_mm = self.init_mm
            c.ctxs[0] = [self.init_mm, self.init_mm.tlb_gen]
            first_mm = p.start_of(c.id)
            if first_mm is not None:
                mm = self.mms[first_mm]
                for _ in self.P.switch_mm_irqs_off(c, mm, "boot"):
                    pass  # no other CPU runs at boot
                c.current_mm = mm
                c.active_mm = mm
                h.emit(c.id, "context_switch", to=mm.id)

    # -- running -----------------------------------------------------------------

    def _cpu_main(self, cpu: Cpu, ops: list[tuple[int, Op]]) -> Step:
        events = self.h.events  # History.emit_attrs(), inlined
        cid = cpu.id
        for i, op in ops:
            cpu.op_index = i
            kind = op.kind
            if kind not in ("switch", "exit"):
                cpu.op_mm = cpu.current_mm
            events.append(new_event(Event, (len(events), cid, "op_begin",
                                            {"op": i, "name": kind, "desc": _describe(op)})))
            res = yield from OPS[kind](cpu, op)
            cpu.op_mm = None
            events.append(new_event(Event, (len(events), cid, "op_end", {"op": i, "name": kind, "result": res})))
            yield "op_end"

    @staticmethod
    def _cpu_runnable(c: Cpu) -> bool:
        """A CPU can step if it can take a pending IPI (IRQs on) or run its
        own code (not blocked)."""
        if c.ipi and not c.irq_off:
            return True
        if c.gen is not None:
            wait = c.wait
            return wait is None or wait()
        return False

    def _runnable(self) -> list[int]:
        """The agents that can take a step, CPUs in order, then RCU."""
        can = self._cpu_runnable
        r = [c.id for c in self.cpus if can(c)]
        if self.rcu.runnable():
            r.append(RCU)
        return r

    def _step(self, agent: int, choices: Choices) -> None:
        if agent == RCU:
            self.rcu.step()
            return
        c = self.cpus[agent]
        on_step = self.P.on_step
        if on_step is not None:
            on_step(c)
        gen = c.gen
        if c.ipi and not c.irq_off:
            can_run = gen is not None and (c.wait is None or c.wait())
            if not can_run or not choices.flip("irq.defer"):
                deliver_ipi(c)
                return
        try:
            c.label = next(gen)  # type: ignore[arg-type]
        except StopIteration:
            c.gen = None
            c.done = True
            c.label = "done"

    def _run_phase(self, choices: Choices, phase: str) -> bool:
        """Run until no agent can move.  False if the run must stop (deadlock
        or step limit), which is recorded in the history."""
        if getattr(choices, "tracer", None) is not None:
            return self._run_phase_traced(choices, phase)
        cpus = self.cpus
        choices.last_label = lambda a: cpus[a].label if a >= 0 else None
        # the loop inlines _runnable() and _step() (they stay the reference:
        # the traced loop below calls them): a step is a few microseconds, and
        # the calls were a good part of it
        rcu = self.rcu
        rcu_runnable = rcu.runnable
        rcu_step = rcu.step
        on_step = self.P.on_step
        pick = choices.pick
        flip = choices.flip
        max_steps = self.max_steps
        last: int | None = None
        while True:
            runnable: list[int] = []
            for c in cpus:  # _cpu_runnable(c)
                if c.ipi and not c.irq_off:
                    runnable.append(c.id)
                elif c.gen is not None:
                    wait = c.wait
                    if wait is None or wait():
                        runnable.append(c.id)
            if rcu_runnable():
                runnable.append(RCU)
            if not runnable:
                stuck = [c for c in cpus if c.gen is not None]
                if stuck:
                    self.h.emit(HW, "deadlock", phase=phase,
                                cpus=tuple((c.id, c.label) for c in stuck))
                    self.outcome = "deadlock"
                    return False
                if self.P.pending is not None and self.P.pending(self):
                    self.P.quiesce(self)
                    continue
                return True
            agent = pick(runnable, last)
            if agent == RCU:  # _step(agent, choices)
                rcu_step()
            else:
                c = cpus[agent]
                if on_step is not None:
                    on_step(c)
                gen = c.gen
                if c.ipi and not c.irq_off and (
                        gen is None or (c.wait is not None and not c.wait()) or not flip("irq.defer")):
                    deliver_ipi(c)
                else:
                    try:
                        c.label = next(gen)  # type: ignore[arg-type]
                    except StopIteration:
                        c.gen = None
                        c.done = True
                        c.label = "done"
            last = agent
            self.steps = steps = self.steps + 1
            if steps > max_steps:
                self.h.emit(HW, "step_limit", phase=phase, steps=self.steps,
                            cpus=tuple((c.id, c.label) for c in cpus if c.gen is not None))
                self.outcome = "step_limit"
                return False

    def _run_phase_traced(self, choices: Choices, phase: str) -> bool:
        """:meth:`_run_phase` for the exhaustive explorer: the same loop, with
        the footprint of every step and of every agent's enabledness test
        recorded by ``choices.tracer`` (impls/machine/footprint.py) and handed
        to ``choices.enabled(...)`` before each decision and to
        ``choices.stepped(...)`` after each step.  Platform work done at
        quiescence (no agent runnable) is reported as ``choices.barrier()``:
        it is dependent with everything."""
        tr = choices.tracer  # type: ignore[attr-defined]
        cpus = self.cpus
        choices.last_label = lambda a: cpus[a].label if a >= 0 else None
        can = self._cpu_runnable
        last: int | None = None
        while True:
            runnable: list[int] = []
            en = {}
            for c in cpus:
                tr.begin()
                ok = can(c)
                en[c.id] = tr.end()
                if ok:
                    runnable.append(c.id)
            tr.begin()
            ok = self.rcu.runnable()
            en[RCU] = tr.end()
            if ok:
                runnable.append(RCU)
            if not runnable:
                stuck = [c for c in cpus if c.gen is not None]
                if stuck:
                    self.h.emit(HW, "deadlock", phase=phase,
                                cpus=tuple((c.id, c.label) for c in stuck))
                    self.outcome = "deadlock"
                    return False
                if self.P.pending is not None and self.P.pending(self):
                    choices.barrier()  # type: ignore[attr-defined]
                    self.P.quiesce(self)
                    continue
                return True
            choices.enabled(en)  # type: ignore[attr-defined]
            agent = choices.pick(runnable, last)
            tr.begin()
            self._step(agent, choices)
            fp = tr.end(agent, cpus[agent].gen if agent >= 0 else None)
            choices.stepped(agent, fp)  # type: ignore[attr-defined]
            last = agent
            self.steps = steps = self.steps + 1
            if steps > self.max_steps:
                self.h.emit(HW, "step_limit", phase=phase, steps=self.steps,
                            cpus=tuple((c.id, c.label) for c in cpus if c.gen is not None))
                self.outcome = "step_limit"
                return False

    def run(self) -> History:
        """Boot, run setup and the concurrent part, quiesce, snapshot."""
        h = self.h
        self.boot()
        setup_choices = Replay()
        for i, op in enumerate(self.program.setup):
            c = self.cpus[op.cpu]
            c.gen = self._cpu_main(c, [(-1 - i, op)])
            if not self._run_phase(setup_choices, "setup"):
                return self._finish()
        h.emit(HW, "phase", name="concurrent")
        ops_of: dict[int, list[tuple[int, Op]]] = {c.id: [] for c in self.cpus}
        for i, op in enumerate(self.program.ops):
            if op.cpu in ops_of:
                ops_of[op.cpu].append((i, op))
        for c in self.cpus:
            ops = ops_of[c.id]
            c.gen = self._cpu_main(c, ops) if ops else None
            c.done = not ops
        if self._run_phase(self.choices, "concurrent"):
            if self.P.quiesce is not None:
                self.P.quiesce(self)
            self.outcome = "quiescent"
        return self._finish()

    def release(self) -> None:
        """Let go of the machine after a run: every CPU and the RCU agent point
        back at the machine, so without this a finished machine (and its
        history) is freed only by the cycle collector, which a fuzz loop
        running thousands of machines pays for.  The history stays valid; the
        machine cannot run kernel code any more."""
        for c in (*self.cpus, self.rcu_cpu):
            c.m = None  # type: ignore[assignment]
            c.gen = None
            c.wait = None
        self.rcu.m = None  # type: ignore[assignment]
        self.choices.last_label = lambda agent: None
        for f in self.frames.frames:  # a table's PTL lives in its ptdesc and points back at it
            if f.ptl is not None:
                f.ptl.frame = None
            f.mapping = None  # a page-cache page and its file point at each other
        for mm in self.mms:  # a VMA and its mm, and a file's rmap of VMAs
            for v in mm.vmas:
                v.mm = None
                v.file = None
        for file in self.files:
            file.i_mmap.clear()
            file.pages.clear()

    def _finish(self) -> History:
        h = self.h
        h.meta["outcome"] = self.outcome
        h.meta["steps"] = self.steps
        h.meta["schedule"] = self.choices.recorded()
        unreached = getattr(self.choices, "unreached_labels", None)
        if unreached is not None:
            h.meta["unreached_labels"] = unreached()
        if self.outcome == "quiescent":
            h.emit(HW, "final", **self.snapshot())
        return h

    # -- the quiescent state ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        frames = self.frames
        mms = []
        for mm in self.mms:
            mapping: dict[int, tuple[int, int]] = {}
            huge: dict[int, tuple[int, int]] = {}
            tables: list[tuple[int, int, int]] = []
            pgd, _ = pgd_of(mm)  # (init_mm is not in self.mms)
            if not mm.freed:
                self._collect(pgd, 4, 0, mapping, tables, huge)
            d = {
                "id": mm.id, "exited": mm.exited, "freed": mm.freed, "rss": mm.rss,
                "nr_ptes": mm.nr_ptes, "nr_pmds": mm.nr_pmds, "nr_puds": mm.nr_puds,
                "vmas": tuple((v.start, v.end) for v in mm.vmas),
                "mapping": tuple(sorted(mapping.items())), "tables": tuple(sorted(tables)),
                "pinned": bool(pgd.pinned or pgd.xen_pinned) if not mm.freed else False,
                "sptes": tuple(sorted(mm.kvm.sptes.items())) if mm.kvm else (),
            }
            if huge:
                # 2 MiB mappings (THP): va -> (folio pfn, gen); each maps 512 pages
                d["huge"] = tuple(sorted(huge.items()))
            mms.append(d)
        live = tuple(
            (f.pfn, f.gen, f.state, f.level, f.refcount, f.mapcount, f.pinned, f.xen_pinned, f.ro,
             1 if f.mapping is not None else 0)
            for f in frames.frames[1:] if f.state != FREE
        )
        return {"mms": tuple(mms), "frames": live,
                "rcu_pending": len(self.rcu.waiting) + len(self.rcu.ready)}

    def _collect(self, f: Frame, level: int, base: int, mapping: dict, tables: list, huge: dict) -> None:
        tables.append((f.pfn, f.gen, level))
        # PTE tables deposited for huge PMDs belong to the mm (nr_ptes)
        tables.extend((t.pfn, t.gen, 1) for t in f.pmd_huge_pte)
        shift = LEVEL_SHIFT[level]
        for idx, val in sorted(f.entries.items()):
            if not entry_present(val):
                continue
            va = base | (idx << shift)
            child = self.frames.get(entry_pfn(val))
            if child is None:
                continue
            if level == 1:
                mapping[va] = (child.pfn, child.gen)
            elif is_table_entry(val) and child.state == TABLE:
                self._collect(child, level - 1, va, mapping, tables, huge)
            elif level == 2 and pmd_trans_huge(val):
                huge[va] = (child.pfn, child.gen)


def run_once(program: Program, strategy: Ops, platform: Ops, choices: Choices | None = None,
             max_steps: int = DEFAULT_MAX_STEPS) -> History:
    return Machine(program, strategy, platform, choices, max_steps).run()


__all__ = ["Machine", "OPS", "run_once", "PAGE_SHIFT"]
