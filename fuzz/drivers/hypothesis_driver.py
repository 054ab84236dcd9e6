"""The Hypothesis engine: property-based testing with shrinking.

One Hypothesis test (:func:`make_test`) draws a program through the shared
generator (fuzz.generate, via :class:`HypothesisDraw`) and then a *tape* of
scheduling decisions (:class:`TapeChoices`), runs it in lockstep on every
selected strategy and judges each run.  Every strategy of the lockstep reads
the same tape from its start (drawing more when its run needs more), so one
choice sequence describes the whole lockstep and Hypothesis shrinks it as one.

Decisions are encoded so that Hypothesis' shrink direction (towards 0) is the
simple direction: pick 0 means "keep running the CPU that ran last" (no
preemption), a flip shrinks to ``False`` (no deferred IPI, no failed
allocation).  A shrunk finding therefore has few operations, few preemptions
and few injected faults.

Behaviour events steer the search: each distinct behaviour of a run is an
``event()`` (``--hypothesis-show-statistics``), and the number of distinct
behaviours and of feedback keys (fuzz.feedback) are ``target()`` scores.

A violation is raised as an exception whose *class* is specific to its
signature, so Hypothesis (which tells failures apart by exception type and
place) shrinks each distinct bug separately and never lets one bug's shrink
turn into another's.  :func:`hypothesis_iter` runs the test in chunks of
``chunk`` examples, chunk ``c`` seeded with ``iteration_seed(seed, c)``
(worker ``w`` of ``J`` takes chunks ``w, w+J, ...``), and yields the smallest
failing example seen per signature, with its recorded schedule.

The same test object feeds atheris through ``fuzz_one_input`` (see
fuzz.drivers.atheris_driver, ``--atheris-input hypothesis``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from hypothesis import HealthCheck, Phase, Verbosity, event, given, settings, target
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from impls.machine.choices import Choices
from impls.machine.plugin import Ops
from impls.machine.program import Program

from ..engine import Finding, Stats, finding_signature, iteration_seed
from ..envs import Environment
from ..feedback import keys_of
from ..generate import ALL_SLOTS, SLOTS, GenConfig, _gen_op, _State, generate, op_weights
from ..run import Lockstep, run_lockstep
from .tape import Tape, TapeChoices

#: decision bytes per Hypothesis choice on the tape
TAPE_BLOCK = 32
#: seconds of Hypothesis shrinking per chunk with findings
SHRINK_SECONDS = 10.0
#: examples per Hypothesis run (a chunk); stop and budget are checked per example
CHUNK = 200


class HypothesisDraw:
    """The generator's :class:`~fuzz.generate.Draw` over a Hypothesis data object.

    Uses the ConjectureData primitives when present (several times faster than
    ``data.draw(st.integers(...))`` per decision, and ``draw_boolean(p)`` keeps
    the bias), the public strategies otherwise."""

    def __init__(self, data) -> None:
        cd = getattr(data, "conjecture_data", None)
        if cd is not None and all(hasattr(cd, a) for a in ("draw_integer", "draw_boolean", "draw_bytes")):
            self._int = cd.draw_integer
            self._bool = cd.draw_boolean
            self.block = lambda n: cd.draw_bytes(n, n)
            self.start_span = cd.start_span
            self.stop_span = cd.stop_span
        else:  # pragma: no cover  (older/newer Hypothesis without the primitives)
            self._int = lambda lo, hi: data.draw(st.integers(lo, hi))
            self._bool = lambda p: data.draw(st.integers(0, 255)) >= 256 - int(256 * p)
            self.block = lambda n: data.draw(st.binary(min_size=n, max_size=n))
            self.start_span = lambda label: None
            self.stop_span = lambda: None

    def int(self, lo: int, hi: int) -> int:
        return lo if hi <= lo else self._int(lo, hi)

    def bool(self, p: float) -> bool:
        if p <= 0.0:
            return False
        if p >= 1.0:
            return True
        return self._bool(p)

    def weighted(self, items):
        total = sum(w for _, w in items)
        x = self._int(0, 255) / 256 * total
        for item, w in items:
            x -= w
            if x < 0:
                return item
        return items[-1][0]


#: span label of one generated operation (any constant; Hypothesis groups spans by label)
OP_SPAN = 0x5D0_0001


def generate_shrinkable(draw: HypothesisDraw, cfg: GenConfig) -> Program:
    """fuzz.generate.generate() with its operation loop made shrinkable: the
    shrinker can delete any operation, not only the last.

    The skeleton (CPUs, mms, VMAs, setup) comes from the shared generator;
    each of the ``length`` operations is then one span: a presence byte (0:
    no operation), then the operation's draws through the shared
    ``_gen_op``, from the abstract state rebuilt from the skeleton the way
    generate() builds it.  Shrinking a presence byte to 0 deletes that
    operation and keeps the others aligned.  (Not Hypothesis' list idiom of a
    "one more" flag per element: its search for novel prefixes flips those
    flags early and made most programs a dozen operations long.)"""
    base = generate(draw, replace(cfg, length=0))
    mms = base.mms
    mapped: dict[int, set[int]] = {m: set() for m in range(mms)}
    for m, start, _ in base.vmas:
        mapped[m].add(next(i for i, (s, _) in enumerate(SLOTS) if s == start))
    # the file slots (environments with files): their VMAs and setup are the skeleton's too
    for m, start, *_ in base.file_vmas:
        mapped[m].add(next(i for i, (s, _) in enumerate(ALL_SLOTS) if s == start))
    touched: dict[int, set[tuple[int, int]]] = {m: set() for m in range(mms)}
    for op in base.setup:
        m = base.start[op.cpu]
        slot = next(i for i, (s, _) in enumerate(ALL_SLOTS) if s == op.addr)
        touched[m].update((slot, p) for p in range(op.len // 0x1000))
    st_ = _State(mapped, touched, list(base.start), set(range(mms)))
    if "hugetlb" in cfg.files:
        st_.hugetlb_file = cfg.files.index("hugetlb")
    weights = op_weights(cfg)
    ops = []
    for _ in range(cfg.length):
        draw.start_span(OP_SPAN)
        # 0 = no operation here: what shrinking towards 0 tries for every op
        if draw.int(0, 255) == 0:
            draw.stop_span()
            continue
        cpu = draw.int(0, base.cpus - 1)
        op = _gen_op(draw, st_, cpu, mms, weights, cfg.lazy_tlb, cfg.files, cfg.thp)
        draw.stop_span()
        if op is not None:
            ops.append(op)
    return replace(base, ops=tuple(ops))


class ViolationFound(Exception):
    """Raised by the test for a violation; subclassed once per signature."""


_EXC: dict[str, type[ViolationFound]] = {}


def _exception_for(sig: str) -> type[ViolationFound]:
    cls = _EXC.get(sig)
    if cls is None:
        cls = _EXC[sig] = type(f"ViolationFound{len(_EXC)}", (ViolationFound,), {"signature": sig})
    return cls


class StopFuzzing(BaseException):
    """Raised inside the test to end a Hypothesis run at once (budget, Ctrl-C):
    a BaseException, so Hypothesis neither catches nor shrinks it."""


class ShrinkTimeout(BaseException):
    """Raised inside the test when shrinking a chunk's findings took longer
    than its budget: the chunk ends with the smallest example seen so far
    (fuzz.minimize takes it from there)."""


def _size(p: Program) -> tuple[int, int]:
    return (len(p.ops) + len(p.setup), len(p.schedule) if p.schedule is not None else 0)


@dataclass
class Recorder:
    """What the test saw: stats, and per signature the smallest failing example."""

    stats: Stats
    env: Environment
    should_stop: Callable[[], bool] = lambda: False
    raise_findings: bool = True
    #: signature -> (strategy, program with schedule, violations)
    best: dict[str, tuple[str, Program, tuple]] = field(default_factory=dict)
    feedback: bool = True
    #: seconds Hypothesis may shrink after the chunk's first failure
    shrink_budget: float = SHRINK_SECONDS
    first_failure: float | None = None

    def on_run(self, program: Program, res: Lockstep) -> None:
        self.stats.account(res)
        if self.should_stop():
            raise StopFuzzing
        if self.first_failure is not None and time.monotonic() - self.first_failure > self.shrink_budget:
            raise ShrinkTimeout
        if self.feedback:
            keys = keys_of([r.verdict for r in res.runs], bool(res.divergences))
            names = {k.split(":")[2] for k in keys if k.startswith("b:")}
            for n in names:
                event(n)
            target(float(len(names)), label="distinct behaviours")
            target(float(len(keys)), label="feedback keys")
        first: str | None = None
        for r in res.runs:
            if not r.verdict.violations:
                continue
            sig = finding_signature(r.verdict.strategy, r.verdict.violations[0])
            cand = program.with_schedule(r.history.meta["schedule"])
            old = self.best.get(sig)
            if old is None or _size(cand) < _size(old[1]):
                self.best[sig] = (r.verdict.strategy, cand, tuple(r.verdict.violations))
            if first is None and sig not in self.stats.signatures:
                first = sig  # a bug already reported is not shrunk again
        if first is not None and self.raise_findings:
            if self.first_failure is None:
                self.first_failure = time.monotonic()
            raise _exception_for(first)(first)


def make_test(strategies: list[Ops], platform: Ops, env: Environment, length: int, rec: Recorder):
    """The Hypothesis test: ``@given(st.data())``, one lockstep run per example."""
    cfg = env.gen_config(length, platform.name if platform.name != env.platform else None)
    biases = env.choice_biases()

    @given(st.data())
    def lockstep_property(data) -> None:
        draw = HypothesisDraw(data)
        program = generate_shrinkable(draw, cfg)
        tape = Tape(lambda: draw.block(TAPE_BLOCK))

        def choices() -> Choices:
            return TapeChoices(tape, biases)

        rec.on_run(program, run_lockstep(program, strategies, platform, choices))

    return lockstep_property


def run_settings(max_examples: int, shrink: bool = True, target_phase: bool = True) -> settings:
    phases = [Phase.explicit, Phase.generate] + ([Phase.target] if target_phase else []) + (
        [Phase.shrink] if shrink else [])
    return settings(max_examples=max_examples, database=None, deadline=None, derandomize=False,
                    phases=phases, report_multiple_bugs=True, verbosity=Verbosity.quiet,
                    suppress_health_check=list(HealthCheck), print_blob=False)


def hypothesis_iter(strategies: list[Ops], platform: Ops, env: Environment, seed: int = 0,
                    length: int = 32, worker: int = 0, jobs: int = 1,
                    should_stop: Callable[[], bool] = lambda: False, stats: Stats | None = None,
                    chunk: int = CHUNK, feedback: bool = True,
                    shrink_budget: float = SHRINK_SECONDS, end: int | None = None) -> Iterator[Finding]:
    """Run Hypothesis chunks ``worker, worker+jobs, ...`` (below ``end``) until
    ``should_stop()`` (checked after every example); yield each new finding,
    shrunk."""
    stats = stats if stats is not None else Stats()
    c = worker
    while not should_stop() and (end is None or c < end):
        rec = Recorder(stats, env, should_stop, True, {}, feedback, shrink_budget)
        test = make_test(strategies, platform, env, length, rec)
        s = iteration_seed(seed, c)
        runner = run_settings(chunk)(hypothesis_seed(s)(test))
        stopped = False
        try:
            runner()
        except StopFuzzing:
            stopped = True
        except (ViolationFound, ShrinkTimeout):
            pass
        except BaseExceptionGroup as eg:  # several distinct bugs in one chunk
            rest = eg.split((ViolationFound, StopFuzzing, ShrinkTimeout))[1]
            if rest is not None:
                raise rest from None
            stopped = eg.subgroup(StopFuzzing) is not None
        for sig, (strategy, program, violations) in rec.best.items():
            if sig in stats.signatures:
                continue
            stats.signatures.add(sig)
            stats.findings += 1
            yield Finding(strategy, program, violations, sig, s, env.name, c, "hypothesis")
        if stopped:
            return
        c += jobs
