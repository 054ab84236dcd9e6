"""The fuzz loop shared by every engine: generate a program, run it in
lockstep on the selected strategies, judge, report findings.

An engine is just where the decisions come from:

* ``random``: programs from a seeded :class:`RandomDraw`, schedules from
  :class:`RandomChoices` (uniform among runnable agents, biased flips);
* ``pct``: the same programs, schedules from :class:`PCTChoices`
  (Probabilistic Concurrency Testing, depth ``d``), whose guarantee is
  reported: every ordering bug of depth ``d`` is hit with probability at least
  ``1 / (n * k**(d-1))`` per run, so ``N`` runs reach ``1 - (1 - p)**N``.

Iteration ``i`` of a run with seed ``s`` uses seed ``s * 1_000_003 + i``, so a
finding is reproducible from (seed, iteration) alone, and its recorded
schedule replays it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from impls.machine.choices import Choices, PCTChoices, RandomChoices
from impls.machine.plugin import Ops
from impls.machine.program import Program
from oracle.verdict import Violation

from .envs import Environment
from .generate import RandomDraw, generate
from .run import Lockstep, run_lockstep

ENGINES = ("random", "pct")
PCT_DEPTH = 2


@dataclass(frozen=True)
class Finding:
    """A violation found on one strategy, with a replayable reproducer (the
    program carries the recorded schedule of that strategy's run)."""

    strategy: str
    program: Program
    violations: tuple[Violation, ...]
    signature: str
    seed: int
    environment: str

    @property
    def checks(self) -> list[str]:
        seen: list[str] = []
        for v in self.violations:
            if v.check not in seen:
                seen.append(v.check)
        return seen


@dataclass
class Stats:
    programs: int = 0
    steps: int = 0
    behaviours: dict[str, int] = field(default_factory=dict)
    findings: int = 0
    signatures: set[str] = field(default_factory=set)
    max_steps_per_program: int = 0

    def merge(self, other: Stats) -> None:
        self.programs += other.programs
        self.steps += other.steps
        self.findings += other.findings
        self.signatures |= other.signatures
        self.max_steps_per_program = max(self.max_steps_per_program, other.max_steps_per_program)
        for k, v in other.behaviours.items():
            self.behaviours[k] = self.behaviours.get(k, 0) + v


def iteration_seed(seed: int, i: int) -> int:
    return seed * 1_000_003 + i


def make_choices(engine: str, s: int, env: Environment, program: Program, k_steps: int) -> Choices:
    if engine == "random":
        return RandomChoices(s, env.choice_biases())
    if engine == "pct":
        return PCTChoices(s, program.cpus, k_steps, PCT_DEPTH, env.choice_biases())
    raise ValueError(f"unknown engine {engine!r} (known: {', '.join(ENGINES)})")


def pct_guarantee(runs: int, n_agents: int, k_steps: int, depth: int = PCT_DEPTH) -> float:
    """Probability that ``runs`` PCT runs hit a given depth-``depth`` bug at
    least once (the per-run lower bound of Burckhardt et al.)."""
    p = PCTChoices.guarantee(n_agents, k_steps, depth)
    return 1.0 - math.exp(runs * math.log1p(-p)) if p < 1 else 1.0


def finding_signature(strategy: str, v: Violation) -> str:
    return f"{strategy}|{v.signature()}"


def fuzz_one(program: Program, strategies: list[Ops], platform: Ops, engine: str, s: int,
             env: Environment, k_steps: int = 200) -> Lockstep:
    return run_lockstep(program, strategies, platform,
                        lambda: make_choices(engine, s, env, program, k_steps))


def fuzz_iter(strategies: list[Ops], platform: Ops, env: Environment, engine: str = "random",
              seed: int = 0, length: int = 32, start: int = 0,
              stop: Callable[[int], bool] = lambda i: False,
              stats: Stats | None = None) -> Iterator[Finding]:
    """Run iterations ``start, start+1, ...`` until ``stop(i)``; yield each new
    finding (one per strategy and signature).  ``stats`` is updated in place."""
    stats = stats if stats is not None else Stats()
    cfg = env.gen_config(length, platform.name if platform.name != env.platform else None)
    k_steps = max(50, length * 5)
    i = start
    while not stop(i):
        s = iteration_seed(seed, i)
        program = generate(RandomDraw(s), cfg)
        res = fuzz_one(program, strategies, platform, engine, s, env, k_steps)
        stats.programs += 1
        for r in res.runs:
            steps = r.history.meta.get("steps", 0)
            stats.steps += steps
            stats.max_steps_per_program = max(stats.max_steps_per_program, steps)
            for k, n in r.verdict.behaviours.items():
                stats.behaviours[k] = stats.behaviours.get(k, 0) + n
            if r.verdict.violations:
                sig = finding_signature(r.verdict.strategy, r.verdict.violations[0])
                if sig not in stats.signatures:
                    stats.signatures.add(sig)
                    stats.findings += 1
                    yield Finding(r.verdict.strategy,
                                  program.with_schedule(r.history.meta["schedule"]),
                                  tuple(r.verdict.violations), sig, s, env.name)
        for d in res.divergences:
            sig = f"divergence|{d.extra.get('observable', '')}"
            if sig not in stats.signatures:
                stats.signatures.add(sig)
                stats.findings += 1
                yield Finding(d.strategy, program, (d,), sig, s, env.name)
        i += 1
