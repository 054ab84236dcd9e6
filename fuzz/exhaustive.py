"""Systematic exploration of one program: every scheduling decision and every
labelled choice, up to a bound.

The explorer is a stateless model checker in the style of CHESS, Shuttle's
DFS scheduler and Loom: it re-runs the program from the start for every
execution, replaying a prefix of decisions and extending it depth first.  The
choice tree has two kinds of nodes, both asked through the one
:class:`~impls.machine.choices.Choices` interface the machine already uses:

* a **pick** (which runnable agent steps next: a CPU or the RCU agent);
* a **flip** (a labelled yes/no decision inside a step; ``False`` is the
  default, so ``True`` is the deviation).

**Bound** (CHESS's iterative context bounding).  A *preemption* is a pick of an
agent other than the one that ran last while that one could still run;
switching when it blocked or finished is free, and so is the first pick.  A
*choice* is a flip answered ``True``.  An execution is within bound
``(K, F)`` if it has at most ``K`` preemptions and at most ``F`` choices; the
explorer runs the bounds ``K = 0, 1, ...`` in turn (iterative deepening), so a
budget stop still tells which bound was completed.

**Reduction** (optional, on by default): sleep sets (Godefroid) over
transitions ``(agent, the flips of its step)``, with independence from the
per-step read/write footprints that ``impls/machine/footprint.py`` records.
Sleep sets are unsound under a preemption bound if applied naively (Musuvathi
& Qadeer, MSR-TR-2007-12; Coons et al., OOPSLA 2013): the equivalent
execution that would cover a pruned one may cost more preemptions and have
been cut by the bound.  So a sleeping transition is skipped only when an upper
bound on the preemptions of its covering execution fits the budget the
covering subtree was explored with (see ``_may_prune`` and ARCHITECTURE.md,
"Exhaustive exploration", for the argument).  Otherwise it is explored again.

Every execution the explorer reports is a ``Program + Schedule`` that
:class:`~impls.machine.choices.Replay` replays exactly: each pick becomes one
``{cpu: N, steps: 1}`` (run-length encoded) and each flip its label's queue.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from impls.machine.choices import Choices, Schedule
from impls.machine.footprint import Footprint, Tracer
from impls.machine.machine import DEFAULT_MAX_STEPS, Machine
from impls.machine.plugin import Ops, PluginFailure, blame
from impls.machine.program import Program
from oracle import Verdict, check_history

#: checkpoint format version
STATE_VERSION = 1


class _Prune(Exception):
    """Raised from the choice source to abandon an execution (sleep set)."""


@dataclass
class SleepEntry:
    """A transition explored earlier at an ancestor (or sibling) node, kept
    asleep while the path runs steps independent of it."""

    agent: int
    flips: tuple            # ((label, value), ...) asked during the step
    fp: Footprint           # the step's footprint
    en: Footprint           # the agent's enabledness test at the node it was taken
    budget: int             # preemptions left at the node where it was explored
    spent: int              # upper bound on preemptions its covering execution used so far
    prev: int               # the agent that ran last on that covering execution

    def to_json(self) -> list:
        return [self.agent, [list(x) for x in self.flips], self.fp.to_json(), self.en.to_json(),
                self.budget, self.spent, self.prev]

    @classmethod
    def from_json(cls, j: list) -> SleepEntry:
        return cls(j[0], tuple(tuple(x) for x in j[1]), Footprint.from_json(j[2]),
                   Footprint.from_json(j[3]), j[4], j[5], j[6])


@dataclass
class Node:
    """One decision on the current path."""

    kind: str                       # "pick" or "flip"
    options: list                   # agents, or [False, True]
    i: int = 0                      # the option taken now
    label: str = ""                 # flip label
    pre: int = 0                    # preemptions left before this decision
    flips_left: int = 0             # choices left before this decision
    # pick nodes only
    last: int | None = None
    costs: list = field(default_factory=list)
    en: dict = field(default_factory=dict)          # agent -> Footprint
    sleep: list = field(default_factory=list)       # inherited SleepEntry
    done: list = field(default_factory=list)        # SleepEntry explored here
    cur: SleepEntry | None = None                   # the transition being explored

    @property
    def choice(self) -> Any:
        return self.options[self.i]

    def to_json(self) -> dict:
        return {"kind": self.kind, "options": self.options, "i": self.i, "label": self.label,
                "pre": self.pre, "flips_left": self.flips_left, "last": self.last,
                "costs": self.costs,
                "en": [[a, f.to_json()] for a, f in sorted(self.en.items())],
                "sleep": [e.to_json() for e in self.sleep],
                "done": [e.to_json() for e in self.done],
                "cur": self.cur.to_json() if self.cur else None}

    @classmethod
    def from_json(cls, j: dict) -> Node:
        return cls(j["kind"], j["options"], j["i"], j["label"], j["pre"], j["flips_left"], j["last"],
                   j["costs"], {a: Footprint.from_json(f) for a, f in j["en"]},
                   [SleepEntry.from_json(e) for e in j["sleep"]],
                   [SleepEntry.from_json(e) for e in j["done"]],
                   SleepEntry.from_json(j["cur"]) if j["cur"] else None)


def _independent(e: SleepEntry, agent: int, fp: Footprint, en: Footprint) -> bool:
    """May ``e`` and the step ``(agent, fp)`` be swapped?  Different agents,
    no conflict between the steps, and neither writes what decides whether the
    other can run."""
    if e.agent == agent:
        return False
    if e.fp.conflicts(fp):
        return False
    if fp.opaque or e.fp.opaque or en.opaque or e.en.opaque:
        return False
    if not fp.writes.isdisjoint(e.en.reads) or not e.fp.writes.isdisjoint(en.reads):
        return False
    return True


def _may_prune(e: SleepEntry, cost_here: int, pre_here: int) -> bool:
    """Taking the sleeping transition ``e`` here is covered by the execution
    that took it first, at the node where it was explored with ``e.budget``
    preemptions left.  That covering execution is ``s.t.u.v...w`` for this
    one's ``s.u.v...t.w``: it spent at most ``e.spent`` preemptions up to the
    hole, then the same ``w`` with at most one more preemption (``w`` may
    start with a switch that this execution gets for free).  This execution
    can still spend ``pre_here - cost_here`` on ``w``.  The cover was within
    its budget, hence explored (or covered in turn), if
    ``e.spent + 1 + (pre_here - cost_here) <= e.budget``."""
    return e.spent + 1 + pre_here - cost_here <= e.budget


class _ExploreChoices(Choices):
    """Replays the explorer's path, extends it with default decisions, and
    records the footprints the traced scheduler loop reports."""

    def __init__(self, ex: Explorer) -> None:
        super().__init__()
        self.ex = ex
        self.tracer = ex.tracer if ex.reduce else None
        self.pos = 0                      # next node index on ex.stack
        self._en: dict[int, Footprint] = {}
        self._pick_node: Node | None = None
        self._step_flips: list[tuple[str, bool]] = []
        self._sleep_next: list[SleepEntry] = []
        self._barrier = False
        self.preemptions = 0
        self.flips_true = 0

    # -- hooks of the traced scheduler loop ----------------------------------
    def enabled(self, en: dict[int, Footprint]) -> None:
        self._en = en

    def barrier(self) -> None:
        self._barrier = True

    def stepped(self, agent: int, fp: Footprint) -> None:
        node = self._pick_node
        assert node is not None
        flips = tuple(self._step_flips)
        en = node.en.get(agent, Footprint())
        cur = SleepEntry(agent, flips, fp, en, node.pre, node.costs[node.i], agent)
        node.cur = cur
        for e in node.sleep:
            if e.agent == agent and e.flips == flips and _may_prune(e, node.costs[node.i], node.pre):
                self.ex.stats.pruned += 1
                raise _Prune
        nxt = []
        for e in node.sleep + node.done:
            if _independent(e, agent, fp, en):
                nxt.append(SleepEntry(e.agent, e.flips, e.fp, e.en, e.budget,
                                      e.spent + (1 if agent != e.prev else 0), agent))
        self._sleep_next = nxt

    # -- the choice source -------------------------------------------------------
    def _pick(self, runnable: Sequence[int], last: int | None) -> int:
        ex = self.ex
        stack = ex.stack
        if self._barrier:
            self._sleep_next = []
            self._barrier = False
        pre = ex.bound_pre - self.preemptions
        if self.pos < len(stack):
            node = stack[self.pos]
            assert node.kind == "pick", "nondeterminism: the replayed path diverged"
        else:
            can_stay = last is not None and last in runnable
            order = ([last] if can_stay else []) + [a for a in runnable if a != last or not can_stay]
            costs = [1 if (can_stay and a != last) else 0 for a in order]
            keep = [(a, c) for a, c in zip(order, costs, strict=True) if c <= pre]
            if len(keep) < len(order):
                ex.stats.cut += 1
            node = Node("pick", [a for a, _ in keep], 0, pre=pre,
                        flips_left=ex.bound_flips - self.flips_true, last=last,
                        costs=[c for _, c in keep], en=dict(self._en) if self.tracer else {},
                        sleep=self._sleep_next)
            stack.append(node)
        self.pos += 1
        self._pick_node = node
        self._step_flips = []
        agent = node.choice
        self.preemptions += node.costs[node.i]
        return agent

    def _flip(self, label: str) -> bool:
        ex = self.ex
        stack = ex.stack
        if self.pos < len(stack):
            node = stack[self.pos]
            assert node.kind == "flip" and node.label == label, \
                "nondeterminism: the replayed path diverged"
        else:
            left = ex.bound_flips - self.flips_true
            allowed = ex.flip_allowed is None or ex.flip_allowed(label)
            opts = [False, True] if left > 0 and allowed else [False]
            if left <= 0 and allowed:
                ex.stats.cut += 1
            node = Node("flip", opts, 0, label=label, pre=ex.bound_pre - self.preemptions,
                        flips_left=left)
            stack.append(node)
        self.pos += 1
        v = bool(node.choice)
        self.flips_true += v
        self._step_flips.append((label, v))
        return v


@dataclass
class Stats:
    executions: int = 0     # complete executions judged
    pruned: int = 0         # executions abandoned by the sleep sets
    cut: int = 0            # decision points where the bound removed options
    runs: int = 0           # machine runs started (executions + pruned)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Execution:
    """One complete execution: its schedule and its verdict."""

    schedule: Schedule
    verdict: Verdict
    final: Any                     # the ``final`` event's attributes, or the outcome
    preemptions: int
    choices: int


@dataclass
class Result:
    strategy: str
    bound_pre: int                 # the bound asked for
    bound_flips: int
    reduce: bool
    completed_bound: int           # the largest K fully explored (-1: none)
    complete: bool                 # every bound up to bound_pre was explored
    exhaustive: bool               # the bound never removed an option: all schedules
    stats: Stats
    violation: Execution | None = None
    per_bound: list = field(default_factory=list)   # (K, executions, pruned, seconds)
    stopped: str = ""              # why it stopped early ("budget", "interrupt")

    @property
    def proven(self) -> bool:
        return self.violation is None and self.complete

    @property
    def reduction(self) -> str:
        return "sleep sets" if self.reduce else "none"

    def summary(self) -> str:
        s = self.stats
        red = self.reduction
        if self.violation is not None:
            v = self.violation
            return (f"violation after {s.executions} executions ({s.pruned} pruned, reduction "
                    f"{red}); that execution has {v.preemptions} preemption(s) and {v.choices} "
                    "choice(s)")
        if self.complete:
            scope = ("all schedules (the bound was never reached)" if self.exhaustive
                     else f"bound {self.bound_pre} preemption(s), {self.bound_flips} choice(s)")
            return (f"no violation in all {s.executions} executions ({scope}, reduction {red}, "
                    f"{s.pruned} pruned, {s.seconds:.1f}s)")
        done = (f"bound {self.completed_bound} completed" if self.completed_bound >= 0
                else "no bound completed")
        return (f"PARTIAL: stopped by the {self.stopped or 'budget'} after {s.executions} "
                f"executions ({done}, reduction {red}, {s.pruned} pruned, {s.seconds:.1f}s): "
                "not a proof")


class Explorer:
    """Depth-first exploration of one program on one strategy and platform."""

    def __init__(self, program: Program, strategy: Ops, platform: Ops, preemptions: int = 2,
                 choices: int = 2, reduce: bool = True, max_steps: int = DEFAULT_MAX_STEPS,
                 on_execution: Callable[[Execution], bool] | None = None,
                 state_file: str | os.PathLike | None = None,
                 flip_allowed: Callable[[str], bool] | None = None) -> None:
        self.program = replace(program, schedule=None)
        #: labels that may be answered true (None: every label); the others
        #: are always false, as an environment without that fault injection
        self.flip_allowed = flip_allowed
        self.strategy = strategy
        self.platform = platform
        self.max_pre = preemptions
        self.bound_flips = choices
        self.reduce = reduce
        self.max_steps = max_steps
        self.on_execution = on_execution
        self.state_file = Path(state_file) if state_file else None
        self.tracer = Tracer()
        self.stack: list[Node] = []
        self.fresh_from = 0
        self.bound_pre = 0
        self.stats = Stats()
        self.per_bound: list = []
        self.per_bound_start: tuple = (0, 0, 0.0, 0)
        self.exhaustive = False

    # -- one execution ---------------------------------------------------------
    def _run_one(self) -> Execution | None:
        ch = _ExploreChoices(self)
        self.tracer.reset()
        m = Machine(self.program, self.strategy, self.platform, ch, self.max_steps)
        self.stats.runs += 1
        try:
            h = m.run()
        except _Prune:
            m.release()
            return None
        except (Exception, SystemExit) as e:
            failure = blame(e, [self.strategy, self.platform])   # a plug-in's code raised: its error
            if failure is None:
                raise
            raise failure from e
        finally:
            self.tracer.off()
        m.release()
        assert ch.pos == len(self.stack), "nondeterminism: the replayed path was not used up"
        verdict = check_history(h)
        final = next((e.a for e in reversed(h.events) if e.kind == "final"), h.meta.get("outcome"))
        self.stats.executions += 1
        return Execution(h.meta["schedule"], verdict, final, ch.preemptions, ch.flips_true)

    def _backtrack(self) -> bool:
        """Advance the deepest decision that has an option left; False when
        the tree is exhausted."""
        stack = self.stack
        while stack:
            j = len(stack) - 1
            node = stack[j]
            # the pick node whose step this node is part of (or the node itself)
            p = j
            while p >= 0 and stack[p].kind != "pick":
                p -= 1
            if node.i + 1 < len(node.options):
                if p >= 0 and stack[p].cur is not None and self.reduce:
                    stack[p].done.append(stack[p].cur)
                    stack[p].cur = None
                node.i += 1
                self.fresh_from = j + 1
                return True
            stack.pop()
        return False

    # -- checkpoints -------------------------------------------------------------
    def _key(self) -> dict:
        return {"version": STATE_VERSION, "program": repr(self.program), "strategy": self.strategy.name,
                "platform": self.platform.name, "preemptions": self.max_pre,
                "choices": self.bound_flips, "reduce": self.reduce}

    def save(self) -> None:
        if self.state_file is None:
            return
        data = {"key": self._key(), "bound": self.bound_pre, "stack": [n.to_json() for n in self.stack],
                "stats": self.stats.to_json(), "per_bound": self.per_bound,
                "per_bound_start": list(self.per_bound_start), "fresh_from": self.fresh_from}
        tmp = self.state_file.with_suffix(self.state_file.suffix + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.state_file)

    def _load(self) -> bool:
        if self.state_file is None or not self.state_file.exists():
            return False
        data = json.loads(self.state_file.read_text())
        if data.get("key") != self._key():
            raise ValueError(f"{self.state_file}: a checkpoint of another exploration")
        self.bound_pre = data["bound"]
        self.stack = [Node.from_json(n) for n in data["stack"]]
        self.stats = Stats(**data["stats"])
        self.per_bound = [tuple(x) for x in data["per_bound"]]
        self.per_bound_start = tuple(data["per_bound_start"])
        self.fresh_from = data["fresh_from"]
        return True

    # -- the search ------------------------------------------------------------------
    def run(self, budget_s: float | None = None, max_executions: int | None = None,
            stop_at_violation: bool = True, should_stop: Callable[[], bool] = lambda: False) -> Result:
        t0 = time.process_time()
        resumed = self._load()
        base = self.stats.seconds
        violation: Execution | None = None
        stopped = ""
        last_save = time.monotonic()
        complete = False
        if self.reduce:
            self.tracer.install()
        try:
            start = self.bound_pre if resumed else 0
            for k in range(start, self.max_pre + 1):
                self.bound_pre = k
                if not (resumed and k == start):
                    self.stack = []
                    self.fresh_from = 0
                    self.per_bound_start = (self.stats.executions, self.stats.pruned,
                                            self.stats.seconds, self.stats.cut)
                elif not hasattr(self, "per_bound_start"):
                    self.per_bound_start = (0, 0, 0.0, 0)
                while True:
                    ex = self._run_one()
                    self.stats.seconds = base + time.process_time() - t0
                    if ex is not None:
                        if self.on_execution is not None and self.on_execution(ex):
                            stopped = "caller"
                        if not ex.verdict.ok and violation is None:
                            violation = ex
                            if stop_at_violation:
                                stopped = stopped or "violation"
                    if not self._backtrack():
                        break           # this bound is done
                    if stopped:
                        break
                    if should_stop():
                        stopped = "interrupt"
                    elif budget_s is not None and self.stats.seconds >= budget_s:
                        stopped = "budget"
                    elif max_executions is not None and self.stats.runs >= max_executions:
                        stopped = "budget"
                    if stopped:
                        break
                    if self.state_file is not None and time.monotonic() - last_save > 5:
                        self.save()
                        last_save = time.monotonic()
                if stopped:
                    break
                e0, p0, s0, c0 = self.per_bound_start
                self.per_bound.append((k, self.stats.executions - e0, self.stats.pruned - p0,
                                       round(self.stats.seconds - s0, 3)))
                if self.stats.cut == c0:
                    # neither bound removed an option: these are all the executions
                    self.exhaustive = True
                    complete = True
                    break
                self.exhaustive = False
                if k == self.max_pre:
                    complete = True
        finally:
            if self.reduce:
                self.tracer.uninstall()
        self.stats.seconds = base + time.process_time() - t0
        completed = self.per_bound[-1][0] if self.per_bound else -1
        if stopped in ("budget", "interrupt"):
            self.save()
        elif self.state_file is not None and self.state_file.exists():
            self.state_file.unlink()
        return Result(self.strategy.name, self.max_pre, self.bound_flips, self.reduce, completed,
                      complete and not stopped, self.exhaustive and complete and not stopped,
                      self.stats, violation, list(self.per_bound),
                      "" if stopped in ("", "violation") else stopped)


def explore(program: Program, strategy: Ops, platform: Ops, preemptions: int = 2, choices: int = 2,
            reduce: bool = True, budget_s: float | None = None, max_executions: int | None = None,
            stop_at_violation: bool = True, on_execution: Callable[[Execution], bool] | None = None,
            state_file: str | os.PathLike | None = None,
            should_stop: Callable[[], bool] = lambda: False,
            flip_allowed: Callable[[str], bool] | None = None) -> Result:
    """Explore ``program`` on ``strategy``/``platform`` within the bound."""
    return Explorer(program, strategy, platform, preemptions, choices, reduce,
                    on_execution=on_execution, state_file=state_file,
                    flip_allowed=flip_allowed).run(
        budget_s, max_executions, stop_at_violation, should_stop)


def schedule_program(program: Program, schedule: Schedule) -> Program:
    """The program with an explored execution's schedule: replays it exactly."""
    return replace(program, schedule=schedule)


# -- a unit of work for the execution layer (fuzz/execution.py) ---------------------------------


@dataclass
class ExhaustiveResult:
    """What an :class:`ExhaustiveUnit` returns (plus fuzz.work.Result's fields)."""

    worker: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    crash: str | None = None
    watchdog: dict | None = None
    error: str | None = None
    plugin_failure: str | None = None
    executions: int = 0
    pruned: int = 0
    proven: bool = False
    exhaustive: bool = False
    completed_bound: int = -1
    #: the first violating execution: the program with its schedule, and its verdict
    program: Program | None = None
    violations: tuple = ()
    preemptions: int = 0
    choices: int = 0


@dataclass(frozen=True)
class ExhaustiveUnit:
    """Explore one program on the cell's first strategy, within the bound and
    ``budget`` CPU seconds; only the labels in ``flips`` may be answered true."""

    cell: Any                      # fuzz.work.Cell
    program: Program
    preemptions: int
    choices: int
    budget: float
    flips: tuple[str, ...] | None = None
    reduce: bool = False
    version: str = field(default_factory=lambda: _code_version())

    def blobs(self) -> list[str]:
        return self.cell.blobs()

    def empty_result(self) -> ExhaustiveResult:
        return ExhaustiveResult()

    def run(self, blobs: dict[str, Any], should_stop: Callable[[], bool]) -> ExhaustiveResult:
        import traceback

        from .work import resolve_cell
        strategies, platform, _env = resolve_cell(self.cell, blobs)
        out = ExhaustiveResult()
        allowed = None if self.flips is None else frozenset(self.flips).__contains__
        try:
            r = explore(self.program, strategies[0], platform, self.preemptions, self.choices, self.reduce,
                        budget_s=self.budget, should_stop=should_stop, flip_allowed=allowed)
        except (KeyboardInterrupt, SystemExit, PluginFailure):
            raise                  # a plug-in's failure: fuzz.work.run_unit reports it as such
        except Exception:
            out.crash = f"exploring a program:\n{traceback.format_exc()}"
            return out
        out.executions, out.pruned = r.stats.executions, r.stats.pruned
        out.proven, out.exhaustive, out.completed_bound = r.proven, r.exhaustive, r.completed_bound
        if r.violation is not None:
            out.program = schedule_program(self.program, r.violation.schedule)
            out.violations = tuple(r.violation.verdict.violations)
            out.preemptions, out.choices = r.violation.preemptions, r.violation.choices
        return out


def _code_version() -> str:
    from .work import code_version
    return code_version()
