"""The one source of nondeterminism in a run.

Every decision the simulated machine cannot derive from the program (which agent
steps next, whether a pending IPI is taken now, whether a ``GFP_NOWAIT``
allocation fails, whether ``zap_pte_range()`` hits ``need_resched()``) is asked
of a :class:`Choices` object under a stable *label*.  A run is therefore
``Program + Schedule``; replaying the same pair gives the same history.

Labels are plain strings (``"sched"``, ``"irq.defer"``,
``"alloc_fails:mmu_table_batch"``...).  Recorded decisions are replayed *per
label*: each label has its own queue, so removing an operation from a program
does not shift the decisions recorded for unrelated labels (this keeps
schedules meaningful while a reproducer shrinks).

``sched`` decisions name an agent (a CPU number, or ``RCU`` for the RCU
grace-period/callback agent).  Every other label is a yes/no flip whose
default, when nothing is recorded, is ``False``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from itertools import groupby
from typing import Any

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # (the compiled build needs it, and mypy brings it)
    def mypyc_attr(*_args: Any, **_kw: Any) -> Any:  # type: ignore[misc]
        return lambda cls: cls

def by_value(obj: Any) -> tuple[Any, ...]:
    """``__reduce__`` of a frozen dataclass: rebuilt by calling its class with
    its fields, in order.  The compiled build (tools/compiled.py) cannot
    unpickle a frozen dataclass attribute by attribute (its __setattr__
    raises); every field is listed, so a field added later is pickled too."""
    return (type(obj), tuple(getattr(obj, f.name) for f in fields(obj)))


#: agent id of the RCU grace-period kthread / callback (softirq) agent
RCU = -1

#: the labels the machine asks; ``docs`` and the YAML loader validate against it
FLIP_LABELS: dict[str, str] = {
    "irq.defer": "an IPI is pending on a CPU with IRQs enabled: delay taking it by one step",
    "alloc_fails:mmu_table_batch": "GFP_NOWAIT allocation of a struct mmu_table_batch fails "
    "(tlb_remove_table() takes the single-table path)",
    "alloc_fails:mmu_gather_batch": "GFP_NOWAIT allocation of the next struct mmu_gather_batch "
    "fails (tlb_next_batch() returns false, zap forces a flush)",
    "need_resched:zap_pte_range": "zap_pte_range() drops the PTL midway (need_resched or a "
    "forced flush) and resumes",
    "invlpgb.delay": "a broadcast invalidation in flight has not yet reached this CPU",
    "pmd_trylock_fails:pt_reclaim": "spin_trylock() of the PMD lock fails in "
    "try_get_and_clear_pmd() (PT_RECLAIM fast path)",
    "tlbi.delay": "an arm64 TLBI ... IS in flight has not yet been performed on this CPU",
    "tlb.trim_cpumask": "x86 flush_tlb_mm_range(): the once-a-second mm_cpumask trim is due "
    "(should_trim_cpumask()): CPUs in the mask that run another mm get the IPI and leave the mask",
    "alloc_fails:thp_folio": "with THP, the PMD-order folio allocation of a fault on a none PMD fails "
    "(do_huge_pmd_anonymous_page() falls back to 4 KiB pages)",
}


def agent_name(agent: int) -> str:
    return "rcu" if agent == RCU else f"cpu{agent}"


@dataclass(frozen=True, slots=True)
class SchedEntry:
    """One entry of an explicit schedule: run ``agent`` for ``steps`` steps, or
    until it yields at the preemption point named ``until`` (``op_end`` = until
    its current operation returns)."""

    agent: int
    steps: int = 1
    until: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return by_value(self)  # (pickled by value: the compiled build)


@dataclass(frozen=True, slots=True)
class Schedule:
    """The recorded decisions of one run, replayable.

    ``sched`` is the scheduling part (run-length encoded); ``flips`` maps a label
    to the outcomes of its successive flips.
    """

    sched: tuple[SchedEntry, ...] = ()
    flips: tuple[tuple[str, tuple[bool, ...]], ...] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return by_value(self)  # (pickled by value: the compiled build)

    def flips_dict(self) -> dict[str, tuple[bool, ...]]:
        return dict(self.flips)

    def __len__(self) -> int:
        return sum(e.steps for e in self.sched) + sum(len(v) for _, v in self.flips)

    @property
    def preemptions(self) -> int:
        """Context switches between CPUs in the scheduling part."""
        return max(0, len(self.sched) - 1)


_entries: dict[tuple[int, int], SchedEntry] = {}


def _sched_entry(agent: int, steps: int) -> SchedEntry:
    """``SchedEntry(agent, steps)``, shared: entries are immutable values, and
    a recorded schedule is a few dozen short runs of a few agents, so the
    same ones come back in every run (a frozen dataclass is slow to build)."""
    key = (agent, steps)
    e = _entries.get(key)
    if e is None:
        e = SchedEntry(agent, steps)
        if steps <= 64 and len(_entries) < 4096:
            _entries[key] = e
    return e


@mypyc_attr(allow_interpreted_subclasses=True)  # (the explorers, minimize, tape)
class Choices:
    """Base class of choice sources: records every decision it hands out.

    Subclasses implement :meth:`_pick` and :meth:`_flip`.  The machine calls
    :meth:`pick` and :meth:`flip` only.
    """

    def __init__(self) -> None:
        self.trace_sched: list[int] = []
        self.trace_flips: dict[str, list[bool]] = {}
        # set by the scheduler: the label of the last preemption point of an agent
        self.last_label: Callable[[int], str | None] = lambda agent: None

    # -- interface used by the machine ---------------------------------------
    def pick(self, runnable: Sequence[int], last: int | None) -> int:
        agent = self._pick(runnable, last)
        self.trace_sched.append(agent)
        return agent

    def flip(self, label: str) -> bool:
        value = self._flip(label)
        trace = self.trace_flips.get(label)
        if trace is None:
            trace = self.trace_flips[label] = []
        trace.append(value)
        return value

    # -- to implement ---------------------------------------------------------
    def _pick(self, runnable: Sequence[int], last: int | None) -> int:
        raise NotImplementedError

    def _flip(self, label: str) -> bool:
        raise NotImplementedError

    # -- recording -------------------------------------------------------------
    def recorded(self) -> Schedule:
        """The decisions handed out so far, as a replayable :class:`Schedule`."""
        get = _entries.get  # _sched_entry(), with its cache looked up inline
        entries = [get(key) or _sched_entry(*key)
                   for key in [(agent, len(list(run))) for agent, run in groupby(self.trace_sched)]]
        flips = tuple(
            (label, tuple(values))
            for label, values in sorted(self.trace_flips.items())
            if any(values)
        )
        return Schedule(tuple(entries), flips)


def default_pick(runnable: Sequence[int], last: int | None) -> int:
    """The policy used when nothing is recorded: keep running the agent that ran
    last if it can, else the lowest-numbered CPU, and the RCU agent only when no
    CPU can run.  Deterministic and easy to predict when writing a litmus test:
    after the explicit schedule, each CPU runs to completion in turn."""
    if last is not None and last in runnable:
        return last
    cpus = [a for a in runnable if a != RCU]
    return min(cpus) if cpus else runnable[0]


@mypyc_attr(allow_interpreted_subclasses=True)  # (the explorers, minimize, tape)
class Replay(Choices):
    """Replays a :class:`Schedule`; falls back to :func:`default_pick` and to
    ``False`` once a label's recorded decisions are used up."""

    def __init__(self, schedule: Schedule | None = None) -> None:
        super().__init__()
        schedule = schedule or Schedule()
        self._entries = list(schedule.sched)
        self._pos = 0
        self._left = self._entries[0].steps if self._entries else 0
        self._flips = {label: list(values) for label, values in schedule.flips}
        self._flip_pos: dict[str, int] = {}
        #: explicit entries that could not be honoured (agent not runnable)
        self.skipped = 0
        self._stepped = False  # the current `until` entry has stepped its agent
        #: preemption-point labels each agent reached (to report `until` typos)
        self.seen: dict[int, set[str]] = {}

    def _advance(self) -> None:
        self._pos += 1
        self._stepped = False
        if self._pos < len(self._entries):
            self._left = self._entries[self._pos].steps

    def _pick(self, runnable: Sequence[int], last: int | None) -> int:
        if last is not None and self._entries:
            label = self.last_label(last)
            if label is not None:
                self.seen.setdefault(last, set()).add(label)
        while self._pos < len(self._entries):
            entry = self._entries[self._pos]
            if entry.until is not None:
                # done once the agent, having stepped under this entry, sits at the label
                if self._stepped and last == entry.agent and self.last_label(entry.agent) == entry.until:
                    self._advance()
                    continue
                if entry.agent in runnable:
                    self._stepped = True
                    return entry.agent
                self.skipped += 1
                self._advance()
                continue
            if self._left <= 0:
                self._advance()
                continue
            if entry.agent in runnable:
                self._left -= 1
                return entry.agent
            # MODEL: an explicit step for an agent that cannot run (blocked,
            # finished) is dropped rather than spun, so shrunk schedules stay valid.
            self.skipped += 1
            self._advance()
        return default_pick(runnable, last)

    def unreached_labels(self) -> list[tuple[int, int, str]]:
        """(entry index, agent, label) of `until` entries whose label the agent
        never reached in the whole run: most likely a typo in a litmus file."""
        return [(i, e.agent, e.until) for i, e in enumerate(self._entries)
                if e.until is not None and e.until not in self.seen.get(e.agent, set())]

    def _flip(self, label: str) -> bool:
        values = self._flips.get(label)
        if not values:
            return False
        i = self._flip_pos.get(label, 0)
        if i >= len(values):
            return False
        self._flip_pos[label] = i + 1
        return values[i]


@dataclass
class Biases:
    """Probabilities the random engines use for flips, per label (default 0)."""

    p: dict[str, float] = field(default_factory=dict)

    def get(self, label: str) -> float:
        return self.p.get(label, 0.0)


DEFAULT_BIASES = {
    "irq.defer": 0.3,
    "alloc_fails:mmu_table_batch": 0.15,
    "alloc_fails:mmu_gather_batch": 0.2,
    "need_resched:zap_pte_range": 0.2,
    "invlpgb.delay": 0.5,
    "pmd_trylock_fails:pt_reclaim": 0.2,
    "tlb.trim_cpumask": 0.25,
    "tlbi.delay": 0.5,
    "alloc_fails:thp_folio": 0.4,
}


#: CPython's random.Random draws randrange(n) with _randbelow_with_getrandbits()
#: (Lib/random.py; n.bit_length() bits, again while >= n)
_RANDBELOW_INLINE = getattr(random.Random, "_randbelow", None) is \
    getattr(random.Random, "_randbelow_with_getrandbits", object())


@mypyc_attr(allow_interpreted_subclasses=True)  # (the explorers, minimize, tape)
class RandomChoices(Choices):
    """Uniform random scheduling and biased flips from a seeded private RNG."""

    def __init__(self, seed: int, biases: dict[str, float] | None = None,
                 switch_p: float = 0.5) -> None:
        super().__init__()
        self._rng = random.Random(seed)
        # rng._randbelow(n) is what rng.randrange(n) returns for n > 0, without
        # randrange()'s argument checks (this runs once per scheduler step)
        self._randbelow: Callable[[int], int] = self._rng._randbelow  # type: ignore[attr-defined]
        self._biases = dict(DEFAULT_BIASES if biases is None else biases)
        # probability of switching away from the agent that ran last; runs of
        # consecutive steps make it likelier that a whole critical section
        # executes between two steps of another CPU
        self._switch_p = switch_p
        self._random = self._rng.random
        #: rng.getrandbits if rng._randbelow() is CPython's
        #: _randbelow_with_getrandbits(), which pick() then does inline
        self._getrandbits = self._rng.getrandbits if _RANDBELOW_INLINE else None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls._pick is not RandomChoices._pick and cls.pick is RandomChoices.pick:
            cls.pick = Choices.pick  # type: ignore[method-assign]  # pick() inlines RandomChoices._pick()

    def _pick(self, runnable: Sequence[int], last: int | None) -> int:
        if last is not None and last in runnable and self._rng.random() >= self._switch_p:
            return last
        return runnable[self._randbelow(len(runnable))]

    def pick(self, runnable: Sequence[int], last: int | None) -> int:
        # Choices.pick() with _pick() inlined (once per scheduler step); a
        # subclass that overrides _pick() gets Choices.pick() (__init_subclass__)
        if last is not None and last in runnable and self._random() >= self._switch_p:
            agent = last
        else:
            n = len(runnable)
            getrandbits = self._getrandbits
            if getrandbits is None:
                agent = runnable[self._randbelow(n)]
            else:  # Random._randbelow_with_getrandbits(n), the same draws
                k = n.bit_length()
                r = getrandbits(k)
                while r >= n:
                    r = getrandbits(k)
                agent = runnable[r]
        self.trace_sched.append(agent)
        return agent

    def _flip(self, label: str) -> bool:
        p = self._biases.get(label, 0.0)
        return p > 0.0 and self._rng.random() < p


@mypyc_attr(allow_interpreted_subclasses=True)  # (the explorers, minimize, tape)
class PCTChoices(Choices):
    """Probabilistic Concurrency Testing (Burckhardt et al., ASPLOS 2010).

    Each agent gets a random distinct priority; the highest-priority runnable
    agent always runs.  At ``depth - 1`` change points, chosen uniformly among
    the first ``k`` steps, the running agent's priority drops below all others.
    For a program with ``n`` agents and ``k`` steps this hits any given bug of
    depth ``d`` with probability at least ``1 / (n * k**(d-1))`` per run.
    """

    def __init__(self, seed: int, n_agents: int, k_steps: int, depth: int = 2,
                 biases: dict[str, float] | None = None) -> None:
        super().__init__()
        self._rng = random.Random(seed)
        self._biases = dict(DEFAULT_BIASES if biases is None else biases)
        agents = list(range(n_agents)) + [RCU]
        prios = list(range(depth, depth + len(agents)))
        self._rng.shuffle(prios)
        self._prio = dict(zip(agents, prios, strict=True))
        k = max(1, k_steps)
        self._change = sorted(self._rng.randrange(k) for _ in range(depth - 1))
        self._next_low = depth - 1
        self._step = 0

    @staticmethod
    def guarantee(n_agents: int, k_steps: int, depth: int) -> float:
        return 1.0 / (n_agents * max(1, k_steps) ** (depth - 1))

    def _pick(self, runnable: Sequence[int], last: int | None) -> int:
        prio = self._prio
        best = max(runnable, key=lambda a: prio.get(a, 0))
        while self._change and self._change[0] <= self._step:
            self._change.pop(0)
            prio[best] = self._next_low
            self._next_low -= 1
            best = max(runnable, key=lambda a: prio.get(a, 0))
        self._step += 1
        return best

    def _flip(self, label: str) -> bool:
        p = self._biases.get(label, 0.0)
        return p > 0.0 and self._rng.random() < p


@mypyc_attr(allow_interpreted_subclasses=True)  # (the explorers, minimize, tape)
class ByteChoices(Choices):
    """Decisions decoded from a byte string (the atheris driver): one byte per
    decision; when the bytes run out, the default policy and ``False``."""

    def __init__(self, data: bytes, biases: dict[str, float] | None = None) -> None:
        super().__init__()
        self._data = data
        self._i = 0
        self._biases = dict(DEFAULT_BIASES if biases is None else biases)

    def _byte(self) -> int | None:
        if self._i >= len(self._data):
            return None
        b = self._data[self._i]
        self._i += 1
        return b

    def _pick(self, runnable: Sequence[int], last: int | None) -> int:
        b = self._byte()
        if b is None:
            return default_pick(runnable, last)
        if last is not None and last in runnable and b < 128:
            return last
        return runnable[b % len(runnable)]

    def _flip(self, label: str) -> bool:
        b = self._byte()
        if b is None:
            return False
        return b < int(256 * self._biases.get(label, 0.0))
