"""Delta-debugging minimisation of a reproducer (program + schedule).

The property to keep: replaying the candidate with its schedule
(``fuzz.run.run_program(program)``, i.e. :class:`Replay`) on the same strategy
and platform still produces a violation with the same *signature*
(``Violation.signature()``: the check plus what races with what), so the
minimised file is the same bug, not merely the same check; deduplication by
signature before and after minimising then agrees.

First, one cheap try: drop every operation that had not begun by the
violation's last witness event.  Then passes, repeated until none makes
progress or the time budget runs out:

1. **ops**: ddmin over the concurrent operations (chunks of n/2, n/4, ... 1);
2. **cpus**: drop a CPU with all its operations, renumbering the others
   (its setup operations move to a CPU that starts in the same mm, or go);
   then **merge**: move all the operations of one CPU onto another that
   starts in the same mm (in file order, after, or before its own), so that
   a CPU that only made the race worse (an access that reuses the freed
   frame) joins one of the racing CPUs when the signature survives;
3. **setup**: ddmin over the setup operations, then over the initial VMAs;
   unused address spaces are dropped;
4. **simplify**: a write becomes a read, a two-slot munmap one slot;
5. **schedule**: truncate the tail (after an explicit schedule each CPU runs
   to completion in turn), ddmin over the entries (each dropped entry is a
   preemption fewer: neighbours of the same CPU merge on re-recording),
   lower the step counts; then the injected faults (flips): each ``true``
   that is not needed becomes ``false``.

Every accepted candidate is re-run and re-recorded (the schedule the run
actually took, which absorbs entries that no longer apply), so the result
replays exactly.  Finally the step counts are rewritten as ``until`` labels
(``{cpu: 1, until: "gup_fast:pmd_read"}``) where that replays the same
violation: that is how people write litmus schedules.

Removing an operation shifts what the recorded schedule's steps do; a
candidate that no longer fails under the old schedule is retried under the
default policy and, once the program is small (``SEARCH_OPS``), under a few
seeded random schedules, before it is rejected.  A second stage repeats the
passes with the schedule written as ``until`` labels, which survive the
removal of operations much better than step counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from impls.machine.choices import DEFAULT_BIASES, RCU, RandomChoices, Replay, SchedEntry, Schedule
from impls.machine.pgtable import PMD_SIZE
from impls.machine.plugin import Ops
from impls.machine.program import Op, Program
from oracle.verdict import Violation

from .run import Run, run_lockstep, run_program

#: default seconds per finding (an extra, optional bound: see DEFAULT_ATTEMPTS)
DEFAULT_BUDGET = 30.0
#: default runs per finding: campaigns bound minimisation by attempts, not
#: seconds, so that a slow or loaded worker writes the same reproducer
DEFAULT_ATTEMPTS = 3000
#: a candidate with at most this many operations that fails neither under the
#: old schedule nor the default one gets SEARCH_TRIES seeded random schedules
SEARCH_OPS = 24
SEARCH_TRIES = 8
#: start with the label stage (see the module docstring)
LABELS_FIRST = True
#: schedules with more entries than this skip the per-entry step lowering
LOWER_STEPS_MAX = 24


class _OutOfTime(Exception):
    pass


def size_of(p: Program) -> dict[str, int]:
    s = p.schedule or Schedule()
    return {"ops": len(p.ops), "setup": len(p.setup), "cpus": p.cpus, "vmas": len(p.vmas), "mms": p.mms,
            "sched_entries": len(s.sched), "preemptions": s.preemptions,
            "flips": sum(1 for _, v in s.flips for x in v if x)}


@dataclass
class Result:
    program: Program
    run: Run
    violation: Violation
    before: dict[str, int]
    after: dict[str, int]
    runs: int = 0
    seconds: float = 0.0
    complete: bool = True          # False: the budget or an interrupt cut it short
    interrupted: bool = False
    passes: list[str] = field(default_factory=list)


class _LabelRecorder(Replay):
    """Replay that notes, at every switch between agents, the preemption-point
    label the previous agent stopped at (to rewrite steps as ``until``)."""

    def __init__(self, schedule: Schedule | None) -> None:
        super().__init__(schedule)
        self.stops: list[tuple[int, str | None]] = []
        self._prev: int | None = None

    def pick(self, runnable, last):
        agent = super().pick(runnable, last)
        if self._prev is not None and agent != self._prev:
            self.stops.append((self._prev, self.last_label(self._prev)))
        self._prev = agent
        return agent


class Minimizer:
    def __init__(self, strategy: Ops, platform: Ops, signature: str, budget: float | None = DEFAULT_BUDGET,
                 should_stop: Callable[[], bool] = lambda: False,
                 log: Callable[[str], None] | None = None,
                 biases: dict[str, float] | None = None, lockstep: list[Ops] | None = None,
                 attempts: int | None = None) -> None:
        self.biases = dict(DEFAULT_BIASES if biases is None else biases)
        #: divergence findings: the property is "the lockstep of these
        #: strategies still diverges on the same observable" (``signature`` is
        #: then ``divergence|<observable>``, as fuzz.engine names it)
        self.lockstep = lockstep
        self.strategy = strategy
        self.platform = platform
        self.signature = signature
        self.budget = budget
        self.deadline = time.monotonic() + budget if budget is not None else float("inf")
        #: at most this many runs (None: no bound but the time budget)
        self.attempts = attempts if attempts is not None else 1 << 62
        self.should_stop = should_stop
        self.log = log or (lambda s: None)
        self.runs = 0
        self.rerecord = True
        self.labels_first = LABELS_FIRST
        self.best: Program | None = None
        self.best_run: Run | None = None
        self._cache: dict[Program, Run | None] = {}

    # -- the property ------------------------------------------------------------

    def _matching(self, run: Run) -> Violation | None:
        if self.lockstep is not None:
            return getattr(run, "divergence", None)
        for v in run.verdict.violations:
            if v.signature() == self.signature:
                return v
        return None

    def _run(self, p: Program, choices=None) -> Run:
        if self.lockstep is None:
            return run_program(p, self.strategy, self.platform, choices)
        res = run_lockstep(p, self.lockstep, self.platform)
        run = res.runs[0]
        want = self.signature.split("|", 1)[1] if "|" in self.signature else ""
        run.divergence = next((d for d in res.divergences if str(d.extra.get("observable", "")) == want), None)
        return run

    def check(self, p: Program) -> Run | None:
        """Run ``p`` with its schedule; the run if it reproduces the violation."""
        if p in self._cache:
            return self._cache[p]
        self._budget_left()
        self.runs += 1
        run = self._run(p)
        ok = run if self._matching(run) is not None else None
        if len(self._cache) < 20_000:
            self._cache[p] = ok
        return ok

    def _budget_left(self) -> None:
        if self.runs >= self.attempts or self.should_stop() or (
                self.deadline != float("inf") and time.monotonic() > self.deadline):
            raise _OutOfTime

    def accept(self, p: Program, run: Run) -> Program:
        """Re-record: the schedule the run actually took, trailing default
        decisions trimmed later by the schedule pass.  In the label stage the
        candidate's own ``until`` schedule is kept (it replays exactly too,
        and survives the removal of operations far better than step counts)."""
        rec = p.with_schedule(_canonical(run.history.meta["schedule"])) if self.rerecord else p
        self.best, self.best_run = rec, run
        return rec

    def attempt(self, p: Program, variants: bool = True) -> Program | None:
        """``p`` (re-recorded) if it, or a schedule variation of it, still fails."""
        run = self.check(p)
        if run is not None:
            return self.accept(p, run)
        if not variants:
            return None
        for alt in _schedule_variants(p):
            run = self.check(alt)
            if run is not None:
                return self.accept(alt, run)
        if len(p.ops) <= SEARCH_OPS:
            # a small program: look for a new schedule (seeded random runs)
            for k in range(SEARCH_TRIES):
                self._budget_left()
                self.runs += 1
                if self.lockstep is not None:
                    break
                run = self._run(p, RandomChoices(k, self.biases))
                if self._matching(run) is not None:
                    rec = p.with_schedule(_canonical(run.history.meta["schedule"]))
                    self.best, self.best_run = rec, run
                    return rec
        return None

    # -- passes --------------------------------------------------------------------------

    @staticmethod
    def _ddmin(p: Program, seq: Callable[[Program], tuple], without: Callable[[Program, int, int], Program],
               attempt: Callable[[Program], Program | None]) -> Program | None:
        """Greedy delta debugging over one sequence of the program: remove
        chunks of len/2, len/4, ..., 1 while ``attempt`` accepts the candidate
        (it returns the program to continue from).  None if nothing could be
        removed."""
        cur = p
        changed = False
        k = max(1, len(seq(cur)) // 2)
        while seq(cur):
            i = 0
            removed_any = False
            while i < len(seq(cur)):
                got = attempt(without(cur, i, k))
                if got is not None:
                    cur = got
                    changed = removed_any = True
                else:
                    i += k
            if k == 1 and not removed_any:
                break
            k = max(1, k // 2)
        return cur if changed else None

    def _ddmin_field(self, p: Program, name: str, valid: Callable[[Program], bool] = lambda q: True,
                     variants: bool = True) -> Program | None:
        """_ddmin over a tuple field of the program (each accepted candidate re-recorded)."""
        def without(q: Program, i: int, k: int) -> Program:
            xs = getattr(q, name)
            return replace(q, **{name: xs[:i] + xs[i + k:]})
        return self._ddmin(p, lambda q: getattr(q, name), without,
                           lambda c: self.attempt(c, variants) if valid(c) else None)

    def pass_cpus(self, p: Program) -> Program:
        cur = p
        c = cur.cpus - 1
        while c >= 0 and cur.cpus > 1:
            for cand in _without_cpu(cur, c):
                got = self.attempt(cand)
                if got is not None:
                    cur = got
                    break
            c -= 1
        return cur

    def pass_merge(self, p: Program) -> Program:
        """Two CPUs become one where the signature survives (highest first)."""
        cur = p
        b = cur.cpus - 1
        while b >= 1 and cur.cpus > 1:
            merged = False
            for a in range(b):
                for cand in _merged_cpus(cur, a, b):
                    got = self.attempt(cand)
                    if got is not None:
                        cur, merged = got, True
                        break
                if merged:
                    break
            b = min(b - 1, cur.cpus - 1) if not merged else cur.cpus - 1
        return cur

    def pass_setup(self, p: Program) -> Program:
        cur = self._ddmin_field(p, "setup") or p
        cur = self._ddmin_field(cur, "vmas") or cur
        cur = self._ddmin_field(cur, "file_vmas") or cur
        for m in range(cur.mms - 1, -1, -1):
            if cur.mms <= 1:
                break
            cand = _without_mm(cur, m)
            if cand is not None:
                got = self.attempt(cand)
                if got is not None:
                    cur = got
        return cur

    def pass_simplify(self, p: Program) -> Program:
        cur = p
        for field_name in ("ops", "setup"):
            i = 0
            while i < len(getattr(cur, field_name)):
                op = getattr(cur, field_name)[i]
                for simpler in _simpler(op):
                    seq = getattr(cur, field_name)
                    cand = replace(cur, **{field_name: seq[:i] + (simpler,) + seq[i + 1:]})
                    got = self.attempt(cand)
                    if got is not None:
                        cur = got
                        break
                i += 1
        return cur

    def pass_schedule(self, p: Program) -> Program:
        cur = self.trim_tail(p)
        # drop entries (fewer preemptions); the re-recording merges neighbours
        got = self._ddmin_sched(cur)
        cur = self.trim_tail(got) if got is not None else cur
        # lower step counts (a binary search per entry: only once the schedule is short)
        i = 0
        while cur.schedule is not None and len(cur.schedule.sched) <= LOWER_STEPS_MAX and \
                i < len(cur.schedule.sched):
            e = cur.schedule.sched[i]
            if e.until is None and e.steps > 1:
                lo, hi = 1, e.steps  # find the smallest count that still fails
                while lo < hi:
                    mid = (lo + hi) // 2
                    cand = _with_entry(cur, i, SchedEntry(e.agent, mid))
                    if self.check(cand) is not None:
                        hi = mid
                    else:
                        lo = mid + 1
                if hi < e.steps:
                    cand = _with_entry(cur, i, SchedEntry(e.agent, hi))
                    run = self.check(cand)
                    if run is not None:
                        cur = self.trim_tail(self.accept(cand, run))
            i += 1
        # flips: each true that is not needed becomes false
        s = cur.schedule or Schedule()
        for label, values in s.flips:
            for j, v in enumerate(values):
                if not v:
                    continue
                fl = cur.schedule.flips_dict() if cur.schedule else {}
                vals = list(fl.get(label, ()))
                if j >= len(vals) or not vals[j]:
                    continue
                vals[j] = False
                fl[label] = tuple(vals)
                cand = cur.with_schedule(Schedule(cur.schedule.sched, _flips(fl)))
                got = self.attempt(cand, variants=False)
                if got is not None:
                    cur = self.trim_tail(got)
        return cur

    def _ddmin_sched(self, p: Program) -> Program | None:
        """_ddmin over the schedule's entries (flips kept)."""
        def without(q: Program, i: int, k: int) -> Program:
            s = q.schedule
            return q.with_schedule(Schedule(s.sched[:i] + s.sched[i + k:], s.flips))

        def attempt(cand: Program) -> Program | None:
            run = self.check(cand)
            if run is None:
                return None
            got = self.accept(cand, run)
            return self.trim_tail(got) if self.rerecord else got
        return self._ddmin(p, lambda q: q.schedule.sched if q.schedule is not None else (), without, attempt)

    def trim_tail(self, p: Program) -> Program:
        """The shortest prefix of the schedule (entries and flips) that still
        fails: after it, the default policy runs each CPU to completion."""
        s = p.schedule
        if s is None:
            return p
        flips = _flips({k: _rstrip_false(v) for k, v in s.flips})
        cur = p.with_schedule(Schedule(s.sched, flips))
        # the shortest failing prefix (binary search; only checked prefixes are kept)
        entries = cur.schedule.sched
        lo, hi = 0, len(entries)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.check(cur.with_schedule(Schedule(entries[:mid], cur.schedule.flips))) is not None:
                hi = mid
            else:
                lo = mid + 1
        cur = cur.with_schedule(Schedule(entries[:hi], cur.schedule.flips))
        # the last entry's step count: as few as needed
        if cur.schedule.sched:
            e = cur.schedule.sched[-1]
            if e.until is None and e.steps > 1:
                lo, hi = 1, e.steps
                while lo < hi:
                    mid = (lo + hi) // 2
                    if self.check(_with_entry(cur, len(cur.schedule.sched) - 1, SchedEntry(e.agent, mid))):
                        hi = mid
                    else:
                        lo = mid + 1
                cur = _with_entry(cur, len(cur.schedule.sched) - 1, SchedEntry(e.agent, hi))
        if self.check(cur) is None:  # pragma: no cover  (defensive: keep what replays)
            return p
        self.best, self.best_run = cur, self.check(cur)
        return cur

    def prettify(self, p: Program) -> Program:
        """Rewrite step counts as ``until`` labels where that still fails."""
        s = p.schedule
        if s is None or not s.sched:
            return p
        rec = _LabelRecorder(s)
        from impls.machine.machine import Machine
        Machine(p, self.strategy, self.platform, rec).run()
        stops = rec.stops
        # the i-th entry ends at the i-th switch (entries alternate agents)
        new: list[SchedEntry] = []
        for i, e in enumerate(s.sched):
            label = stops[i][1] if i < len(stops) and stops[i][0] == e.agent else None
            if e.agent != RCU and label and label != "done":
                new.append(SchedEntry(e.agent, 1, label))
            else:
                new.append(e)
        cand = p.with_schedule(Schedule(tuple(new), s.flips))
        if cand != p and self.check(cand) is not None:
            return cand
        # one entry at a time
        cur = p
        for i, e in enumerate(new):
            if e.until is None:
                continue
            c = _with_entry(cur, i, e)
            if self.check(c) is not None:
                cur = c
        return cur

    # -- driver ----------------------------------------------------------------------------

    def _fixpoint(self, cur: Program, passes: list[str], label_stage: bool = False) -> Program:
        steps: list[tuple[str, Callable[[Program], Program]]] = [
            ("ops", lambda q: self._ddmin_field(q, "ops") or q), ("cpus", self.pass_cpus),
            ("merge", self.pass_merge),
            ("setup", self.pass_setup), ("simplify", self.pass_simplify)]
        steps.append(("schedule", self.pass_schedule_labels if label_stage else self.pass_schedule))
        while True:
            old = size_of(cur)
            for name, fn in steps:
                new = fn(cur)
                if size_of(new) != size_of(cur):
                    passes.append(name + ("@labels" if label_stage else ""))
                cur = new
            if size_of(cur) == old:
                return cur

    def cut_after_witness(self, p: Program) -> Program:
        """One cheap first try: drop every operation that had not begun when
        the violation's last witness event happened."""
        run = self.check(p)
        v = self._matching(run) if run is not None else None
        if v is None or not v.witness:
            return p
        last = max(e.seq for e in v.witness)
        begun = {e.a["op"] for e in run.history.events if e.kind == "op_begin" and e.seq <= last}
        keep = tuple(op for i, op in enumerate(p.ops) if i in begun)
        if len(keep) == len(p.ops):
            return p
        return self.attempt(replace(p, ops=keep)) or p

    def pass_schedule_labels(self, p: Program) -> Program:
        """Drop ``until`` entries (and trailing ones) while the bug stays."""
        return self._ddmin_sched(p) or p

    def run(self, program: Program) -> Result:
        t0 = time.monotonic()
        before = size_of(program)
        first = self._run(program)
        self.runs += 1
        if self._matching(first) is None:
            raise ValueError("the program does not reproduce the violation (signature "
                             f"{self.signature!r}) when replayed with its schedule")
        self.best, self.best_run = self.accept(program, first), first
        # the recorded schedule replays exactly; make sure (a Replay quirk would show here)
        cur = self.best
        complete, interrupted = True, False
        passes: list[str] = []
        try:
            if self.check(cur) is None:  # pragma: no cover
                cur = program
            cur = self.cut_after_witness(cur)
            cur = self.trim_tail(cur)
            if self.labels_first:
                labelled = self.prettify(cur)
                if labelled != cur:
                    self.rerecord = False
                    cur = self._fixpoint(labelled, passes, label_stage=True)
                    self.rerecord = True
                    cur = self.trim_tail(self.attempt(cur, variants=False) or cur)
            # stage 1: step-count schedules, re-recorded after every success
            cur = self._fixpoint(cur, passes)
            # stage 2: the schedule as `until` labels, kept as such
            labelled = self.prettify(cur)
            if labelled != cur:
                self.rerecord = False
                cur = self._fixpoint(labelled, passes, label_stage=True)
            cur = self.prettify(cur)
        except _OutOfTime:
            complete = False
            cur = self.best or cur
        except KeyboardInterrupt:
            complete, interrupted = False, True
            cur = self.best or cur
        final = self._run(cur)
        self.runs += 1
        v = self._matching(final)
        if v is None:  # pragma: no cover  (never accept a program that does not replay)
            cur, final = self.best or program, self.best_run or first
            v = self._matching(final)
        return Result(cur, final, v, before, size_of(cur), self.runs, time.monotonic() - t0,
                      complete, interrupted, passes)


def minimize(program: Program, strategy: Ops, platform: Ops, signature: str,
             budget: float | None = DEFAULT_BUDGET, should_stop: Callable[[], bool] = lambda: False,
             biases: dict[str, float] | None = None, lockstep: list[Ops] | None = None,
             attempts: int | None = None) -> Result:
    """Minimise ``program`` (with its schedule) keeping a violation with
    ``signature`` (``Violation.signature()``) on ``strategy``; at most ``budget``
    seconds (None: no time bound) and ``attempts`` runs (None: no bound); the
    result depends on the time only if the time bound is reached first.
    ``biases``: the environment's flip probabilities, for the schedule search.
    ``lockstep``: minimise a divergence between these strategies instead (``signature`` ``divergence|<observable>``)."""
    return Minimizer(strategy, platform, signature, budget, should_stop, biases=biases,
                     lockstep=lockstep, attempts=attempts).run(program)


# -- program surgery -------------------------------------------------------------------------


def _canonical(s: Schedule) -> Schedule:
    return Schedule(s.sched, _flips({k: _rstrip_false(v) for k, v in s.flips}))


def _rstrip_false(v: Sequence[bool]) -> tuple[bool, ...]:
    v = list(v)
    while v and not v[-1]:
        v.pop()
    return tuple(v)


def _flips(d: dict[str, Sequence[bool]]) -> tuple[tuple[str, tuple[bool, ...]], ...]:
    return tuple((k, tuple(v)) for k, v in sorted(d.items()) if any(v))


def _with_entry(p: Program, i: int, e: SchedEntry) -> Program:
    s = p.schedule or Schedule()
    return p.with_schedule(Schedule(s.sched[:i] + (e,) + s.sched[i + 1:], s.flips))


def _schedule_variants(p: Program) -> list[Program]:
    """Other schedules to try when a smaller program no longer fails under the
    old one: the default policy."""
    if p.schedule is None or not p.schedule.sched:
        return []
    return [p.with_schedule(Schedule((), p.schedule.flips))]


def _renumber_sched(s: Schedule | None, c: int) -> Schedule | None:
    if s is None:
        return None
    out: list[SchedEntry] = []
    for e in s.sched:
        if e.agent == c:
            continue
        a = e.agent - 1 if e.agent > c else e.agent
        if out and out[-1].agent == a and out[-1].until is None and e.until is None:
            out[-1] = SchedEntry(a, out[-1].steps + e.steps)
        else:
            out.append(SchedEntry(a, e.steps, e.until))
    return Schedule(tuple(out), s.flips)


def _without_cpu(p: Program, c: int) -> list[Program]:
    """Candidates without CPU ``c``: its setup operations dropped, or moved to
    another CPU starting in the same mm."""
    def shift(op: Op) -> Op:
        return replace(op, cpu=op.cpu - 1) if op.cpu > c else op

    start = tuple(p.start_of(i) for i in range(p.cpus))
    new_start = start[:c] + start[c + 1:]
    ops = tuple(shift(o) for o in p.ops if o.cpu != c)
    sched = _renumber_sched(p.schedule, c)
    out = []
    mine = [o for o in p.setup if o.cpu == c]
    dropped = tuple(shift(o) for o in p.setup if o.cpu != c)
    out.append(replace(p, cpus=p.cpus - 1, start=new_start, ops=ops, setup=dropped, schedule=sched))
    if mine:
        other = next((i for i in range(p.cpus) if i != c and start[i] == start[c]), None)
        if other is not None:
            moved = tuple(shift(replace(o, cpu=other)) if o.cpu == c else shift(o) for o in p.setup)
            out.append(replace(p, cpus=p.cpus - 1, start=new_start, ops=ops, setup=moved, schedule=sched))
    return out


def _merged_cpus(p: Program, a: int, b: int) -> list[Program]:
    """Candidates where CPU ``b``'s operations (setup included) run on CPU
    ``a`` instead, ``b`` gone and the CPUs above it renumbered: its
    operations in file order among ``a``'s, after them, or before them.  Only
    for CPUs that start in the same mm (an operation acts on its CPU's mm)."""
    if a == b or p.start_of(a) != p.start_of(b):
        return []

    def moved(op: Op) -> Op:
        cpu = a if op.cpu == b else op.cpu
        return replace(op, cpu=cpu - 1 if cpu > b else cpu)

    start = tuple(p.start_of(i) for i in range(p.cpus))
    new_start = start[:b] + start[b + 1:]
    setup = tuple(moved(o) for o in p.setup)
    mine = [o for o in p.ops if o.cpu == a]
    theirs = [o for o in p.ops if o.cpu == b]
    rest = [o for o in p.ops if o.cpu not in (a, b)]
    orders = [p.ops, rest + mine + theirs, rest + theirs + mine]
    s = p.schedule
    sched = None
    if s is not None:  # b's turns become a's; the acceptance re-records what actually ran
        sched = _renumber_sched(Schedule(tuple(SchedEntry(a if e.agent == b else e.agent, e.steps, e.until)
                                               for e in s.sched), s.flips), b)
    out: list[Program] = []
    for ops in orders:
        cand = replace(p, cpus=p.cpus - 1, start=new_start, setup=setup, ops=tuple(moved(o) for o in ops),
                       schedule=sched)
        if cand not in out:
            out.append(cand)
    return out


def _without_mm(p: Program, m: int) -> Program | None:
    """Drop address space ``m`` if nothing starts in it or switches to it."""
    start = tuple(p.start_of(i) for i in range(p.cpus))
    if m in start or any(o.kind == "switch" and o.mm == m for o in p.ops + p.setup):
        return None

    def mm_of(x: int | None) -> int | None:
        return x - 1 if x is not None and x > m else x

    return replace(
        p, mms=p.mms - 1, start=tuple(mm_of(s) for s in start),
        vmas=tuple((mm_of(vm), s, n) for vm, s, n in p.vmas if vm != m),
        file_vmas=tuple((mm_of(vm), s, n, f, o) for vm, s, n, f, o in p.file_vmas if vm != m),
        ops=tuple(replace(o, mm=mm_of(o.mm)) if o.kind == "switch" else o for o in p.ops),
        setup=tuple(replace(o, mm=mm_of(o.mm)) if o.kind == "switch" else o for o in p.setup))


def _simpler(op: Op) -> list[Op]:
    out = []
    if op.write:
        out.append(replace(op, write=False))
    if op.kind in ("munmap", "madvise", "populate", "mmap", "truncate") and op.len > PMD_SIZE:
        out.append(replace(op, len=PMD_SIZE))
    if op.kind == "populate" and op.len > 0x1000:
        out.append(replace(op, len=0x1000))
    return out
