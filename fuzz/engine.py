"""The fuzz loop shared by every engine: generate a program, run it in
lockstep on the selected strategies, judge, report findings.

An engine is just where the decisions come from:

* ``random``: programs from a seeded :class:`RandomDraw`, schedules from
  :class:`RandomChoices` (uniform among runnable agents, biased flips);
* ``pct``: the same programs, schedules from :class:`PCTChoices`
  (Probabilistic Concurrency Testing, depth ``d``), whose guarantee is
  reported: every ordering bug of depth ``d`` is hit with probability at least
  ``1 / (n * k**(d-1))`` per run, so ``N`` runs reach ``1 - (1 - p)**N``;
* ``hypothesis`` (fuzz.drivers.hypothesis_driver): Hypothesis draws the
  program and a tape of scheduling decisions, is steered by behaviour events
  (``target()``/``event()``) and shrinks what it finds;
* ``atheris`` (fuzz.drivers.atheris_driver): libFuzzer mutates bytes decoded by
  :class:`~fuzz.generate.BytesDraw` + :class:`ByteChoices`, guided by line
  coverage of impls/ and oracle/ plus synthetic counters for behaviour events
  (fuzz.feedback).

Iteration ``i`` of a run with seed ``s`` uses seed ``s * 1_000_003 + i``, so a
finding is reproducible from (seed, iteration) alone, and its recorded
schedule replays it exactly.  Parallel workers take disjoint iterations
(``start=w, step=jobs``), so a finding does not depend on the number of jobs.
"""

from __future__ import annotations

import gc
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from impls.machine.choices import Choices, PCTChoices, RandomChoices
from impls.machine.plugin import Ops
from impls.machine.program import Program
from oracle.verdict import Violation, check_names

from .envs import Environment
from .feedback import keys_of
from .generate import GenConfig, RandomDraw, generate, op_weights
from .run import Lockstep, run_lockstep
from .triage import divergence_key, race_key

ENGINES = ("random", "pct", "hypothesis", "atheris")
#: engines whose decisions come from a seeded RNG per iteration (this module)
SEEDED_ENGINES = ("random", "pct")
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
    #: the iteration that found it (engine-specific: program index for
    #: random/pct, chunk index for hypothesis, input index for atheris)
    iteration: int = -1
    engine: str = "random"

    @property
    def checks(self) -> list[str]:
        return check_names(self.violations)


@dataclass
class Stats:
    programs: int = 0
    steps: int = 0
    behaviours: dict[str, int] = field(default_factory=dict)
    findings: int = 0
    signatures: set[str] = field(default_factory=set)
    max_steps_per_program: int = 0
    #: feedback keys reached (fuzz.feedback): behaviour buckets, checks, outcomes
    keys: set[str] = field(default_factory=set)
    #: programs whose runs hit a violation (not deduplicated)
    violating: int = 0

    def merge(self, other: Stats) -> None:
        self.programs += other.programs
        self.steps += other.steps
        self.findings += other.findings
        self.violating += other.violating
        self.signatures |= other.signatures
        self.keys |= other.keys
        self.max_steps_per_program = max(self.max_steps_per_program, other.max_steps_per_program)
        for k, v in other.behaviours.items():
            self.behaviours[k] = self.behaviours.get(k, 0) + v

    def account(self, res: Lockstep) -> None:
        """Count one lockstep run (every engine calls this once per program)."""
        self.programs += 1
        for r in res.runs:
            steps = r.history.meta.get("steps", 0)
            self.steps += steps
            if steps > self.max_steps_per_program:
                self.max_steps_per_program = steps
            for k, n in r.verdict.behaviours.items():
                self.behaviours[k] = self.behaviours.get(k, 0) + n
        if not res.ok:
            self.violating += 1
        self.keys.update(keys_of([r.verdict for r in res.runs], bool(res.divergences)))


class PausedGC:
    """The fuzz loop's garbage-collection policy: the cyclic collector is off
    while programs run, and every :attr:`EVERY` programs (:meth:`tick`) the
    young generations are collected.  A program leaves a few dozen reference
    cycles behind (generator frames, machine and history objects that point
    at each other); the automatic collector would walk them hundreds of
    times per program, a collection every few dozen programs frees them all
    at once.  Nothing the simulator computes depends on when memory is freed.

    ::

        with PausedGC() as gcp:
            for ...:
                run a program
                gcp.tick()
    """

    EVERY = 64

    def __enter__(self) -> PausedGC:
        self.was = gc.isenabled()
        self.n = 0
        gc.disable()
        return self

    def tick(self) -> None:
        self.n += 1
        if self.n % self.EVERY == 0:
            gc.collect(1)

    def __exit__(self, *exc: object) -> None:
        if self.was:
            gc.enable()


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
    """One bug, one finding: the strategy and the race (fuzz.triage.race_key:
    the check and the kernel functions on each side), not the incidental
    details of the interleaving that found it."""
    return f"{strategy}|{race_key(v)}"


def divergence_signature(d: Violation) -> str:
    """One finding per kind of observable (fuzz.triage.divergence_key)."""
    return f"divergence|{divergence_key(str(d.extra.get('observable', '')))}"


def fuzz_one(program: Program, strategies: list[Ops], platform: Ops, engine: str, s: int,
             env: Environment, k_steps: int = 200) -> Lockstep:
    return run_lockstep(program, strategies, platform,
                        lambda: make_choices(engine, s, env, program, k_steps))


def findings_of(res: Lockstep, program: Program, stats: Stats, seed: int, env: Environment,
                iteration: int = -1, engine: str = "random") -> list[Finding]:
    """The new findings of one lockstep run (one per strategy and signature,
    ``stats.signatures`` is the memory); each carries the program with the
    recorded schedule of the run that found it."""
    out: list[Finding] = []
    for r in res.runs:
        if r.verdict.violations:
            sig = finding_signature(r.verdict.strategy, r.verdict.violations[0])
            if sig not in stats.signatures:
                stats.signatures.add(sig)
                stats.findings += 1
                out.append(Finding(r.verdict.strategy, program.with_schedule(r.history.meta["schedule"]),
                                   tuple(r.verdict.violations), sig, seed, env.name, iteration, engine))
    for d in res.divergences:
        sig = divergence_signature(d)
        if sig not in stats.signatures:
            stats.signatures.add(sig)
            stats.findings += 1
            out.append(Finding(d.strategy, program, (d,), sig, seed, env.name, iteration, engine))
    return out


def swarm_config(cfg: GenConfig, s: int, keep: float = 0.5) -> GenConfig:
    """Swarm testing (Groce et al., ISSTA 2012): this program draws from a
    random subset of the operation kinds (each kept with probability
    ``keep``; the freeing operations munmap/madvise/exit and the racing
    readers are never all dropped), so programs differ in their *mix*, and a
    bug that needs, say, many munmaps and no mmaps is reached more often than
    under one fixed mix of weights."""
    rng = random.Random(s ^ 0x5A5A5A5A)
    w = {k: v for k, v in cfg.weights.items() if v > 0 and rng.random() < keep}
    # judged on what this configuration can generate (no KVM ops without KVM,
    # no exit without lazy-TLB CPUs: fuzz.generate.op_weights)
    usable = op_weights(cfg)
    have = op_weights(replace(cfg, weights=w))
    if not any(k in have for k in ("munmap", "madvise", "exit")):
        k = rng.choice([k for k in ("munmap", "madvise", "exit") if usable.get(k, 0) > 0] or ["munmap"])
        w[k] = cfg.weights.get(k, 1.0) or 1.0
    if not have.keys() - {"munmap", "madvise", "exit", "mmap", "switch"}:
        w["access"] = cfg.weights.get("access", 1.0) or 1.0
    return replace(cfg, weights=w)


def fuzz_iter(strategies: list[Ops], platform: Ops, env: Environment, engine: str = "random",
              seed: int = 0, length: int = 32, start: int = 0,
              stop: Callable[[int], bool] = lambda i: False,
              stats: Stats | None = None, step: int = 1, swarm: float = 0.0) -> Iterator[Finding]:
    """Run iterations ``start, start+step, ...`` until ``stop(i)``; yield each
    new finding (one per strategy and signature).  ``stats`` is updated in
    place.  Engines ``random`` and ``pct`` only (the others drive their own
    loop: fuzz.drivers).  ``swarm``: the fraction of programs (chosen by their
    seed) generated from their own random subset of operation kinds
    (:func:`swarm_config`)."""
    if engine not in SEEDED_ENGINES:
        raise ValueError(f"fuzz_iter runs the seeded engines ({', '.join(SEEDED_ENGINES)}), not {engine!r}")
    stats = stats if stats is not None else Stats()
    cfg = env.gen_config(length, platform.name if platform.name != env.platform else None)
    k_steps = pct_k_steps(length)
    i = start
    while not stop(i):
        program, res, s = fuzz_program(strategies, platform, env, engine, seed, i, cfg, k_steps, swarm)
        stats.account(res)
        yield from findings_of(res, program, stats, s, env, i, engine)
        i += step


def fuzz_program(strategies: list[Ops], platform: Ops, env: Environment, engine: str, seed: int, i: int,
                 cfg: GenConfig, k_steps: int, swarm: float = 0.0) -> tuple[Program, Lockstep, int]:
    """Iteration ``i`` of a seeded engine: its program (generated from
    ``iteration_seed(seed, i)``, from a swarm subset of operations for the
    ``swarm`` fraction of seeds), the lockstep run, and the iteration seed."""
    s = iteration_seed(seed, i)
    use_swarm = swarm > 0.0 and (swarm >= 1.0 or random.Random(s ^ 0x3C3C3C3C).random() < swarm)
    program = generate(RandomDraw(s), swarm_config(cfg, s) if use_swarm else cfg)
    return program, fuzz_one(program, strategies, platform, engine, s, env, k_steps), s


def pct_k_steps(length: int) -> int:
    """The ``k`` PCT places its change points in (steps of one run)."""
    return max(50, length * 5)
