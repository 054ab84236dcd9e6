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
   (fuzz.engine), so a cell's result depends only on its seed and its
   program budget, never on ``--jobs``.

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

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from impls import registry
from impls.machine.choices import Replay
from impls.machine.plugin import Ops
from impls.machine.program import Program
from oracle.verdict import CHECKS

from . import corpus
from .engine import PCT_DEPTH, Finding, Stats, fuzz_iter, pct_guarantee, pct_k_steps
from .envs import ENVIRONMENTS, Environment
from .run import run_lockstep

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
    """What a worker needs to fuzz one cell (picklable: names and paths)."""

    strategy: str                 # a built-in name or a strategy file path
    env: str                      # an environment of fuzz.envs
    platform_file: str | None = None
    budget: float | None = None   # seconds
    runs: int | None = None       # programs
    seed: int = 0
    engines: tuple[str, ...] = ("random", "pct")
    corpus_seeds: bool = True
    out_dir: str | None = None    # where U reproducers go (None: not written)
    minimize: bool = True
    minimize_budget: float = 10.0  # seconds per reproducer


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

    @property
    def key(self) -> tuple[str, str]:
        return (self.strategy, self.env)

    def short(self) -> str:
        if self.verdict == "U":
            return "U " + ", ".join(self.checks)
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


def reproduce(finding: Finding, program: Program, strategy: Ops, platform: Ops, env: Environment,
              out_dir: Path, found_by: str, minimize_budget: float | None) -> tuple[Path | None, bool, int]:
    """Minimise the finding (fuzz.minimize) and write it (fuzz.findings: named
    after what races with what, deduplicated against the files already in
    ``out_dir``).  Returns the file (an earlier file of the same bug if it is
    a duplicate), whether it was minimised, and its number of operations."""
    from . import findings
    from .minimize import minimize

    violation = finding.violations[0]
    minimized = False
    note = ""
    if minimize_budget:
        try:
            res = minimize(program, strategy, platform, violation.signature(), minimize_budget,
                           biases=env.choice_biases())
        except ValueError:  # does not replay under its own schedule: keep it raw
            res = None
        if res is not None:
            before = res.before
            program, violation, minimized = res.program, res.violation, True
            note = (f"Minimised from {before['ops']} ops + {before['setup']} setup on {before['cpus']} CPUs "
                    f"({before['preemptions']} preemptions).")
    lit, stem = findings.build_litmus(program, strategy, [strategy], platform, violation, finding.signature,
                                      env.name, found_by, out_dir, note)
    w = findings.write(lit, stem, out_dir, findings.existing(out_dir))
    return (w.path or w.duplicate_of), minimized, len(program.ops)


def fuzz_cell(spec: CellSpec) -> Cell:
    """Fuzz one cell until a violation or the end of its budget."""
    t0 = time.monotonic()
    strategy = registry.strategy(spec.strategy)
    env, platform = environment_of(spec)
    stats = Stats()
    cell = Cell(strategy.name, spec.env, env.primer, "S", 0, 0.0)

    def out_of_budget(extra: int = 0) -> bool:
        if spec.runs is not None and stats.programs + extra >= spec.runs:
            return True
        return spec.budget is not None and time.monotonic() - t0 >= spec.budget

    finding: Finding | None = None
    if spec.corpus_seeds:
        for path, p in seed_programs(env):
            if out_of_budget():
                break
            res = run_lockstep(p, [strategy], platform, lambda p=p: Replay(p.schedule))
            stats.account(res)
            cell.seeds_replayed += 1
            r = res.runs[0]
            if r.verdict.violations:
                finding = Finding(r.verdict.strategy, p.with_schedule(r.history.meta["schedule"]),
                                  tuple(r.verdict.violations),
                                  f"{r.verdict.strategy}|{r.verdict.violations[0].signature()}",
                                  0, env.name, -1, f"corpus {path}")
                break
    pct_programs = 0
    chunk = 0
    while finding is None and not out_of_budget():
        for engine in spec.engines:
            before = stats.programs
            lo = chunk * CHUNK
            for f in fuzz_iter([strategy], platform, env, engine, seed=spec.seed, length=LENGTH, start=lo,
                               stop=lambda i, lo=lo: i >= lo + CHUNK or out_of_budget(),
                               stats=stats):
                finding = f
                break
            if engine == "pct":
                pct_programs += stats.programs - before
            if finding is not None or out_of_budget():
                break
        chunk += 1
    cell.programs = stats.programs
    cell.pct_programs = pct_programs
    cell.pct_guarantee = pct_guarantee(pct_programs, PCT_AGENTS, pct_k_steps(LENGTH), PCT_DEPTH) \
        if pct_programs else 0.0
    cell.behaviours = dict(sorted(stats.behaviours.items()))
    if finding is not None:
        cell.verdict = "U"
        cell.checks = list(finding.checks)
        cell.summary = finding.violations[0].summary
        cell.found_by = (finding.engine if finding.iteration < 0
                         else f"{finding.engine} seed {spec.seed} iteration {finding.iteration}")
        # the program names the platform the way a litmus file must: a name or a path
        program = replace(finding.program, platform=spec.platform_file or env.platform)
        cell.reproducer_ops = len(program.ops)
        if spec.out_dir is not None:
            how = (f"shootdown matrix --seed {spec.seed} (env {spec.env}, {finding.engine} engine, "
                   f"iteration {finding.iteration})" if finding.iteration >= 0
                   else f"shootdown matrix (env {spec.env}): replay of {finding.engine.removeprefix('corpus ')}")
            path, cell.minimized, cell.reproducer_ops = reproduce(
                finding, program, strategy, platform, env, Path(spec.out_dir), how,
                spec.minimize_budget if spec.minimize else None)
            cell.reproducer = str(path) if path else None
    cell.seconds = round(time.monotonic() - t0, 2)
    return cell


# -- the whole matrix -----------------------------------------------------------------

def run_matrix(specs: Sequence[CellSpec], jobs: int = 1,
               progress: Callable[[int, int, Cell], None] | None = None) -> list[Cell]:
    """Fuzz every cell, ``jobs`` at a time (worker processes); the result is
    in the order of ``specs``."""
    cells: dict[int, Cell] = {}
    if jobs <= 1:
        for i, s in enumerate(specs):
            cells[i] = fuzz_cell(s)
            if progress:
                progress(len(cells), len(specs), cells[i])
    else:
        with ProcessPoolExecutor(max_workers=jobs) as ex:
            futs = {ex.submit(fuzz_cell, s): i for i, s in enumerate(specs)}
            for fut in as_completed(futs):
                i = futs[fut]
                cells[i] = fut.result()
                if progress:
                    progress(len(cells), len(specs), cells[i])
    return [cells[i] for i in range(len(specs))]


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


def render_text(cells: list[Cell], mismatches: list[Mismatch] | None, header: str,
                expected: Expected | None = None) -> str:
    strategies, envs, by = _grid(cells)
    ew = max(len("environment"), *(len(e) for e in envs))
    cw = max(22, *(len(by[(s, e)].short()) + 2 for s in strategies for e in envs if (s, e) in by))
    out = [header, ""]
    out.append(f"{'environment':<{ew}}  {'':3}  " + "".join(f"{s:<{cw}}" for s in strategies).rstrip())
    for e in envs:
        row = f"{e:<{ew}}  {ENVIRONMENTS[e].primer:<3}  "
        for s in strategies:
            c = by.get((s, e))
            row += f"{(c.short() if c else '-'):<{cw}}"
        out.append(row.rstrip())
    us = [c for c in cells if c.verdict == "U"]
    if us:
        out += ["", "U cells (first violation, how it was found, reproducer):"]
        for c in us:
            out.append(f"  {c.strategy} @ {c.env}: {', '.join(c.checks)}  [{c.found_by}; "
                       f"{c.programs} programs, {c.seconds:.1f} s]")
            out.append(f"      {c.summary}")
            if c.reproducer:
                out.append(f"      reproducer: {c.reproducer} ({c.reproducer_ops} ops, "
                           f"{'minimised' if c.minimized else 'not minimised'})")
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
