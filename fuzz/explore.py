"""Exploration runs: a long, resumable, behaviour-guided search, and its report.

``shootdown explore`` keeps a *directory* (default ``explore-out/``)::

    state.json        configuration, next iteration, cumulative stats, feedback
                      keys and arcs reached, corpus order, findings, sessions
    progress.tsv      one line every few seconds: the corpus growth curve
    corpus/<target>/  the working set: input byte strings (not a regression suite)
    findings/*.yaml   one reproducer per finding (fuzz.findings: named after what
                      races, minimised by fuzz.minimize at the end of a session),
                      and next to it the input that found it (.input)
    crashes/          inputs on which the simulator itself raised, with the traceback
    report.md         the report; coverage.json and coverage-html/ next to it

**Inputs.** An input is a byte string, decoded as the atheris engine decodes
it (fuzz.drivers.atheris_driver): the program by
:class:`~fuzz.generate.BytesDraw` (one byte per generator decision), the rest
of the bytes as the decision tape of every run of the lockstep
(:class:`~fuzz.drivers.tape.TapeChoices`).  Once the bytes run out the tape
continues from an RNG seeded by a hash of the input (:func:`tape_of`), not
with the run-to-completion default, so a short input still interleaves and
every input replays exactly.  A *target* is one environment on one platform
(fuzz.envs); iteration ``i`` explores target ``i mod len(targets)``, each with
its own corpus.

**Guidance.** An input joins the corpus when its run reaches a feedback key no
earlier input reached (fuzz.feedback: behaviour events bucketed by count,
behaviour pairs, checks, outcomes, divergence, per target), or a line-to-line
arc of impls/ or oracle/ never executed before.  Arcs come from coverage.py's
tracer, which costs about 5x a run, so it is on for the first
:data:`WARMUP` iterations and then for one iteration in :data:`ARC_EVERY`.
Each iteration mutates a corpus input (bit flips, byte sets, insertions,
deletions, copies, splices with another input, random tails; 1 to 8 stacked)
or, with probability :data:`FRESH_P` (always while a target's corpus is empty),
draws a fresh random input.  The ``random`` engine draws fresh inputs only: the
unguided baseline for the same decoding.

**Determinism.**  Iteration ``i`` draws from ``Random(iteration_seed(seed, i))``
only.  With one job and ``--no-arcs``, exploring N then resuming for M
iterations gives the same corpus and findings as exploring N+M at once.  With
arcs, which arcs a run executes also depends on what the process ran before
(the simulator's memo caches, e.g. ``machine._descs``), so the search is
deterministic per fresh process, not across a resume.  With J jobs, worker
``w`` takes iterations ``w, w+J, ...`` of each batch of :data:`BATCH` x J and
the corpus is shared between batches, so results depend on J but not on
timing (a time budget only decides where the run stops).

**Workers.**  The batches are work units of the execution layer
(:class:`ExploreUnit`; fuzz.work, fuzz.execution): ``--jobs`` local worker
processes or a Dask cluster (``--cluster``).  A unit runs against the corpus
*hub* as of its batch's start (:class:`Hub`: what each committed batch added,
sent to each worker once), so which worker runs which unit does not matter.

**Findings** are written at once by fuzz.findings (named after the racing
operations, ``expect:`` for every strategy, deduplicated by signature,
platform and knobs), with the input that found them; at the end of a session
(not after Ctrl-C) each new one is shrunk in place (fuzz.minimize, as work
units on the same workers, bounded by ``--minimize-attempts`` runs).

**The report** replays the corpus and the findings under coverage.py (line and
branch, ``source_pkgs=impls, oracle``) in fresh processes, so module-level code
counts, and writes ``report.md``: a summary, coverage per package and module,
the behaviour table (count, programs, first reached), the growth curve, and
each finding with its race diagram (fuzz.render).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from impls import registry
from impls.machine.choices import Choices
from impls.machine.plugin import Ops, PluginError, PluginFailure
from impls.machine.program import Program
from oracle.behaviours import BEHAVIOURS

from . import corpus, triage
from . import findings as findings_mod
from .drivers.tape import Tape, TapeChoices
from .engine import Finding, PausedGC, Stats, findings_of, iteration_seed
from .envs import ENVIRONMENTS, Environment
from .execution import ExecutionError, InProcess, check_jobs, drive, executor
from .feedback import keys_of
from .generate import BytesDraw, GenConfig, generate
from .minimize import DEFAULT_ATTEMPTS, size_of
from .run import Lockstep, run_lockstep, run_program
from .watchdog import WATCHDOG, WATCHDOG_SECONDS
from .work import (
    MinimizeResult,
    MinimizeUnit,
    Plugin,
    Result,
    code_version,
    local_paths,
    make_cell,
    materialise,
    plugin_ref,
)

ROOT = Path(__file__).resolve().parent.parent
#: the packages whose coverage guides the search and is reported
COVERED = ("impls", "oracle")

STATE_VERSION = 1
STATE_FILE = "state.json"
PROGRESS_FILE = "progress.tsv"
CORPUS_DIR = "corpus"
FINDINGS_DIR = "findings"
CRASHES_DIR = "crashes"
REPORT_FILE = "report.md"
COVERAGE_JSON = "coverage.json"
COVERAGE_HTML = "coverage-html"
COVERAGE_DATA = ".coverage"

ENGINES = ("guided", "random")
DEFAULT_ENGINE = "guided"
DEFAULT_LENGTH = 32
#: iterations per worker between corpus synchronisations and checkpoints
BATCH = 16
#: every iteration below this one traces arcs; after it, one in ARC_EVERY
WARMUP = 64
ARC_EVERY = 16
#: probability of a fresh random input instead of a mutation
FRESH_P = 0.25
MAX_INPUT = 4096
#: seconds between progress-log lines / state checkpoints
PROGRESS_EVERY = 5.0
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)

PROGRESS_COLUMNS = ("elapsed_s", "session", "programs", "corpus", "keys", "arcs", "behaviours",
                    "findings", "crashes", "programs_per_s")


class ExploreError(Exception):
    """Bad input to an exploration (the message is one line, ready to print)."""


# -- configuration and targets ---------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """What an exploration directory explores; fixed for the directory's life."""

    #: built-in strategy names, or absolute paths of strategy files
    strategies: tuple[str, ...]
    #: (environment name, platform: built-in name or absolute path of a file)
    targets: tuple[tuple[str, str], ...]
    length: int = DEFAULT_LENGTH
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"strategies": list(self.strategies), "targets": [list(t) for t in self.targets],
                "length": self.length, "seed": self.seed}

    @staticmethod
    def from_json(d: dict[str, Any]) -> Config:
        return Config(tuple(d["strategies"]), tuple((str(e), str(p)) for e, p in d["targets"]),
                      int(d["length"]), int(d["seed"]))


@dataclass
class Target:
    """One environment on one platform: a column of the matrix being explored."""

    name: str
    env: Environment
    platform: Ops
    spec: str
    cfg: GenConfig
    biases: dict[str, float]


def default_targets() -> tuple[tuple[str, str], ...]:
    """Every environment of fuzz.envs, each on its own platform."""
    return tuple((e.name, e.platform) for e in ENVIRONMENTS.values())


def target_specs(envs: Sequence[str] | None, platforms: Sequence[str] | None) -> tuple[tuple[str, str], ...]:
    """``--env`` x ``--platform``: each environment's knobs on each platform given
    (its own platform if none); the platforms' plain environments if no
    ``--env``; every environment if neither."""
    envs = list(envs or [])
    platforms = list(platforms or [])
    for e in envs:
        if e not in ENVIRONMENTS:
            raise ExploreError(f"unknown environment {e!r} (known: {', '.join(ENVIRONMENTS)})")
    out: list[tuple[str, str]] = []
    if envs:
        for e in envs:
            for p in platforms or [ENVIRONMENTS[e].platform]:
                out.append((e, p))
    elif platforms:
        for p in platforms:
            out.append((p if p in ENVIRONMENTS else "native", p))
    else:
        out = list(default_targets())
    seen: list[tuple[str, str]] = []
    for t in out:
        if t not in seen:
            seen.append(t)
    return tuple(seen)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9+@._-]+", "_", s).strip("_") or "x"


def build_targets(config: Config) -> list[Target]:
    out: list[Target] = []
    for env_name, spec in config.targets:
        env = ENVIRONMENTS[env_name]
        plat = registry.platform(spec)
        if spec != env.platform:
            env = env.on_platform(spec)
        name = env_name if spec == ENVIRONMENTS[env_name].platform else f"{env_name}@{_slug(plat.name)}"
        out.append(Target(name, env, plat, spec, env.gen_config(config.length), env.choice_biases()))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ExploreError("two targets have the same name: " + ", ".join(sorted(names)))
    return out


# -- decoding inputs -----------------------------------------------------------------------

#: decisions a run may take from an input's tape (its bytes, then the seeded tail)
TAPE_MAX = 1 << 20


def tape_of(data: bytes, rest: bytes) -> Tape:
    """The decision tape of an input: ``rest`` (the bytes the program did not
    use), then bytes from an RNG seeded by the whole input, drawn as the runs
    need them.  One tape per lockstep: every strategy reads it from its start."""
    rng = random.Random(int.from_bytes(hashlib.sha1(data).digest()[:8], "little"))
    return Tape(lambda: rng.randbytes(64), TAPE_MAX, rest)


def input_name(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


def decode(data: bytes, target: Target) -> tuple[Program, Callable[[], Choices]]:
    """The program an input encodes, and the choice source of its schedule."""
    draw = BytesDraw(data)
    program = generate(draw, target.cfg)
    tape = tape_of(data, data[draw.i:])
    return program, lambda: TapeChoices(tape, target.biases)


def execute(data: bytes, target: Target, strategies: list[Ops]) -> Lockstep:
    program, choices = decode(data, target)
    return run_lockstep(program, strategies, target.platform, choices)


# -- mutation ---------------------------------------------------------------------------------

def fresh_input(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(16, 640))


def mutate(rng: random.Random, data: bytes, other: bytes | None = None) -> bytes:
    """1 to 8 stacked byte-level mutations (AFL's havoc, roughly)."""
    buf = bytearray(data) or bytearray(rng.randbytes(16))
    n_ops = 1
    while n_ops < 8 and rng.random() < 0.5:
        n_ops += 1
    for _ in range(n_ops):
        n = len(buf)
        op = rng.randrange(10)
        i = rng.randrange(n) if n else 0
        if op == 0 and n:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[i] = rng.randrange(256)
        elif op == 2 and n:
            buf[i] = rng.choice(INTERESTING_BYTES)
        elif op == 3 and n:
            buf[i] = (buf[i] + rng.randint(-16, 16)) & 0xFF
        elif op == 4:
            buf[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 5 and n > 1:
            del buf[i:i + rng.randint(1, min(32, n - 1))]
        elif op == 6 and n > 2:
            k = rng.randint(1, min(64, n // 2))
            src, dst = rng.randrange(n - k + 1), rng.randrange(n - k + 1)
            buf[dst:dst + k] = buf[src:src + k]
        elif op == 7 and n > 2:
            k = rng.randint(1, min(64, n // 2))
            src = rng.randrange(n - k + 1)
            buf[i:i] = buf[src:src + k]
        elif op == 8 and other:
            buf = buf[:i] + bytearray(other[rng.randrange(len(other)):])
        else:
            buf += rng.randbytes(rng.randint(8, 64))
    return bytes(buf[:MAX_INPUT]) or b"\0"


# -- arcs (line/branch edges) as feedback ------------------------------------------------------

class ArcTracer:
    """coverage.py's tracer (branch mode) around single runs; :meth:`stop`
    returns the arcs of impls/ and oracle/ not seen in this process before, as
    ``"path:from:to"`` (lines; negative for entry/exit).

    It reads the collector's live arc sets (``Coverage._collector.data``,
    coverage.py 7.x internals): if they are not there, :attr:`ok` turns false
    and the exploration goes on with behaviour keys alone."""

    def __init__(self) -> None:
        import coverage
        self.cov = coverage.Coverage(source=[str(ROOT / p) for p in COVERED], branch=True,
                                     data_file=None, config_file=False)
        self._seen: dict[str, set] = {}
        self._rel: dict[str, str] = {}
        self.ok = True

    def start(self) -> None:
        self.cov.start()

    def stop(self) -> list[str]:
        self.cov.stop()
        collector = getattr(self.cov, "_collector", None)
        data = getattr(collector, "data", None)
        if not isinstance(data, dict):
            self.ok = False
            return []
        packed = bool(getattr(getattr(collector, "core", None), "packed_arcs", False))
        out: list[str] = []
        for fname, arcs in data.items():
            seen = self._seen.setdefault(fname, set())
            if len(arcs) == len(seen):
                continue
            new = arcs - seen
            seen |= new
            rel = self._rel.get(fname)
            if rel is None:
                try:
                    rel = self._rel[fname] = Path(fname).resolve().relative_to(ROOT).as_posix()
                except ValueError:
                    rel = self._rel[fname] = fname
            for a in new:
                l1, l2 = _unpack_arc(a) if packed else a
                out.append(f"{rel}:{l1}:{l2}")
        out.sort()
        return out


def _unpack_arc(packed: int) -> tuple[int, int]:
    """coverage.py's packed arc (tracer.c: CTracer_record_pair)."""
    l1 = packed & 0xFFFFFFF
    l2 = (packed >> 28) & 0xFFFFFFF
    if packed & (1 << 56):
        l1 = -l1
    if packed & (1 << 57):
        l2 = -l2
    return l1, l2


# -- the worker: runs iterations against its view of the corpus ------------------------------

@dataclass
class NewEntry:
    iteration: int
    target: str
    data: bytes
    keys: list[str]
    arcs: list[str]
    t: float


@dataclass
class Crash:
    iteration: int
    target: str
    data: bytes
    error: str
    tb: str
    t: float


@dataclass
class BatchResult:
    executed: list[int] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    entries: list[NewEntry] = field(default_factory=list)
    findings: list[tuple[Finding, str, bytes, float]] = field(default_factory=list)
    crashes: list[Crash] = field(default_factory=list)
    #: behaviour name -> programs (lockstep runs) that reached it
    behaviour_programs: dict[str, int] = field(default_factory=dict)
    traced: int = 0
    stopped: bool = False


class Worker:
    """Runs iterations: picks a parent in its corpus, mutates, runs the lockstep,
    keeps what reached a new key or arc.  One per process."""

    def __init__(self, config: Config, engine: str = DEFAULT_ENGINE, arcs: bool = True) -> None:
        self.config = config
        self.engine = engine
        self.strategies = [registry.strategy(s) for s in config.strategies]
        self.targets = build_targets(config)
        self.by_name = {t.name: t for t in self.targets}
        self.pool: dict[str, list[bytes]] = {t.name: [] for t in self.targets}
        self.cum: dict[str, list[int]] = {t.name: [] for t in self.targets}
        self.known_keys: set[str] = set()
        self.known_arcs: set[str] = set()
        #: finding signatures already reported, per dedup class (target_class())
        self.sigmem: dict[tuple, set[str]] = {}
        self.tracer: ArcTracer | None = None
        if arcs:
            try:
                self.tracer = ArcTracer()
            except Exception:  # coverage.py missing or unusable: behaviour keys alone
                self.tracer = None

    def add(self, target: str, data: bytes, weight: int) -> None:
        pool, cum = self.pool.get(target), self.cum.get(target)
        if pool is None or cum is None:
            return
        pool.append(data)
        cum.append((cum[-1] if cum else 0) + max(1, weight))

    def sync(self, entries: Iterable[tuple[str, bytes, int]], keys: Iterable[str] = (),
             arcs: Iterable[str] = (), signatures: Iterable[tuple[tuple, str]] = ()) -> None:
        for target, data, weight in entries:
            self.add(target, data, weight)
        self.known_keys.update(keys)
        self.known_arcs.update(arcs)
        for cls, sig in signatures:
            self.sigmem.setdefault(tuple(cls), set()).add(sig)

    def checkpoint(self) -> tuple:
        """What :meth:`rollback` restores: the corpus as the hub has it."""
        return ({t: len(p) for t, p in self.pool.items()}, set(self.known_keys), set(self.known_arcs),
                {k: set(v) for k, v in self.sigmem.items()})

    def rollback(self, snap: tuple) -> None:
        lens, keys, arcs, sigmem = snap
        for t, n in lens.items():
            del self.pool[t][n:]
            del self.cum[t][n:]
        self.known_keys, self.known_arcs, self.sigmem = keys, arcs, sigmem

    def _pick(self, rng: random.Random, target: str) -> bytes:
        pool, cum = self.pool[target], self.cum[target]
        return pool[bisect_right(cum, rng.randrange(cum[-1]))]

    def next_input(self, rng: random.Random, target: Target) -> bytes:
        pool = self.pool[target.name]
        if self.engine == "random" or not pool or rng.random() < FRESH_P:
            return fresh_input(rng)
        parent = self._pick(rng, target.name)
        other = self._pick(rng, target.name) if rng.random() < 0.3 else None
        return mutate(rng, parent, other)

    def run_batch(self, iterations: Sequence[int], deadline: float | None = None,
                  should_stop: Callable[[], bool] = lambda: False,
                  clock: Callable[[], float] = time.monotonic) -> BatchResult:
        """Run ``iterations`` in order (stopping early at ``deadline`` or when
        ``should_stop()``); ``t`` of what it reports is ``clock()``."""
        out = BatchResult()
        with PausedGC() as gcp:
            for i in iterations:
                if should_stop() or (deadline is not None and time.monotonic() >= deadline):
                    out.stopped = True
                    break
                self.one(i, out, clock)
                out.executed.append(i)
                gcp.tick()
        return out

    def one(self, i: int, out: BatchResult, clock: Callable[[], float] = time.monotonic) -> None:
        rng = random.Random(iteration_seed(self.config.seed, i))
        target = self.targets[i % len(self.targets)]
        coin = rng.random()  # drawn whether or not arcs are traced: same inputs either way
        trace = self.tracer is not None and self.tracer.ok and (i < WARMUP or coin < 1.0 / ARC_EVERY)
        data = self.next_input(rng, target)
        arcs: list[str] = []
        if trace:
            out.traced += 1
            self.tracer.start()
        try:
            program, choices = decode(data, target)
            res = run_lockstep(program, self.strategies, target.platform, choices)
        except PluginFailure:
            if trace:
                self.tracer.stop()
            raise                  # a plug-in's code raised: its error (exit 2), not the simulator's crash
        except Exception as e:  # the simulator crashed: a finding of its own, never hidden
            if trace:
                self.known_arcs.update(self.tracer.stop())
            out.stats.programs += 1
            tb = traceback.extract_tb(e.__traceback__)
            where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
            name = type(e).__name__
            out.crashes.append(Crash(i, target.name, data, f"{name} at {where}: {e}",
                                     traceback.format_exc(), clock()))
            return
        if trace:
            arcs = [a for a in self.tracer.stop() if a not in self.known_arcs]
        out.stats.account(res)
        names: set[str] = set()
        for r in res.runs:
            names.update(r.verdict.behaviours)
        for n in names:
            out.behaviour_programs[n] = out.behaviour_programs.get(n, 0) + 1
        keys = keys_of([r.verdict for r in res.runs], bool(res.divergences))
        new_keys = sorted({f"{target.name}|{k}" for k in keys} - self.known_keys)
        if new_keys or arcs:
            self.known_keys.update(new_keys)
            self.known_arcs.update(arcs)
            self.add(target.name, data, entry_weight(len(new_keys), len(arcs)))
            out.entries.append(NewEntry(i, target.name, data, new_keys, arcs, clock()))
        if not res.ok:
            memory = Stats(signatures=self.sigmem.setdefault(target_class(target), set()))
            for f in findings_of(res, program, memory, iteration_seed(self.config.seed, i), target.env,
                                 i, "explore"):
                out.findings.append((f, target.name, data, clock()))


def target_class(target: Target) -> tuple:
    """What makes the same race a different finding (fuzz.findings.dedup_key
    without the signature): the platform and the program's environment knobs."""
    spec = target.spec
    return (Path(spec).name if spec.endswith(".py") else spec, target.cfg.pt_reclaim, target.cfg.kvm,
            target.cfg.iommu, False)


def entry_weight(new_keys: int, new_arcs: int) -> int:
    """How often an input is picked as a parent, relative to the others."""
    return 1 + min(8, new_keys + new_arcs // 8)


# -- the work units: batches against the corpus hub --------------------------------------------------


class Hub:
    """The corpus hub (syzkaller's, in small): what the committed batches
    added (corpus inputs, keys, arcs, finding signatures), as numbered
    *deltas* in blobs of the execution layer, so a worker receives each delta
    once and a new worker all of them.  Blobs are merged as they grow (two of
    the same size into one, a binary counter), so a unit names O(log n)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.groups: list[tuple[str, list[tuple[int, tuple]]]] = []   # (blob key, [(id, delta)])
        self.next_id = 0
        self.forgotten: list[str] = []

    def add(self, entries: list[tuple[str, bytes, int]], keys: list[str], arcs: list[str],
            signatures: list[tuple[tuple, str]]) -> None:
        delta = (tuple(entries), tuple(keys), tuple(arcs), tuple(signatures))
        self.groups.append((self._key(self.next_id, self.next_id), [(self.next_id, delta)]))
        self.next_id += 1
        while len(self.groups) > 1 and len(self.groups[-1][1]) == len(self.groups[-2][1]):
            (k1, a), (k2, b) = self.groups[-2], self.groups[-1]
            self.forgotten += [k1, k2]
            self.groups[-2:] = [(self._key(a[0][0], b[-1][0]), a + b)]

    def _key(self, lo: int, hi: int) -> str:
        return f"hub-{self.name}-{lo}-{hi}"

    def blobs(self) -> dict[str, Any]:
        return {k: tuple(v) for k, v in self.groups}

    def keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.groups)


@dataclass
class ExploreResult(Result):
    batch: BatchResult = field(default_factory=BatchResult)


#: worker-side replicas of the hub: (exploration, engine, arcs) -> [Worker, next delta id]
_REPLICAS: dict[tuple, list] = {}


@dataclass(frozen=True)
class ExploreUnit:
    """Iterations of one batch, run against the hub as of the batch's start
    (the worker's own additions count within the unit, then are dropped: the
    parent commits what is new).  Strategy and platform files travel by
    content (fuzz.work.Plugin)."""

    exploration: str                      # an id of the session's exploration
    strategies: tuple[Plugin, ...]
    targets: tuple[tuple[str, Plugin], ...]
    length: int
    seed: int
    engine: str
    arcs: bool
    iterations: tuple[int, ...]
    hub: tuple[str, ...]
    epoch: float                          # time.time() at the session's start: the clock of ``t``
    seconds: float | None = None          # stop the batch after this long
    watchdog: float = WATCHDOG_SECONDS
    version: str = field(default_factory=code_version)

    def empty_result(self) -> ExploreResult:
        return ExploreResult()

    def _config(self, blobs: dict[str, Any]) -> Config:
        def spec(p: Plugin) -> str:
            return str(materialise(blobs[p.blob])) if p.is_file else p.name
        return Config(tuple(spec(s) for s in self.strategies), tuple((e, spec(p)) for e, p in self.targets),
                      self.length, self.seed)

    def run(self, blobs: dict[str, Any], should_stop: Callable[[], bool]) -> ExploreResult:
        WATCHDOG.limit = self.watchdog
        key = (self.exploration, self.engine, self.arcs, threading.get_ident())
        rep = _REPLICAS.get(key)
        deltas = sorted((d for k in self.hub for d in blobs[k]), key=lambda d: d[0])
        if rep is not None and deltas and deltas[0][0] > rep[1]:
            rep = None  # pragma: no cover  (the hub starts past this replica: start afresh)
        if rep is None:
            for k in [k for k in _REPLICAS if k[0] != self.exploration]:
                del _REPLICAS[k]   # one exploration per worker at a time
            rep = _REPLICAS[key] = [Worker(self._config(blobs), self.engine, self.arcs), 0]
        worker: Worker = rep[0]
        for i, (entries, keys, arcs, sigs) in deltas:
            if i < rep[1]:
                continue
            if i != rep[1]:  # pragma: no cover  (a gap: the hub lost a delta)
                raise ExploreError(f"corpus hub: delta {rep[1]} missing")
            worker.sync(entries, keys, arcs, sigs)
            rep[1] = i + 1
        snap = worker.checkpoint()
        t0 = time.monotonic()
        deadline = None if self.seconds is None else t0 + self.seconds
        try:
            batch = worker.run_batch(self.iterations, deadline, should_stop, lambda: time.time() - self.epoch)
        finally:
            worker.rollback(snap)
        return ExploreResult(batch=batch)


# -- the directory ----------------------------------------------------------------------------------

def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is for secrets, not reports
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _stats_json(s: Stats) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(s):
        v = getattr(s, f.name)
        out[f.name] = sorted(v) if isinstance(v, set) else v
    return out


def _stats_from_json(d: dict[str, Any]) -> Stats:
    s = Stats()
    for f in dataclasses.fields(s):
        if f.name in d:
            cur = getattr(s, f.name)
            v = d[f.name]
            setattr(s, f.name, set(v) if isinstance(cur, set) else (dict(v) if isinstance(cur, dict) else v))
    return s


def load_state(d: Path) -> dict[str, Any] | None:
    p = d / STATE_FILE
    if not p.exists():
        return None
    try:
        st = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExploreError(f"{p}: not a readable exploration state ({e})") from None
    if not isinstance(st, dict) or st.get("version") != STATE_VERSION or "config" not in st:
        raise ExploreError(f"{p}: not an exploration state of version {STATE_VERSION}")
    try:
        Config.from_json(st["config"])
    except (KeyError, TypeError, ValueError):
        raise ExploreError(f"{p}: malformed configuration") from None
    return st


def resolve_config(d: Path, strategies: Sequence[str] | None, targets: Sequence[tuple[str, str]] | None,
                   length: int | None, seed: int | None) -> tuple[Config, dict[str, Any] | None]:
    """The directory's configuration: what it was explored with (options left
    out keep it; options that contradict it are an error), or a new one."""
    st = load_state(d)
    if st is None:
        return Config(tuple(strategies or registry.STRATEGIES), tuple(targets or default_targets()),
                      DEFAULT_LENGTH if length is None else length, 0 if seed is None else seed), None
    old = Config.from_json(st["config"])
    want = Config(tuple(strategies) if strategies else old.strategies,
                  tuple(targets) if targets else old.targets,
                  old.length if length is None else length, old.seed if seed is None else seed)
    for what, a, b in (("strategies", old.strategies, want.strategies), ("targets", old.targets, want.targets),
                       ("--length", old.length, want.length), ("--seed", old.seed, want.seed)):
        if a != b:
            shown = (lambda v: ", ".join("/".join(x) if isinstance(x, tuple) else str(x) for x in v)
                     if isinstance(v, tuple) else str(v))
            raise ExploreError(f"{d}: explored with {what} {shown(a)}, not {shown(b)} "
                               "(leave the option out to resume, or use another --dir)")
    return old, st


def _new_state(config: Config) -> dict[str, Any]:
    return {"version": STATE_VERSION, "config": config.to_json(), "next_iteration": 0, "elapsed": 0.0,
            "stats": _stats_json(Stats()), "behaviour_programs": {}, "behaviours_first": {},
            "keys": [], "arcs": [], "corpus": [], "findings": [], "crashes": [], "sessions": [],
            "coverage": None}


@dataclass
class Progress:
    """A snapshot for the progress line."""

    elapsed: float
    session_seconds: float
    session_programs: int
    programs: int
    corpus: int
    keys: int
    arcs: int
    behaviours: int
    findings: int
    crashes: int

    @property
    def rate(self) -> float:
        return self.session_programs / self.session_seconds if self.session_seconds > 0 else 0.0

    def line(self) -> str:
        return (f"[{fmt_duration(self.elapsed)}] {self.programs} programs ({self.rate:.0f}/s)  "
                f"corpus {self.corpus}  behaviours {self.behaviours}/{len(BEHAVIOURS)}  "
                f"keys {self.keys}  arcs {self.arcs}  findings {self.findings}"
                + (f"  crashes {self.crashes}" if self.crashes else ""))


@dataclass
class Summary:
    dir: Path
    report: Path | None
    session_programs: int
    stopped_by: str
    progress: Progress
    findings: list[dict[str, Any]]
    crashes: list[dict[str, Any]]
    new_findings: int = 0


def fmt_duration(s: float) -> str:
    s = int(round(s))
    h, m, sec = s // 3600, s // 60 % 60, s % 60
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class Exploration:
    """The state of one exploration directory during a session."""

    def __init__(self, d: Path, config: Config, state: dict[str, Any] | None) -> None:
        self.dir = d
        self.config = config
        self.state = state if state is not None else _new_state(config)
        self.targets = build_targets(config)
        self.strategies = [registry.strategy(s) for s in config.strategies]
        self.by_name = {t.name: t for t in self.targets}
        self.stats = _stats_from_json(self.state["stats"])
        self.keys: set[str] = set(self.state["keys"])
        self.arcs: set[str] = set(self.state["arcs"])
        self.corpus: list[list[Any]] = []   # [target, name, iteration, t, weight], in commit order
        self.data: dict[str, bytes] = {}    # "target/name" -> bytes
        self._load_corpus()
        #: fuzz.findings dedup keys of the reproducers in findings/ -> their path
        self.known = findings_mod.existing(d / FINDINGS_DIR)
        #: corpus/expected-matrix.yaml, for labelling findings new or known (fuzz.triage)
        self.expected = triage.default_expected()
        self.session_t0 = time.monotonic()
        self.elapsed0 = float(self.state["elapsed"])
        self.session_programs = 0
        self.new_findings = 0
        self._last_log = -1e9
        self._stopped_at: float | None = None

    # -- corpus ------------------------------------------------------------------------------

    def _load_corpus(self) -> None:
        cdir = self.dir / CORPUS_DIR
        listed: set[str] = set()
        for row in self.state["corpus"]:
            target, name = row[0], row[1]
            p = cdir / _slug(target) / name
            if target in self.by_name and p.is_file():
                self.corpus.append(list(row))
                self.data[f"{target}/{name}"] = p.read_bytes()
                listed.add(f"{target}/{name}")
        # inputs written after the last checkpoint (or put there by hand)
        for t in self.targets:
            tdir = cdir / _slug(t.name)
            if not tdir.is_dir():
                continue
            for p in sorted(tdir.iterdir()):
                key = f"{t.name}/{p.name}"
                if p.is_file() and not p.name.startswith(".") and key not in listed:
                    self.corpus.append([t.name, p.name, -1, None, 1])
                    self.data[key] = p.read_bytes()

    def corpus_entries(self) -> list[tuple[str, bytes, int]]:
        return [(row[0], self.data[f"{row[0]}/{row[1]}"], int(row[4])) for row in self.corpus]

    def now(self) -> float:
        """Cumulative exploration seconds (over every session)."""
        if self._stopped_at is not None:
            return self._stopped_at
        return self.elapsed0 + time.monotonic() - self.session_t0

    def stop_clock(self) -> None:
        """Exploration is over for this session: minimising is not exploring."""
        self._stopped_at = self.now()

    def clock(self) -> float:
        return time.monotonic() - self.session_t0

    # -- committing a batch ---------------------------------------------------------------------

    def commit(self, results: list[BatchResult]) -> list[tuple[str, bytes, int]]:
        """Fold worker results into the directory, in iteration order; returns
        the corpus entries added (for the other workers)."""
        added: list[tuple[str, bytes, int]] = []
        for r in results:
            self.stats.merge(r.stats)
            self.session_programs += r.stats.programs
            bp = self.state["behaviour_programs"]
            for k, v in r.behaviour_programs.items():
                bp[k] = bp.get(k, 0) + v
        entries = sorted((e for r in results for e in r.entries), key=lambda e: e.iteration)
        first = self.state["behaviours_first"]
        for e in entries:
            new_k = [k for k in e.keys if k not in self.keys]
            new_a = [a for a in e.arcs if a not in self.arcs]
            if not new_k and not new_a:
                continue
            self.keys.update(new_k)
            self.arcs.update(new_a)
            t = self.elapsed0 + e.t
            for k in new_k:
                parts = k.split("|", 1)[1].split(":")
                if parts[0] == "b" and parts[2] not in first:
                    first[parts[2]] = {"t": round(t, 3), "iteration": e.iteration, "target": e.target}
            name = input_name(e.data)
            key = f"{e.target}/{name}"
            if key in self.data:
                continue
            p = self.dir / CORPUS_DIR / _slug(e.target) / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(e.data)
            w = entry_weight(len(new_k), len(new_a))
            self.corpus.append([e.target, name, e.iteration, round(t, 3), w])
            self.data[key] = e.data
            added.append((e.target, e.data, w))
        for r in results:
            for c in r.crashes:
                self._crash(c)
        for f, target, data, t in sorted((x for r in results for x in r.findings), key=lambda x: x[0].iteration):
            self._finding(f, target, data, self.elapsed0 + t)
        self.stats.findings = len(self.state["findings"])
        return added

    def _crash(self, c: Crash) -> None:
        name = input_name(c.data)
        kind = c.error.split(": ", 1)[0]  # the exception and where it was raised
        if any(x["input"] == name or x["error"].split(": ", 1)[0] == kind for x in self.state["crashes"]):
            return
        cdir = self.dir / CRASHES_DIR
        cdir.mkdir(parents=True, exist_ok=True)
        (cdir / f"{name}.bin").write_bytes(c.data)
        (cdir / f"{name}.txt").write_text(f"target {c.target}, iteration {c.iteration}\n\n{c.tb}", encoding="utf-8")
        self.state["crashes"].append({"input": name, "target": c.target, "iteration": c.iteration,
                                      "error": c.error.splitlines()[0][:300], "t": round(self.elapsed0 + c.t, 3)})

    def _finding(self, f: Finding, target_name: str, data: bytes, t: float) -> None:
        """Write a new finding at once, raw (fuzz.findings names it and fills its
        ``expect:`` header); :meth:`minimise` shrinks it at the end of the session."""
        target = self.by_name[target_name]
        fdir = self.dir / FINDINGS_DIR
        strategy = next((o for o in self.strategies if o.name == f.strategy), self.strategies[0])
        spec = self.config.strategies[self.strategies.index(strategy)]
        divergence = f.signature.startswith("divergence|")
        program = findings_mod._with_platform(f.program, findings_mod._platform_field(target.platform, fdir))
        key = findings_mod.dedup_key(f.signature, program)
        if key in self.known:
            return
        found_by = (f"shootdown explore --seed {self.config.seed} --length {self.config.length} "
                    f"(env {target.env.name}, target {target_name}, iteration {f.iteration}, "
                    f"after {fmt_duration(t)})")
        note = ("The strategies diverged each under its own schedule, which this file does not keep; "
                "the input next to it (.input) reproduces it." if divergence else "")
        lit, stem = findings_mod.build_litmus(f.program, strategy, self.strategies, target.platform,
                                              f.violations[0], f.signature, target.env.name, found_by, fdir, note)
        w = findings_mod.write(lit, stem, fdir, self.known)
        if w.path is None:
            return
        w.path.with_suffix(".input").write_bytes(data)
        if divergence:
            lab = triage.divergence_label([(s.name, s.meta.get("safe_on", ())) for s in self.strategies],
                                          target.env.name, self.expected)
            key = triage.divergence_key(str(f.violations[0].extra.get("observable", "")))
            replayed = triage.replays_divergence(corpus.load(w.path), self.strategies, target.platform, fdir, key)
        else:
            lab = triage.label(strategy.name, target.env.name, strategy.meta.get("safe_on", ()), self.expected)
            replayed = None
        self.state["findings"].append({
            "status": lab.status, "known_because": lab.why, "known_basis": lab.basis, "replayed": replayed,
            "env": target.env.name,
            "file": f"{FINDINGS_DIR}/{w.path.name}", "signature": f.signature,
            "violation_signature": (f"divergence|{f.violations[0].extra.get('observable', '')}" if divergence
                                    else f.violations[0].signature()),
            "class": list(target_class(target)), "strategy": f.strategy, "strategy_spec": spec,
            "checks": sorted(f.checks), "target": target_name, "iteration": f.iteration, "t": round(t, 3),
            "summary": f.violations[0].summary[:500], "size": size_of(f.program), "minimised": False,
            "minimise": None})
        self.new_findings += 1

    def minimisations(self, attempts: int) -> list[tuple[dict[str, Any], corpus.Litmus, Any, dict[str, Any]]]:
        """The findings not minimised yet, each as (finding, its litmus file,
        the MinimizeUnit that shrinks it, the unit's blobs); a finding whose
        file or plug-in no longer loads is marked and left raw."""
        out = []
        for f in self.state["findings"]:
            if f.get("minimise") is not None:
                continue
            target = self.by_name.get(f["target"])
            try:
                lit = corpus.load(self.dir / f["file"])
                if target is None:
                    raise ExploreError(f"target {f['target']} is not explored any more")
                blobs: dict[str, Any] = {}
                cell = make_cell(self.config.strategies, target.spec, target.env.name, blobs)
                index = list(self.config.strategies).index(f["strategy_spec"])
            except Exception as e:  # a file or plug-in that no longer loads: reported, left raw
                f["minimise"] = {"error": f"{type(e).__name__}: {e}"[:300]}
                continue
            unit = MinimizeUnit(cell, index, lit.program, f["violation_signature"],
                                f["signature"].startswith("divergence|"), attempts)
            out.append((f, lit, unit, blobs))
        return out

    def minimised(self, f: dict[str, Any], lit: corpus.Litmus, res: MinimizeResult) -> bool:
        """Rewrite the finding's file with the minimised program; False if it
        did not replay (it stays raw, with the reason)."""
        if res.program is None:
            why = (res.plugin_failure or res.unreplayable or res.error or res.crash
                   or (f"watchdog: {res.watchdog}" if res.watchdog else "?"))
            f["minimise"] = {"error": why.strip()[:300], "seconds": round(res.seconds, 1)}
            return False
        target = self.by_name[f["target"]]
        path = self.dir / f["file"]
        strategy = registry.strategy(f["strategy_spec"])
        platform = registry.platform(target.spec)
        before = f["size"]
        note = (f"Minimised from {before['ops']} ops + {before['setup']} setup on {before['cpus']} CPUs "
                f"({before['preemptions']} preemptions).")
        new, _ = findings_mod.build_litmus(res.program, strategy, self.strategies, platform, res.violation,
                                           f["signature"], target.env.name, lit.found_by, path.parent, note)
        corpus.save(new, path)
        f["minimise"] = {"seconds": round(res.seconds, 1), "complete": res.complete, "runs": res.runs,
                         "before": res.before, "after": res.after}
        f["minimised"] = True
        f["size"] = res.after
        f["summary"] = res.violation.summary[:500]
        return True

    # -- checkpoints ----------------------------------------------------------------------------------

    def progress(self) -> Progress:
        return Progress(self.now(), time.monotonic() - self.session_t0, self.session_programs,
                        self.stats.programs, len(self.corpus), len(self.keys), len(self.arcs),
                        len(self.state["behaviours_first"]), len(self.state["findings"]),
                        len(self.state["crashes"]))

    def log_progress(self, force: bool = False) -> Progress:
        p = self.progress()
        if not force and time.monotonic() - self._last_log < PROGRESS_EVERY:
            return p
        self._last_log = time.monotonic()
        path = self.dir / PROGRESS_FILE
        new = not path.exists()
        with path.open("a", encoding="utf-8") as f:
            if new:
                f.write("\t".join(PROGRESS_COLUMNS) + "\n")
            f.write("\t".join(str(x) for x in (
                round(p.elapsed, 1), len(self.state["sessions"]), p.programs, p.corpus, p.keys, p.arcs,
                p.behaviours, p.findings, p.crashes, round(p.rate, 1))) + "\n")
        self.save()
        return p

    def save(self) -> None:
        st = self.state
        st["elapsed"] = round(self.now(), 3)
        st["stats"] = _stats_json(self.stats)
        st["keys"] = sorted(self.keys)
        st["arcs"] = sorted(self.arcs)
        st["corpus"] = self.corpus
        _atomic_write(self.dir / STATE_FILE, json.dumps(st, indent=1, sort_keys=True) + "\n")


# -- the session ---------------------------------------------------------------------------------------

class _Interrupt:
    """Ctrl-C or SIGTERM sets a flag (stop at the next iteration, save,
    report); a second one raises KeyboardInterrupt as usual."""

    def __init__(self) -> None:
        self.flag = False
        self._old = None

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
            self._old_term = signal.signal(signal.SIGTERM, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            signal.signal(signal.SIGTERM, self._old_term)


def explore(d: str | Path, strategies: Sequence[str] | None = None,
            targets: Sequence[tuple[str, str]] | None = None, *, engine: str = DEFAULT_ENGINE,
            length: int | None = None, seed: int | None = None, budget: float | None = None,
            runs: int | None = None, jobs: int = 1, arcs: bool = True,
            on_progress: Callable[[Progress], None] | None = None, report: bool = True,
            report_jobs: int | None = None, minimize_attempts: int = DEFAULT_ATTEMPTS,
            on_status: Callable[[str], None] | None = None, cluster: str | None = None,
            watchdog: float = WATCHDOG_SECONDS) -> Summary:
    """Explore into (or resume) directory ``d`` until ``budget`` seconds or
    ``runs`` programs have run in this session, or Ctrl-C/SIGTERM; save;
    minimise the new findings as work units (``minimize_attempts`` runs each, 0: not at all;
    skipped after an interruption, a later session does it); write the report.
    ``strategies``: built-in names or strategy file paths; ``targets``:
    (environment, platform) pairs (:func:`target_specs`).  The batches run
    on the execution layer: ``jobs`` local workers, or the Dask ``cluster``."""
    d = Path(d)
    if engine not in ENGINES:
        raise ExploreError(f"unknown engine {engine!r} (explore engines: {', '.join(ENGINES)})")
    try:
        check_jobs(jobs)
    except ExecutionError as e:
        raise ExploreError(str(e)) from None
    if budget is not None and not (budget >= 0 and math.isfinite(budget)):
        raise ExploreError(f"--budget {budget:g}: must be a number of seconds, not negative")
    if runs is not None and runs < 0:
        raise ExploreError(f"--runs {runs}: must not be negative")
    if minimize_attempts < 0:
        raise ExploreError(f"--minimize-attempts {minimize_attempts}: must not be negative")
    if length is not None and not 1 <= length <= 1000:
        raise ExploreError(f"--length {length}: must be between 1 and 1000")
    if d.exists() and not d.is_dir():
        raise ExploreError(f"{d}: not a directory")
    config, state = resolve_config(d, strategies, targets, length, seed)
    d.mkdir(parents=True, exist_ok=True)
    ex = Exploration(d, config, state)
    session = {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "engine": engine, "jobs": jobs, "first_iteration": ex.state["next_iteration"]}
    ex.state["sessions"].append(session)
    stopped_by = "budget"
    with _Interrupt() as intr:
        pool = executor(jobs, cluster, lambda: intr.flag)
        try:
            source = _Batches(ex, config, engine, arcs, runs, budget, pool, intr, on_progress, watchdog)
            try:
                drive(pool, source)
                stopped_by = source.stopped_by
            finally:
                session["programs"] = ex.session_programs
                session["seconds"] = round(time.monotonic() - ex.session_t0, 3)
                session["stopped_by"] = stopped_by
                session["next_iteration"] = ex.state["next_iteration"]
                prog = ex.log_progress(force=True)
                ex.stop_clock()
            if stopped_by != "interrupt" and minimize_attempts > 0:
                m = _Minimisations(ex, minimize_attempts, intr, on_status)
                drive(pool, m, abandon=lambda: intr.flag)
                session["minimised"] = m.shrunk
                ex.save()
        finally:
            pool.close()
            if pool.lost:
                session["lost_workers"] = list(pool.lost)
    path = write_report(d, jobs=report_jobs or jobs) if report else None
    st = load_state(d) or ex.state
    return Summary(d, path, ex.session_programs, stopped_by, prog, st["findings"], st["crashes"],
                   ex.new_findings)


class _Minimisations:
    """The session's new findings minimised as work units (fuzz.work.MinimizeUnit,
    bounded by runs), on the same workers; each file is rewritten as its
    result comes back."""

    def __init__(self, ex: Exploration, attempts: int, intr: _Interrupt,
                 on_status: Callable[[str], None] | None) -> None:
        self.ex, self.intr, self.on_status = ex, intr, on_status
        self.todo = ex.minimisations(attempts)
        self.inflight = 0
        self.shrunk = 0

    def next_unit(self) -> tuple[Any, dict[str, Any], Any] | None:
        if not self.todo or self.intr.flag:
            return None
        f, lit, unit, blobs = self.todo.pop(0)
        if self.on_status is not None:
            self.on_status(f"minimising {f['file']} ...")
        self.inflight += 1
        return unit, {k: blobs[k] for k in unit.blobs()}, (f, lit)

    def absorb(self, tag: Any, res: MinimizeResult) -> None:
        self.inflight -= 1
        f, lit = tag
        self.shrunk += self.ex.minimised(f, lit, res)

    def failed(self, tag: Any, error: str) -> None:
        self.inflight -= 1
        tag[0]["minimise"] = {"error": error[:300]}

    def finished(self) -> bool:
        return self.inflight == 0 and (not self.todo or self.intr.flag)


class _Batches:
    """An exploration session as a source of work units (fuzz.execution.drive):
    batch after batch, each cut into one unit per worker (worker ``w`` takes
    iterations ``w, w+J, ...``); a batch is committed, in iteration order,
    when all its units are back, and what it added goes to the hub."""

    def __init__(self, ex: Exploration, config: Config, engine: str, arcs: bool, runs: int | None,
                 budget: float | None, pool: Any, intr: _Interrupt,
                 on_progress: Callable[[Progress], None] | None, watchdog: float) -> None:
        self.ex, self.config, self.engine, self.arcs = ex, config, engine, arcs
        self.runs, self.pool, self.intr, self.on_progress = runs, pool, intr, on_progress
        self.watchdog = watchdog
        self.deadline = None if budget is None else time.monotonic() + budget
        self.jobs = max(1, pool.capacity() // 2) if not isinstance(pool, InProcess) else 1
        self.blobs: dict[str, Any] = {}
        self.strategies = tuple(plugin_ref("strategy", s, self.blobs) for s in config.strategies)
        self.targets = tuple((e, plugin_ref("platform", p, self.blobs)) for e, p in config.targets)
        self.hub = Hub(hashlib.sha1(f"{ex.dir.resolve()}|{time.time()}".encode()).hexdigest()[:12])
        self.epoch = time.time() - ex.clock()
        entries = ex.corpus_entries()
        sigs = [(tuple(f["class"]), f["signature"]) for f in ex.state["findings"]]
        self.hub.add(entries, sorted(ex.keys), sorted(ex.arcs), sigs)
        self.done = 0
        self.stopped_by = "budget"
        self.batch: list[ExploreResult | None] | None = None
        self.queue: list[ExploreUnit] = []
        self.over = False
        ex.log_progress(force=True)

    def _stop_reason(self) -> str | None:
        if self.intr.flag:
            return "interrupt"
        if self.runs is not None and self.done >= self.runs:
            return "runs"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "budget"
        return None

    def _new_batch(self) -> None:
        n = BATCH * self.jobs
        if self.runs is not None:
            n = min(n, self.runs - self.done)
        start = self.ex.state["next_iteration"]
        self.batch_start, self.batch_n = start, n
        left = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        self.queue = [ExploreUnit(self.hub.name, self.strategies, self.targets, self.config.length,
                                  self.config.seed, self.engine, self.arcs,
                                  tuple(start + k for k in range(w, n, self.jobs)), self.hub.keys(), self.epoch,
                                  left, self.watchdog)
                      for w in range(self.jobs)]
        self.batch = [None] * self.jobs

    def next_unit(self) -> tuple[Any, dict[str, Any], Any] | None:
        if self.over:
            return None
        if self.batch is None:
            why = self._stop_reason()
            if why is not None:
                self.stopped_by, self.over = why, True
                return None
            self._new_batch()
        if not self.queue:
            return None
        unit = self.queue.pop(0)
        w = self.jobs - len(self.queue) - 1
        blobs = {**self.blobs, **self.hub.blobs()}
        return unit, {k: blobs[k] for k in (*[p.blob for p in (*unit.strategies, *(t for _, t in unit.targets))
                                             if p.is_file], *unit.hub)}, w

    def absorb(self, w: int, res: ExploreResult) -> None:
        if res.plugin_failure:
            raise PluginError(local_paths(res.plugin_failure))
        if res.error or res.crash:
            raise ExploreError(f"a worker failed: {(res.error or res.crash or '').strip().splitlines()[-1]}")
        assert self.batch is not None
        self.batch[w] = res
        if any(r is None for r in self.batch):
            return
        results = [r.batch for r in self.batch if r is not None]
        ex = self.ex
        keys0, arcs0, n_findings, before = set(ex.keys), set(ex.arcs), len(ex.state["findings"]), len(ex.corpus)
        ex.commit(results)
        added = [(row[0], ex.data[f"{row[0]}/{row[1]}"], int(row[4])) for row in ex.corpus[before:]]
        self.hub.add(added, sorted(ex.keys - keys0), sorted(ex.arcs - arcs0),
                     [(tuple(f["class"]), f["signature"]) for f in ex.state["findings"][n_findings:]])
        if self.hub.forgotten and hasattr(self.pool, "forget"):
            self.pool.forget(self.hub.forgotten)
        self.hub.forgotten = []
        self.done += sum(len(r.executed) for r in results)
        ex.state["next_iteration"] = self.batch_start + self.batch_n
        self.batch = None
        p = ex.log_progress()
        if self.on_progress is not None:
            self.on_progress(p)
        if any(r.stopped for r in results) and self.intr.flag:
            self.stopped_by, self.over = "interrupt", True

    def failed(self, w: int, error: str) -> None:
        raise ExploreError(f"a worker failed: {error}")

    def finished(self) -> bool:
        if self.batch is None and not self.over:
            why = self._stop_reason()
            if why is not None:
                self.stopped_by, self.over = why, True
        return self.over and self.batch is None


# -- coverage of the corpus ---------------------------------------------------------------------------

def _fingerprint(st: dict[str, Any]) -> str:
    h = hashlib.sha1()
    for row in st["corpus"]:
        h.update(f"{row[0]}/{row[1]}\n".encode())
    for f in st["findings"]:
        h.update(f"{f['file']}\n".encode())
    return h.hexdigest()


def replay_shard(d: str | Path, shard: int, nshards: int) -> int:
    """Replay every ``nshards``-th corpus input (and, in shard 0, the findings)
    of exploration ``d``; the coverage subprocess calls it under coverage."""
    d = Path(d)
    st = load_state(d)
    if st is None:
        return 0
    config = Config.from_json(st["config"])
    targets = {t.name: t for t in build_targets(config)}
    strategies = [registry.strategy(s) for s in config.strategies]
    n = 0
    for k, row in enumerate(st["corpus"]):
        if k % nshards != shard or row[0] not in targets:
            continue
        p = d / CORPUS_DIR / _slug(row[0]) / row[1]
        if p.is_file():
            execute(p.read_bytes(), targets[row[0]], strategies)
            n += 1
    if shard == 0:
        for f in st["findings"]:
            try:
                lit = corpus.load(d / f["file"])
                run_program(lit.program, registry.strategy(f["strategy_spec"]),
                            registry.platform(lit.program.platform))
            except (corpus.CorpusError, OSError):
                continue
            n += 1
    return n


_COVERAGE_CHILD = """\
import sys, coverage
cov = coverage.Coverage(data_file=sys.argv[1], data_suffix=True, source_pkgs=["impls", "oracle"],
                        branch=True, config_file=False)
cov.start()
from fuzz.explore import replay_shard
n = replay_shard(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
cov.stop()
cov.save()
print(n)
"""


def measure_coverage(d: Path, jobs: int = 1) -> dict[str, Any]:
    """Replay the corpus under coverage.py in ``jobs`` fresh processes; write
    coverage.json and coverage-html/; return the summary kept in the state."""
    import coverage
    st = load_state(d)
    if st is None:
        raise ExploreError(f"{d}: no exploration here ({STATE_FILE} missing)")
    data_file = d / COVERAGE_DATA
    for old in d.glob(f"{COVERAGE_DATA}*"):
        old.unlink()
    jobs = max(1, min(jobs, max(1, len(st["corpus"]))))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", _COVERAGE_CHILD, str(data_file.resolve()), str(d.resolve()),
                               str(k), str(jobs)], cwd=str(ROOT), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in range(jobs)]
    replayed = 0
    for p in procs:
        try:
            out, err = p.communicate()
        except KeyboardInterrupt:
            for q in procs:
                q.kill()
            raise
        if p.returncode != 0:
            last = (err.strip().splitlines() or ["no output"])[-1]
            raise ExploreError(f"{d}: replaying the corpus under coverage failed: {last}")
        replayed += int(out.strip().splitlines()[-1])
    cov = coverage.Coverage(data_file=str(data_file), source_pkgs=list(COVERED), branch=True,
                            config_file=False)
    cov.combine([str(d)], strict=True, keep=False)
    cov.save()
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)  # module names relative to the repository in both reports
        cov.json_report(outfile=str((d / COVERAGE_JSON).resolve()), pretty_print=True)
        cov.html_report(directory=str((d / COVERAGE_HTML).resolve()),
                        title=f"shootdown explore: coverage of {d.name}")
    finally:
        os.chdir(cwd)
    files = json.loads((d / COVERAGE_JSON).read_text(encoding="utf-8"))["files"]
    summary = {"fingerprint": _fingerprint(st), "replayed": replayed,
               "seconds": round(time.monotonic() - t0, 1), "packages": {}}
    for root in COVERED:
        summary["packages"][root] = _sum_cov(v["summary"] for k, v in files.items()
                                             if _rel(k).startswith(root + "/"))
    return summary


def _rel(path: str) -> str:
    p = Path(path)
    if p.is_absolute():
        try:
            return p.resolve().relative_to(ROOT).as_posix()
        except ValueError:
            return p.as_posix()
    return p.as_posix()


def _sum_cov(summaries: Iterable[dict[str, Any]]) -> dict[str, int]:
    out = {"statements": 0, "covered_lines": 0, "branches": 0, "covered_branches": 0, "partial": 0}
    for s in summaries:
        out["statements"] += s.get("num_statements", 0)
        out["covered_lines"] += s.get("covered_lines", 0)
        out["branches"] += s.get("num_branches", 0)
        out["covered_branches"] += s.get("covered_branches", 0)
        out["partial"] += s.get("num_partial_branches", 0)
    return out


def _pct(a: int, b: int) -> str:
    return f"{100.0 * a / b:.1f}%" if b else "n/a"


# -- the report ---------------------------------------------------------------------------------------------

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 48) -> str:
    if not values:
        return ""
    if len(values) > width:
        values = [values[min(len(values) - 1, round(k * (len(values) - 1) / (width - 1)))] for k in range(width)]
    lo, hi = min(values), max(values)
    if hi == lo:
        return SPARK[-1 if hi else 0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / (hi - lo) * (len(SPARK) - 1) + 0.5))] for v in values)


def read_progress(d: Path) -> list[dict[str, float]]:
    p = d / PROGRESS_FILE
    if not p.exists():
        return []
    rows: list[dict[str, float]] = []
    lines = p.read_text(encoding="utf-8").splitlines()
    if not lines:
        return rows
    head = lines[0].split("\t")
    for ln in lines[1:]:
        parts = ln.split("\t")
        if len(parts) != len(head):
            continue
        try:
            rows.append({h: float(v) for h, v in zip(head, parts, strict=True)})
        except ValueError:
            continue
    return rows


def _finding_diagram(d: Path, f: dict[str, Any], strategies: Sequence[str],
                     width: int = 100) -> tuple[str, bool]:
    """The race diagram of a finding's reproducer, and whether replaying it
    shows the finding again (for a divergence: whether the lockstep replay of
    the program, every strategy under the file's schedule, still diverges)."""
    from .render import Story, text_diagram
    from .report import expectation
    lit = corpus.load(d / f["file"])
    platform = registry.platform(lit.program.platform)
    run = run_program(lit.program, registry.strategy(f["strategy_spec"]), platform)
    story = Story(lit.program, run, title=lit.title, path=f["file"], expectation=expectation(lit, run.verdict))
    if f["signature"].startswith("divergence|"):
        res = run_lockstep(lit.program, [registry.strategy(s) for s in strategies], platform)
        reproduced = bool(res.divergences)
    else:
        reproduced = bool(set(f["checks"]) & set(run.verdict.checks()))
    return text_diagram(story, width=width), reproduced


def write_report(d: str | Path, jobs: int = 1, remeasure: bool = False) -> Path:
    """(Re)write ``d``/report.md from the directory: coverage is measured again
    only if the corpus or the findings changed since it was last measured."""
    d = Path(d)
    st = load_state(d)
    if st is None:
        raise ExploreError(f"{d}: no exploration here ({STATE_FILE} missing)")
    cov = st.get("coverage")
    if remeasure or not cov or cov.get("fingerprint") != _fingerprint(st) or not (d / COVERAGE_JSON).exists():
        cov = measure_coverage(d, jobs)
        st["coverage"] = cov
        _atomic_write(d / STATE_FILE, json.dumps(st, indent=1, sort_keys=True) + "\n")
    text = render_report(d, st)
    _atomic_write(d / REPORT_FILE, text)
    return d / REPORT_FILE


def render_report(d: Path, st: dict[str, Any]) -> str:
    config = Config.from_json(st["config"])
    stats = st["stats"]
    cov = st.get("coverage") or {"packages": {}}
    findings, crashes = st["findings"], st["crashes"]
    first = st["behaviours_first"]
    elapsed = float(st["elapsed"])
    sessions = st["sessions"]
    programs = int(stats.get("programs", 0))
    o: list[str] = [f"# shootdown exploration: `{d}`", ""]
    o += ["## Summary", "", "| | |", "|---|---|"]
    o.append(f"| strategies | {', '.join(Path(s).name if s.endswith('.py') else s for s in config.strategies)} |")
    tnames = [t.name for t in build_targets(config)]
    o.append(f"| targets ({len(tnames)}) | {', '.join(tnames)} |")
    engines = sorted({s.get("engine", "?") for s in sessions})
    o.append(f"| engine | {', '.join(engines)}; seed {config.seed}; {config.length} operations per program |")
    o.append(f"| time | {fmt_duration(elapsed)} over {len(sessions)} session(s); next iteration "
             f"{st['next_iteration']} |")
    rate = programs / elapsed if elapsed else 0.0
    o.append(f"| programs | {programs} ({rate:.1f}/s), {int(stats.get('steps', 0))} steps, "
             f"{int(stats.get('violating', 0))} with a violation |")
    o.append(f"| corpus | {len(st['corpus'])} inputs; {len(st['keys'])} feedback keys, {len(st['arcs'])} arcs |")
    o.append(f"| behaviours | {len(first)} of {len(BEHAVIOURS)} reached |")
    for root in COVERED:
        c = cov["packages"].get(root)
        if c:
            o.append(f"| coverage of {root}/ | lines {_pct(c['covered_lines'], c['statements'])} "
                     f"({c['covered_lines']}/{c['statements']}), branches "
                     f"{_pct(c['covered_branches'], c['branches'])} ({c['covered_branches']}/{c['branches']}) |")
    counts = {k: sum(1 for f in findings if finding_status(f) == k) for k in ("new", "known", "unreplayable")}
    o.append(f"| findings | {counts['new'] + counts['known']} ({counts['new']} new, {counts['known']} known)"
             + (f"; divergences that do not replay (defects): {counts['unreplayable']}"
                if counts["unreplayable"] else "")
             + (f"; crashes of the simulator: {len(crashes)}" if crashes else "")
             + " |")
    o.append("")
    o += _coverage_section(d, cov)
    o += _behaviour_section(st, programs)
    o += _growth_section(d)
    o += _findings_section(d, findings, crashes, config.strategies)
    o += _sessions_section(sessions)
    return "\n".join(o).rstrip() + "\n"


def _coverage_section(d: Path, cov: dict[str, Any]) -> list[str]:
    o = ["## Coverage", ""]
    p = d / COVERAGE_JSON
    if not p.exists():
        return o + ["(not measured)", ""]
    o.append(f"Replaying the corpus ({cov.get('replayed', '?')} programs and reproducers) under coverage.py, "
             f"line and branch, in {cov.get('seconds', '?')} s. Per-line detail: `{COVERAGE_HTML}/index.html`.")
    o.append("")
    files = {_rel(k): v["summary"] for k, v in json.loads(p.read_text(encoding="utf-8"))["files"].items()}
    groups: dict[str, list[str]] = {}
    for f in sorted(files):
        groups.setdefault(str(Path(f).parent.as_posix()), []).append(f)
    o += ["| package | lines | branches |", "|---|---:|---:|"]
    for g in sorted(groups):
        c = _sum_cov(files[f] for f in groups[g])
        label = f"{g}/*.py" if g in COVERED else f"{g}/"
        o.append(f"| {label} | {_pct(c['covered_lines'], c['statements'])} ({c['covered_lines']}/{c['statements']}) | "
                 f"{_pct(c['covered_branches'], c['branches'])} ({c['covered_branches']}/{c['branches']}) |")
    for root in COVERED:
        c = cov["packages"].get(root)
        if c:
            o.append(f"| **{root}/ total** | **{_pct(c['covered_lines'], c['statements'])}** | "
                     f"**{_pct(c['covered_branches'], c['branches'])}** |")
    o += ["", "| module | statements | missed | branches | partial | lines | branches |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for f in sorted(files):
        s = files[f]
        o.append(f"| {f} | {s['num_statements']} | {s['missing_lines']} | {s['num_branches']} | "
                 f"{s['num_partial_branches']} | {_pct(s['covered_lines'], s['num_statements'])} | "
                 f"{_pct(s['covered_branches'], s['num_branches'])} |")
    o.append("")
    return o


def _behaviour_section(st: dict[str, Any], programs: int) -> list[str]:
    counts = st["stats"].get("behaviours", {})
    bp = st["behaviour_programs"]
    first = st["behaviours_first"]
    o = ["## Behaviours", "",
         "The oracle's \"sometimes\" events (oracle/behaviours.py): *events* counts them over every run of every "
         "strategy, *programs* the lockstep programs where at least one strategy's run reached it.", "",
         "| behaviour | what | events | programs | first reached |", "|---|---|---:|---:|---|"]
    order = sorted(BEHAVIOURS, key=lambda b: (b not in first, first.get(b, {}).get("t", 0.0), b))
    for b in order + sorted(set(counts) - set(BEHAVIOURS)):
        f = first.get(b)
        when = (f"{fmt_duration(f['t'])} (iteration {f['iteration']}, {f['target']})" if f else "**never**")
        share = f" ({100.0 * bp.get(b, 0) / programs:.1f}%)" if programs and bp.get(b) else ""
        o.append(f"| `{b}` | {BEHAVIOURS.get(b, '')} | {counts.get(b, 0)} | {bp.get(b, 0)}{share} | {when} |")
    o.append("")
    return o


def _growth_section(d: Path) -> list[str]:
    rows = read_progress(d)
    o = ["## Corpus growth", ""]
    if not rows:
        return o + ["(no progress log)", ""]
    o += ["```", f"corpus     {sparkline([r['corpus'] for r in rows])}  {int(rows[-1]['corpus'])}",
          f"keys       {sparkline([r['keys'] for r in rows])}  {int(rows[-1]['keys'])}",
          f"behaviours {sparkline([r['behaviours'] for r in rows])}  {int(rows[-1]['behaviours'])}",
          "```", f"(over {fmt_duration(rows[-1]['elapsed_s'])}, {len(rows)} samples of `{PROGRESS_FILE}`)", "",
          "| time | programs | corpus | keys | arcs | behaviours | findings | programs/s |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    n = len(rows)
    picks = sorted({round(k * (n - 1) / 11) for k in range(12)}) if n > 12 else range(n)
    for k in picks:
        r = rows[k]
        o.append(f"| {fmt_duration(r['elapsed_s'])} | {int(r['programs'])} | {int(r['corpus'])} | {int(r['keys'])} | "
                 f"{int(r['arcs'])} | {int(r['behaviours'])} | {int(r['findings'])} | {r['programs_per_s']:.0f} |")
    o.append("")
    return o


def finding_status(f: dict[str, Any]) -> str:
    """A finding of the state: "new", "known" (fuzz.triage), or "unreplayable"
    (a divergence its reproducer does not show again: a defect, not a finding)."""
    if f.get("replayed") is False:
        return "unreplayable"
    return str(f.get("status", "new"))


def _findings_section(d: Path, findings: list[dict[str, Any]], crashes: list[dict[str, Any]],
                      strategies: Sequence[str]) -> list[str]:
    """A table of every finding, then one diagram per (strategy, checks,
    target): the first found; the others of the group are listed under it."""
    o = ["## Findings", ""]
    if not findings and not crashes:
        return o + ["None.", ""]
    groups: dict[tuple, list[int]] = {}
    for k, f in enumerate(findings):
        groups.setdefault((f["strategy"], tuple(f["checks"]), f["target"]), []).append(k)
    if findings:
        n = {s: sum(1 for f in findings if finding_status(f) == s) for s in ("new", "known", "unreplayable")}
        o += [f"{n['new']} new, {n['known']} known (the strategy does not claim the environment in SAFE_ON, or "
              f"corpus/expected-matrix.yaml says U)"
              + (f", {n['unreplayable']} divergence(s) that do not replay from their reproducer (a defect of "
                 "the divergence check, not counted as findings)" if n["unreplayable"] else "") + ".", ""]
        o += ["| # | status | checks | strategy | target | found | reproducer |", "|---:|---|---|---|---|---:|---|"]
        for k, f in enumerate(findings, 1):
            o.append(f"| {k} | {finding_status(f)} | {', '.join(f['checks'])} | {f['strategy']} | {f['target']} | "
                     f"{fmt_duration(f['t'])} | `{f['file']}` |")
        o.append("")
    for (strategy, checks, target), members in groups.items():
        f = findings[members[0]]
        st = finding_status(f)
        why = {"known": f" (known: {f.get('known_because', '')})", "unreplayable": " (DEFECT: does not replay)"}
        o += [f"### {members[0] + 1}. {', '.join(checks)} on {strategy} ({target}){why.get(st, '')}", "",
              f"`{f['file']}`: found at {fmt_duration(f['t'])}, iteration {f['iteration']}"
              + _minimised_text(f)
              + f". Replay: `shootdown run {d / f['file']}`; draw: `shootdown explain {d / f['file']}`.", "",
              f"> {f['summary']}", ""]
        try:
            diagram, reproduced = _finding_diagram(d, f, strategies)
        except Exception as e:  # a broken reproducer is reported, the report still written
            o += [f"(cannot draw: {type(e).__name__}: {e})", ""]
            diagram, reproduced = "", True
        if (not reproduced or f.get("replayed") is False) and f["signature"].startswith("divergence|"):
            input_file = Path(f["file"]).with_suffix(".input").as_posix()
            o += ["**Not a finding: a defect of the divergence check.** The strategies diverged each under "
                  "its own schedule, which the YAML file does not keep; replayed from the file (every strategy "
                  "under its one schedule) they agree, so the observable was not schedule-robust. "
                  f"`{input_file}` holds the input that diverges (`fuzz.explore.execute`).", ""]
        elif not reproduced:
            o += ["**Replaying the reproducer no longer shows this check.**", ""]
        if diagram:
            o += ["```text", diagram.rstrip(), "```", ""]
        if len(members) > 1:
            o += [f"Other findings of {', '.join(checks)} on {strategy} ({target}), with other witnesses:", ""]
            for k in members[1:]:
                g = findings[k]
                o.append(f"- #{k + 1} `{g['file']}` ({fmt_duration(g['t'])}): {g['summary']}")
            o.append("")
    if crashes:
        o += ["### Crashes of the simulator", "",
              "The simulator raised on these inputs (input bytes and traceback in `crashes/`):", ""]
        for c in crashes:
            o.append(f"- `{CRASHES_DIR}/{c['input']}.bin` ({c['target']}, iteration {c['iteration']}): {c['error']}")
        o.append("")
    return o


def _minimised_text(f: dict[str, Any]) -> str:
    m = f.get("minimise")
    if not m:
        return " (not minimised yet)"
    if "error" in m:
        return " (not minimised: it does not replay from the file alone)" if "reproduce" in m["error"] else (
            f" (not minimised: {m['error']})")
    b, a = m["before"], m["after"]
    return (f"; minimised in {m['seconds']:.0f} s from {b['ops']} ops on {b['cpus']} CPUs to {a['ops']} ops "
            f"+ {a['setup']} setup on {a['cpus']} CPUs, {a['preemptions']} preemption(s)"
            + ("" if m.get("complete") else " (budget ran out)"))


def _sessions_section(sessions: list[dict[str, Any]]) -> list[str]:
    o = ["## Sessions", "", "| started | engine | jobs | iterations | programs | time | stopped by |",
         "|---|---|---:|---|---:|---:|---|"]
    for s in sessions:
        o.append(f"| {s.get('started', '?')} | {s.get('engine', '?')} | {s.get('jobs', '?')} | "
                 f"{s.get('first_iteration', '?')}..{s.get('next_iteration', '?')} | {s.get('programs', '?')} | "
                 f"{fmt_duration(s.get('seconds', 0))} | {s.get('stopped_by', '?')} |")
    o.append("")
    return o
