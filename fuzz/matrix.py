"""The verdict matrix: every strategy fuzzed on every environment (the
columns of the primer's section 2, fuzz.envs), one cell at a time.

A cell is one strategy on one environment.  It is fuzzed until a violation
is found or its budget (seconds, programs, or both) runs out:

1. *corpus seeds*: every litmus file of corpus/ whose program belongs to the
   environment (same platform, same PT_RECLAIM mode, no secondary MMU or
   fault injection the environment lacks, only operations the environment
   generates, only nondeterministic choices it can make) is replayed exactly,
   with its recorded schedule;
2. then the seeded engines, alternating in chunks of :data:`CHUNK` programs:
   ``random`` and ``pct`` on the same programs, iteration ``i`` of seed ``s``
   (fuzz.engine).

The cells run as work units of the execution layer (fuzz.work,
fuzz.execution): positions of a cell's program sequence, several cells (and
several units of one cell) at once on local workers or a Dask cluster.  The
verdict is the finding at the *lowest* position, whichever unit reported
first, so with a program budget (``--runs``) a cell's result depends only on
its seed, never on ``--jobs`` or the cluster.  A time budget (``--budget``)
is in worker-seconds per cell.

**S**: no violation within the budget; the cell reports the programs run and
the PCT guarantee reached: the probability that the PCT runs hit any given
ordering bug of depth :data:`~fuzz.engine.PCT_DEPTH` at least once, with the
per-run bound of the largest programs generated (``n`` = 4 CPUs + the RCU
agent, ``k`` = :func:`~fuzz.engine.pct_k_steps`).  **U**: the checks that
fired and a reproducer (Program + recorded schedule) written as a litmus file,
minimised when fuzz.minimize is available.

An *expected* file (corpus/expected-matrix.yaml) gives a verdict per cell:
``S``, ``U`` (any check), or the list of checks one of which must fire.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from impls import registry
from impls.machine.plugin import Ops, PluginError
from impls.machine.program import Program
from oracle.verdict import CHECKS

from . import corpus, junit, triage
from .engine import PCT_DEPTH, Finding, Stats, finding_signature, pct_guarantee, pct_k_steps
from .envs import ENVIRONMENTS, Environment
from .execution import Executor, drive, executor
from .minimize import DEFAULT_ATTEMPTS
from .work import FuzzResult, FuzzUnit, MinimizeResult, MinimizeUnit, local_paths, make_cell, position

#: programs per engine before switching to the other one
CHUNK = 16
#: program length (operations) the generator is asked for
LENGTH = 32
#: the largest program the generator makes: 4 CPUs, plus the RCU agent
PCT_AGENTS = 5
ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = ROOT / "corpus"
EXPECTED_FORMAT = 1


class MatrixError(Exception):
    """A malformed expected-verdicts file (one line, ready to print)."""


# -- one cell ---------------------------------------------------------------------

@dataclass
class CellSpec:
    """What to fuzz in one cell (names and paths)."""

    strategy: str                 # a built-in name or a strategy file path
    env: str                      # an environment of fuzz.envs
    platform_file: str | None = None
    budget: float | None = None   # worker-seconds
    runs: int | None = None       # programs
    seed: int = 0
    engines: tuple[str, ...] = ("random", "pct")
    corpus_seeds: bool = True
    out_dir: str | None = None    # where U reproducers go (None: not written)
    minimize: bool = True
    minimize_attempts: int = DEFAULT_ATTEMPTS  # runs per reproducer
    #: exhaustive mode (fuzz.exhaustive): explore every execution of the
    #: cell's corpus programs and of ``ex_programs`` generated programs of
    #: ``ex_length`` operations on 2 CPUs, within ``ex_preemptions`` and
    #: ``ex_choices``, each for at most ``ex_budget`` CPU seconds
    exhaustive: bool = False
    ex_programs: int = 10
    ex_length: int = 3
    ex_preemptions: int = 2
    ex_choices: int = 1
    ex_budget: float = 10.0


@dataclass
class Cell:
    strategy: str
    env: str
    primer: str
    verdict: str                   # "S" or "U"
    programs: int
    seconds: float
    pct_programs: int = 0
    pct_guarantee: float = 0.0
    checks: list[str] = field(default_factory=list)
    summary: str = ""
    found_by: str = ""
    reproducer: str | None = None
    minimized: bool = False
    reproducer_ops: int = 0
    seeds_replayed: int = 0
    behaviours: dict[str, int] = field(default_factory=dict)
    #: exhaustive mode: "proven" (every program explored to the bound) or
    #: "sampled" (some exploration stopped at its budget); "" when fuzzed
    proof: str = ""
    proven_programs: int = 0
    executions: int = 0
    bound: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.strategy, self.env)

    def short(self) -> str:
        if self.verdict == "U":
            return "U " + ", ".join(self.checks)
        if self.proof == "proven":
            return f"S proven {self.programs}p"
        if self.proof == "sampled":
            return f"S sampled {self.proven_programs}/{self.programs}p"
        return f"S {self.programs}p PCT {self.pct_guarantee:.0%}"


def environment_of(spec: CellSpec) -> tuple[Environment, Ops]:
    env = ENVIRONMENTS[spec.env]
    if spec.platform_file:
        return env.on_platform(spec.platform_file), registry.platform(spec.platform_file)
    return env, registry.platform(env.platform)


def seed_programs(env: Environment, corpus_dir: Path = CORPUS_DIR) -> list[tuple[str, Program]]:
    """The corpus programs that belong to ``env`` (see the module docstring)."""
    if not corpus_dir.is_dir():
        return []
    weights = env.gen_config().weights
    biases = env.choice_biases()
    out = []
    for path in corpus.litmus_files(corpus_dir):
        try:
            lit = corpus.load(path)
        except corpus.CorpusError:
            continue
        p = lit.program
        e = p.env
        if p.platform != env.platform or e.pt_reclaim != env.pt_reclaim:
            continue
        if e.skip_mmu_notifiers or (e.kvm and not env.kvm) or (e.iommu and not env.iommu):
            continue
        if any(weights.get(op.kind, 0.0) <= 0 for op in p.ops + p.setup
               if op.kind not in ("populate", "access", "mmap", "munmap")):
            continue
        flips = p.schedule.flips if p.schedule is not None else ()
        if any(any(vals) and biases.get(label, 0.0) <= 0 for label, vals in flips):
            continue
        out.append((str(path.relative_to(corpus_dir.parent)), p))
    return out


def engine_count(n: int, spec: CellSpec, nseeds: int, engine: str) -> int:
    """How many of the cell's first ``n`` positions ran ``engine``."""
    return sum(1 for p in range(n) if position(p, spec.engines, CHUNK, nseeds)[0] == engine)


class _MCell:
    """One matrix cell while it runs: units of positions (corpus seeds, then the
    engines in chunks of CHUNK) until the first finding or the budget."""

    def __init__(self, index: int, spec: CellSpec) -> None:
        self.index = index
        self.spec = spec
        self.blobs: dict[str, Any] = {}
        self.strategy = registry.strategy(spec.strategy)
        self.env, self.platform = environment_of(spec)
        self.cell = make_cell([spec.strategy], spec.platform_file or self.env.platform, self.env.name, self.blobs)
        self.seeds = seed_programs(self.env) if spec.corpus_seeds else []
        #: exhaustive mode: the programs to explore, in order (corpus, then generated)
        self.programs: list[tuple[str, Program]] = exhaustive_programs(spec, self.env, self.platform, self.seeds) \
            if spec.exhaustive else []
        self.explored: dict[int, Any] = {}    # position -> ExhaustiveResult
        self.next_pos = 0
        self.used = 0.0               # worker-seconds of the units returned
        self.inflight = 0
        self.size = 8
        self.results: list[tuple[int, int, FuzzResult]] = []   # (start, stop, result)
        self.best: tuple[int, Finding] | None = None
        self.closed = False
        self.failure: str | None = None
        #: a strategy or platform file's code raised: the matrix stops with its error (exit 2)
        self.plugin_failure: str | None = None
        self.minimising = False
        self.minimised: MinimizeResult | None = None
        self.result: Cell | None = None

    def limit(self) -> int | None:
        return self.spec.runs

    def out_of_budget(self) -> bool:
        s = self.spec
        if s.exhaustive:
            return self.next_pos >= len(self.programs) or (self.best is not None and self.next_pos > self.best[0])
        if s.runs is not None and self.next_pos >= s.runs:
            return True
        if self.best is not None and self.next_pos > self.best[0]:
            return True
        return s.budget is not None and self.used >= s.budget

    def next_unit(self, cap: int) -> Any:
        if self.closed or self.inflight >= cap:
            return None
        if self.out_of_budget() or self.failure:
            self.closed = True
            return None
        if self.spec.exhaustive:
            from .exhaustive import ExhaustiveUnit
            s = self.spec
            allowed = tuple(sorted(label for label, p in self.env.choice_biases().items() if p > 0))
            unit = ExhaustiveUnit(self.cell, self.programs[self.next_pos][1], s.ex_preemptions, s.ex_choices,
                                  s.ex_budget, allowed)
            self.next_pos += 1
            self.inflight += 1
            return unit
        a = self.next_pos
        b = a + self.size
        if self.spec.runs is not None:
            b = min(b, self.spec.runs)
        if self.best is not None:
            b = min(b, self.best[0])
        if b <= a:
            self.closed = True
            return None
        self.next_pos = b
        self.inflight += 1
        n = len(self.seeds)
        seeds = tuple(self.seeds[a:min(b, n)]) if a < n else ()
        return FuzzUnit(self.cell, self.spec.seed, LENGTH, a, b, self.spec.engines, CHUNK, seeds=seeds, seeds_at=a,
                        nseeds=n, first_only=True)

    def absorb(self, unit: Any, res: Any) -> None:
        self.inflight -= 1
        self.used += res.seconds
        if res.plugin_failure:
            self.failure = self.plugin_failure = res.plugin_failure
            return
        if res.error or res.crash or res.watchdog:
            self.failure = res.error or res.crash or f"watchdog: {res.watchdog}"
            return
        if self.spec.exhaustive:
            pos = next(i for i, (_, p) in enumerate(self.programs) if p is unit.program)
            self.explored[pos] = res
            if res.violations and (self.best is None or pos < self.best[0]):
                v = res.violations[0]
                how, _ = self.programs[pos]
                self.best = (pos, Finding(self.strategy.name, res.program, res.violations,
                                          finding_signature(self.strategy.name, v), self.spec.seed, self.env.name,
                                          -1, f"exhaustive ({how}; {res.preemptions} preemption(s), "
                                              f"{res.choices} choice(s))"))
            return
        self.results.append((unit.start, unit.start + res.done, res))
        if res.done and res.seconds > 0:
            self.size = max(1, min(1024, int(res.done / res.seconds)))
        for pos, f in res.findings:
            if self.best is None or pos < self.best[0]:
                self.best = (pos, f)

    def covered(self) -> int:
        """Every position below this one has run (or the finding's, if any)."""
        end = 0
        for a, b, _ in sorted(self.results, key=lambda x: x[0]):
            if a > end:
                break
            end = max(end, b)
        return end

    def settled(self) -> bool:
        """Its verdict is known: nothing left that could come before it."""
        return self.closed and self.inflight == 0

    def summarise(self) -> Cell:
        spec, env = self.spec, self.env
        cell = Cell(self.strategy.name, spec.env, env.primer, "S", 0, round(self.used, 2))
        if spec.exhaustive:
            return self._summarise_exhaustive(cell)
        n = len(self.seeds)
        end = self.best[0] + 1 if self.best is not None else self.covered()
        stats = Stats()
        for a, _, r in sorted(self.results, key=lambda x: x[0]):
            if a < end:
                stats.merge(r.stats)
        cell.programs = end
        cell.seeds_replayed = min(end, n)
        cell.pct_programs = engine_count(end, spec, n, "pct")
        cell.pct_guarantee = pct_guarantee(cell.pct_programs, PCT_AGENTS, pct_k_steps(LENGTH), PCT_DEPTH) \
            if cell.pct_programs else 0.0
        cell.behaviours = dict(sorted(stats.behaviours.items()))
        if self.best is not None:
            finding = self.best[1]
            cell.verdict = "U"
            cell.checks = list(finding.checks)
            cell.summary = finding.violations[0].summary
            cell.found_by = (finding.engine if finding.iteration < 0
                             else f"{finding.engine} seed {spec.seed} iteration {finding.iteration}")
            cell.reproducer_ops = len(finding.program.ops)
        return cell

    def _summarise_exhaustive(self, cell: Cell) -> Cell:
        spec = self.spec
        end = self.best[0] + 1 if self.best is not None else len(self.programs)
        done = [self.explored[i] for i in range(end) if i in self.explored]
        cell.programs = len(done)
        cell.seeds_replayed = min(end, len(self.seeds))
        cell.executions = sum(r.executions for r in done)
        cell.proven_programs = sum(1 for r in done if r.proven)
        cell.bound = (f"{spec.ex_preemptions} preemption(s), {spec.ex_choices} choice(s); corpus programs of "
                      f"the environment and {spec.ex_programs} generated programs of {spec.ex_length} ops "
                      "on 2 CPUs")
        if self.best is not None:
            finding = self.best[1]
            cell.verdict = "U"
            cell.checks = list(finding.checks)
            cell.summary = finding.violations[0].summary
            cell.found_by = finding.engine
            cell.reproducer_ops = len(finding.program.ops)
        else:
            cell.proof = "proven" if cell.proven_programs == len(self.programs) else "sampled"
        return cell

    def program(self) -> Program:
        # the program names the platform the way a litmus file must: a name or a path
        assert self.best is not None
        return replace(self.best[1].program, platform=self.spec.platform_file or self.env.platform)


def write_reproducer(m: _MCell, cell: Cell) -> None:
    """Write the cell's (minimised) finding (fuzz.findings: named after what
    races with what, deduplicated against the files already in the output
    directory)."""
    from . import findings

    assert m.best is not None and m.spec.out_dir is not None
    finding = m.best[1]
    spec = m.spec
    out_dir = Path(spec.out_dir)
    program, violation, note = m.program(), finding.violations[0], ""
    res = m.minimised
    if res is not None and res.program is not None:
        before = res.before
        program, violation, cell.minimized = res.program, res.violation, True
        note = (f"Minimised from {before['ops']} ops + {before['setup']} setup on {before['cpus']} CPUs "
                f"({before['preemptions']} preemptions).")
    how = (f"shootdown matrix --seed {spec.seed} (env {spec.env}, {finding.engine} engine, "
           f"iteration {finding.iteration})" if finding.iteration >= 0
           else f"shootdown matrix --exhaustive (env {spec.env}): {finding.engine}" if spec.exhaustive
           else f"shootdown matrix (env {spec.env}): replay of {finding.engine.removeprefix('corpus ')}")
    lit, stem = findings.build_litmus(program, m.strategy, [m.strategy], m.platform, violation, finding.signature,
                                      m.env.name, how, out_dir, note)
    w = findings.write(lit, stem, out_dir, findings.existing(out_dir))
    path = w.path or w.duplicate_of
    cell.reproducer = str(path) if path else None
    cell.reproducer_ops = len(program.ops)


def exhaustive_programs(spec: CellSpec, env: Environment, platform: Ops,
                        seeds: list[tuple[str, Program]]) -> list[tuple[str, Program]]:
    """The programs ``matrix --exhaustive`` explores in a cell: its corpus
    programs (without their schedules), then ``spec.ex_programs`` generated
    programs of ``spec.ex_length`` operations on 2 CPUs and one mm, from the
    iteration seeds of ``spec.seed``."""
    from .engine import iteration_seed
    from .generate import RandomDraw, generate

    out = [(f"corpus {path}", replace(p, schedule=None)) for path, p in seeds]
    cfg = replace(env.gen_config(spec.ex_length, platform.name if platform.name != env.platform else None),
                  cpus=(2, 2), mms=(1, 1))
    for i in range(spec.ex_programs):
        out.append((f"generated seed {spec.seed} iteration {i}",
                    generate(RandomDraw(iteration_seed(spec.seed, i)), cfg)))
    return out


class _Matrix:
    """The matrix as a source of work units (fuzz.execution.drive)."""

    def __init__(self, specs: Sequence[CellSpec], progress: Callable[[int, int, Cell], None] | None) -> None:
        self.cells = [_MCell(i, s) for i, s in enumerate(specs)]
        self.progress = progress
        self.capacity = 1
        self.reported = 0
        self.write_cursor = 0

    def next_unit(self) -> tuple[Any, dict[str, Any], Any] | None:
        for m in self.cells:
            if m.settled() and m.best is not None and m.spec.out_dir is not None and m.spec.minimize \
                    and not m.minimising and m.minimised is None and m.failure is None:
                m.minimising = True
                f = m.best[1]
                unit = MinimizeUnit(m.cell, 0, m.program(), f.violations[0].signature(), False,
                                    m.spec.minimize_attempts)
                return unit, {k: m.blobs[k] for k in unit.blobs()}, ("min", m)
        open_cells = [m for m in self.cells if not m.closed]
        cap = max(1, -(-self.capacity // max(1, len(open_cells))))
        for m in open_cells:
            unit = m.next_unit(cap)
            if unit is not None:
                return unit, {k: m.blobs[k] for k in unit.blobs()}, ("fuzz", m, unit)
        return None

    def absorb(self, tag: Any, result: Any) -> None:
        if tag[0] == "min":
            m = tag[1]
            m.minimising = False
            m.minimised = result
            if result.plugin_failure:
                m.failure = m.plugin_failure = result.plugin_failure
        else:
            tag[1].absorb(tag[2], result)
        self._settle()

    def failed(self, tag: Any, error: str) -> None:
        m = tag[1]
        if tag[0] == "min":
            m.minimising = False
            m.minimised = MinimizeResult(crash=error)
        else:
            m.inflight -= 1
            m.failure = error
        self._settle()

    def _ready(self, m: _MCell) -> bool:
        if not m.settled():
            return False
        if m.failure is not None:
            return True
        needs_min = m.best is not None and m.spec.out_dir is not None and m.spec.minimize
        return not needs_min or m.minimised is not None

    def _settle(self) -> None:
        """Summarise (and write) settled cells in the order of the specs."""
        while self.write_cursor < len(self.cells) and self._ready(self.cells[self.write_cursor]):
            m = self.cells[self.write_cursor]
            self.write_cursor += 1
            if m.plugin_failure is not None:
                raise PluginError(local_paths(m.plugin_failure))
            if m.failure is not None:
                raise MatrixError(f"{m.spec.strategy} @ {m.spec.env}: {m.failure.strip().splitlines()[-1]}")
            cell = m.summarise()
            if m.best is not None and m.spec.out_dir is not None:
                write_reproducer(m, cell)
            m.result = cell
            self.reported += 1
            if self.progress:
                self.progress(self.reported, len(self.cells), cell)

    def status(self) -> str:
        """One line for a log: cells done, and the ones being worked on."""
        busy = [f"{m.spec.strategy} @ {m.spec.env}" for m in self.cells
                if m.result is None and (m.inflight or m.minimising)]
        more = f" (+{len(busy) - 4} more)" if len(busy) > 4 else ""
        return (f"{self.reported}/{len(self.cells)} cells done"
                + (f"; working on {', '.join(busy[:4])}{more}" if busy else ""))

    def finished(self) -> bool:
        for m in self.cells:  # a cell with nothing left to issue and nothing in flight is closed
            if not m.closed and m.inflight == 0 and (m.out_of_budget() or m.failure):
                m.closed = True
        self._settle()
        return self.write_cursor >= len(self.cells)


def fuzz_cell(spec: CellSpec) -> Cell:
    """Fuzz one cell, in this process, until a violation or the end of its budget."""
    return run_matrix([spec], jobs=1)[0]


def run_matrix(specs: Sequence[CellSpec], jobs: int = 1,
               progress: Callable[[int, int, Cell], None] | None = None, cluster: str | None = None,
               ex: Executor | None = None, heartbeat: Callable[[str], None] | None = None) -> list[Cell]:
    """Fuzz every cell through the execution layer (``jobs`` local workers, or
    a Dask cluster); the result is in the order of ``specs`` and, with a
    program budget (``runs``), the same for every ``jobs`` and cluster.
    ``heartbeat`` is given the matrix's status line as the work goes on
    (fuzz.report.PeriodicProgress prints one every 30 s)."""
    m = _Matrix(specs, progress)
    own = ex is None
    ex = ex if ex is not None else executor(jobs, cluster)
    m.capacity = ex.capacity()
    try:
        drive(ex, m, tick=(lambda: heartbeat(m.status())) if heartbeat is not None else None)
    finally:
        if own:
            ex.close()
    return [c.result for c in m.cells if c.result is not None]


# -- expected verdicts ------------------------------------------------------------------

@dataclass
class Expected:
    """strategy -> environment -> "S" | "U" | [checks]."""

    cells: dict[str, dict[str, Any]]
    notes: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def get(self, strategy: str, env: str) -> Any:
        return self.cells.get(strategy, {}).get(env)


def load_expected(path: str | Path) -> Expected:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise MatrixError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise MatrixError(f"{path}:{mark.line + 1 if mark else 1}: not valid YAML") from None
    if not isinstance(data, dict) or data.get("shootdown-matrix") != EXPECTED_FORMAT:
        raise MatrixError(f"{path}: not an expected-matrix file (want 'shootdown-matrix: {EXPECTED_FORMAT}')")
    raw = data.get("expected")
    if not isinstance(raw, dict):
        raise MatrixError(f"{path}: 'expected' must map strategy -> environment -> verdict")
    cells: dict[str, dict[str, Any]] = {}
    for strat, row in raw.items():
        if not isinstance(row, dict):
            raise MatrixError(f"{path}: expected.{strat}: must map environment -> verdict")
        cells[str(strat)] = {}
        for env, v in row.items():
            if env not in ENVIRONMENTS:
                raise MatrixError(f"{path}: expected.{strat}.{env}: unknown environment "
                                  f"(known: {', '.join(ENVIRONMENTS)})")
            if v in ("S", "U"):
                cells[str(strat)][env] = v
            elif isinstance(v, list) and v and all(c in CHECKS for c in v):
                cells[str(strat)][env] = sorted(v)
            else:
                raise MatrixError(f"{path}: expected.{strat}.{env}: want S, U or a list of checks "
                                  f"(known: {', '.join(CHECKS)}), got {v!r}")
    notes = {k: v for k, v in data.items() if k not in ("expected", "shootdown-matrix")}
    return Expected(cells, notes, str(p))


@dataclass
class Mismatch:
    strategy: str
    env: str
    expected: Any
    got: str
    why: str


def compare(cells: Iterable[Cell], expected: Expected) -> tuple[list[Mismatch], list[Cell]]:
    """Cells whose verdict disagrees with the expectation, and cells that
    have none."""
    bad: list[Mismatch] = []
    unknown: list[Cell] = []
    for c in cells:
        e = expected.get(c.strategy, c.env)
        if e is None:
            unknown.append(c)
            continue
        if e == "S" and c.verdict == "U":
            bad.append(Mismatch(c.strategy, c.env, e, c.short(),
                                f"expected S, found {', '.join(c.checks)}"))
        elif e != "S" and c.verdict == "S":
            bad.append(Mismatch(c.strategy, c.env, e, c.short(),
                                f"expected U{'' if e == 'U' else ' (' + ', '.join(e) + ')'}, "
                                f"nothing found in {c.programs} programs"))
        elif isinstance(e, list) and not set(e) & set(c.checks):
            bad.append(Mismatch(c.strategy, c.env, e, c.short(),
                                f"expected one of {', '.join(e)}, found {', '.join(c.checks)}"))
    return bad, unknown


def ordered_for_packing(specs: list[CellSpec], expected: Expected | None,
                        name_of: Callable[[CellSpec], str]) -> list[int]:
    """Cells expected to stay S use their whole budget: start them first so
    that the quick U cells fill the gaps at the end."""
    def key(i: int) -> int:
        e = expected.get(name_of(specs[i]), specs[i].env) if expected else None
        return 0 if e == "S" else 1
    return sorted(range(len(specs)), key=key)


# -- rendering -------------------------------------------------------------------------

def _grid(cells: list[Cell]) -> tuple[list[str], list[str], dict[tuple[str, str], Cell]]:
    strategies: list[str] = []
    envs: list[str] = []
    by: dict[tuple[str, str], Cell] = {}
    for c in cells:
        if c.strategy not in strategies:
            strategies.append(c.strategy)
        if c.env not in envs:
            envs.append(c.env)
        by[c.key] = c
    return strategies, envs, by


def versus_baseline(cells: list[Cell], baseline: str) -> list[dict[str, Any]]:
    """Base vs patch: for every other strategy and environment, the
    fuzz.triage.compare_cells status against ``baseline`` (a strategy name)."""
    by = {c.key: c for c in cells}
    out = []
    for c in cells:
        if c.strategy == baseline:
            continue
        b = by.get((baseline, c.env))
        status = triage.compare_cells({c.env: c.verdict}, {c.env: b.verdict if b else "S"})[c.env]
        out.append({"strategy": c.strategy, "env": c.env, "status": status, "checks": c.checks,
                    "baseline_checks": b.checks if b else [], "reproducer": c.reproducer})
    return out


def _versus_text(versus: list[dict[str, Any]], baseline: str) -> list[str]:
    out = ["", f"Against the baseline {baseline} (the exit status follows regressions only):"]
    for status, what in (("regression", f"REGRESSION: U here, {baseline} S"),
                         ("inherited", f"inherited: {baseline} is U here too"),
                         ("fixed", f"fixed: S here, {baseline} U")):
        rows = [v for v in versus if v["status"] == status]
        for v in rows:
            line = f"  {what}: {v['strategy']} @ {v['env']}"
            if v["checks"]:
                line += f" ({', '.join(v['checks'])})"
            if status == "inherited" and v["baseline_checks"]:
                line += f"; {baseline}: {', '.join(v['baseline_checks'])}"
            if status == "regression" and v["reproducer"]:
                line += f"; reproducer {v['reproducer']}"
            out.append(line)
    n = sum(1 for v in versus if v["status"] == "regression")
    out.append(f"  {n} regression{'s' if n != 1 else ''}, "
               f"{sum(1 for v in versus if v['status'] == 'inherited')} inherited, "
               f"{sum(1 for v in versus if v['status'] == 'fixed')} fixed, "
               f"{sum(1 for v in versus if v['status'] == 'clean')} clean")
    return out


def to_junit(cells: list[Cell], labels: dict[tuple[str, str], Any], mismatches: list[Mismatch] | None,
             versus: list[dict[str, Any]] | None, baseline: str | None) -> list[junit.Suite]:
    """One test case per cell.  It fails on a regression (with a baseline),
    else on a mismatch (with an expected file), else on a new U; a known U
    passes with a remark."""
    suite = junit.Suite("shootdown matrix")
    bad = {(m.strategy, m.env): m for m in mismatches or []}
    vs = {(v["strategy"], v["env"]): v for v in versus or []}
    for c in cells:
        case = junit.Case(f"shootdown.matrix.{c.strategy}", c.env, c.seconds)
        text = junit.finding_text(c.reproducer, ", ".join(c.checks), c.summary, "",
                                  f"{c.strategy} on {c.env}; found by {c.found_by}; {c.programs} programs")
        if c.reproducer and c.verdict == "U":
            try:
                text = junit.finding_text(c.reproducer, ", ".join(c.checks), c.summary,
                                          _diagram(c.reproducer, c.strategy),
                                          f"{c.strategy} on {c.env}; found by {c.found_by}; {c.programs} programs")
            except Exception as e:  # noqa: BLE001  (a report must not fail on one drawing)
                text += f"\n(cannot draw: {type(e).__name__}: {e})\n"
        lab = labels.get(c.key)
        if baseline:
            v = vs.get(c.key)
            if v is not None and v["status"] == "regression":
                case.failures.append(junit.Problem(f"regression: U ({', '.join(c.checks)}), {baseline} S",
                                                   ", ".join(c.checks), text))
            elif c.verdict == "U":
                case.out = (f"the baseline {baseline}'s own cell" if c.strategy == baseline
                            else f"inherited: {baseline} is U here too") + "\n" + text
        elif mismatches is not None and c.key in bad:
            case.failures.append(junit.Problem(f"mismatch: {bad[c.key].why}", ", ".join(c.checks) or "S", text))
        elif c.verdict == "U" and (lab is None or not lab.known) and mismatches is None:
            case.failures.append(junit.Problem(f"new: {', '.join(c.checks)}", ", ".join(c.checks), text))
        elif c.verdict == "U":
            case.out = f"known: {lab.why if lab is not None else 'as expected'}\n{text}"
        else:
            case.out = f"S: {c.short()}"
        suite.cases.append(case)
    return [suite]


def _diagram(path: str, strategy_name: str) -> str:
    from .render import Story, text_diagram
    from .run import run_program

    lit = corpus.load(path)
    strategy = next((registry.strategy(k) for k in lit.strategy_files()
                     if registry.strategy(k).name == strategy_name), None) or registry.strategy(strategy_name)
    run = run_program(lit.program, strategy, registry.platform(lit.program.platform))
    return text_diagram(Story(lit.program, run, title=lit.title, path=path))


def render_text(cells: list[Cell], mismatches: list[Mismatch] | None, header: str,
                expected: Expected | None = None, labels: dict[tuple[str, str], Any] | None = None,
                versus: list[dict[str, Any]] | None = None, baseline: str | None = None) -> str:
    strategies, envs, by = _grid(cells)
    ew = max(len("environment"), *(len(e) for e in envs))
    cw = max(22, *(len(s) + 2 for s in strategies),
             *(len(by[(s, e)].short()) + 2 for s in strategies for e in envs if (s, e) in by))
    out = [header, ""]
    out.append(f"{'environment':<{ew}}  {'':3}  " + "".join(f"{s:<{cw}}" for s in strategies).rstrip())
    for e in envs:
        row = f"{e:<{ew}}  {ENVIRONMENTS[e].primer:<3}  "
        for s in strategies:
            c = by.get((s, e))
            row += f"{(c.short() if c else '-'):<{cw}}"
        out.append(row.rstrip())
    labels = labels or {}
    us = [c for c in cells if c.verdict == "U"]
    new = [c for c in us if c.key not in labels or not labels[c.key].known]
    known = [c for c in us if c.key in labels and labels[c.key].known]
    if new:
        out += ["", "U cells (first violation, how it was found, reproducer):" if not labels else
                "New U cells (first violation, how it was found, reproducer):"]
        for c in new:
            out.append(f"  {c.strategy} @ {c.env}: {', '.join(c.checks)}  [{c.found_by}; "
                       f"{c.programs} programs, {c.seconds:.1f} s]")
            out.append(f"      {c.summary}")
            if c.reproducer:
                out.append(f"      reproducer: {c.reproducer} ({c.reproducer_ops} ops, "
                           f"{'minimised' if c.minimized else 'not minimised'})")
    if known:
        out += ["", f"Known U cells ({len(known)}: outside the strategy's SAFE_ON, or U in the expected matrix):"]
        by_strategy: dict[str, list[Cell]] = {}
        for c in known:
            by_strategy.setdefault(c.strategy, []).append(c)
        for s, cs in by_strategy.items():
            out.append(f"  {s}: " + ", ".join(f"{c.env} ({', '.join(c.checks)}"
                                             + (f"; {c.reproducer}" if c.reproducer else "") + ")" for c in cs))
    if versus is not None and baseline:
        out += _versus_text(versus, baseline)
    if expected is not None:
        out.append("")
        if mismatches:
            out.append(f"{len(mismatches)} cell(s) disagree with {expected.path}:")
            for m in mismatches:
                out.append(f"  MISMATCH {m.strategy} @ {m.env}: {m.why}")
        else:
            out.append(f"every cell with an expectation matches {expected.path}")
    return "\n".join(out)


def render_markdown(cells: list[Cell], mismatches: list[Mismatch] | None, header: str,
                    expected: Expected | None = None) -> str:
    strategies, envs, by = _grid(cells)
    out = [f"**{header}**", "", "| environment | primer | " + " | ".join(f"`{s}`" for s in strategies) + " |",
           "|---|---|" + "---|" * len(strategies)]
    for e in envs:
        row = []
        for s in strategies:
            c = by.get((s, e))
            if c is None:
                row.append("-")
            elif c.verdict == "U":
                row.append(f"**U** {', '.join(c.checks)}")
            elif c.proof == "proven":
                row.append(f"S proven ({c.programs} programs, {c.executions} executions)")
            elif c.proof == "sampled":
                row.append(f"S sampled ({c.proven_programs} of {c.programs} programs proven)")
            else:
                row.append(f"S ({c.programs} programs, PCT {c.pct_guarantee:.0%})")
        out.append(f"| `{e}` | {ENVIRONMENTS[e].primer} | " + " | ".join(row) + " |")
    us = [c for c in cells if c.verdict == "U"]
    if us:
        out += ["", "| cell | checks | found by | reproducer |", "|---|---|---|---|"]
        for c in us:
            out.append(f"| `{c.strategy}` @ `{c.env}` | {', '.join(c.checks)} | {c.found_by} | "
                       f"{'`' + c.reproducer + '`' if c.reproducer else '-'} |")
    if expected is not None:
        out.append("")
        if mismatches:
            out.append(f"{len(mismatches)} mismatch(es) with `{expected.path}`:")
            out += [f"- `{m.strategy}` @ `{m.env}`: {m.why}" for m in mismatches]
        else:
            out.append(f"No mismatch with `{expected.path}`.")
    return "\n".join(out)


def to_json(cells: list[Cell], mismatches: list[Mismatch] | None, meta: dict[str, Any],
            unknown: list[Cell] | None = None) -> dict[str, Any]:
    return {
        **meta,
        "cells": [asdict(c) for c in cells],
        "mismatches": None if mismatches is None else [asdict(m) for m in mismatches],
        "no_expectation": None if unknown is None else [list(c.key) for c in unknown],
        "ok": not mismatches if mismatches is not None else all(c.verdict == "S" for c in cells),
    }
