"""Work units: what a campaign is made of, as plain data, and how a worker
runs one.  ``fuzz/execution.py`` decides *where* units run (this process,
local worker processes, a Dask cluster); every command that runs programs in
bulk (``fuzz``, ``make fuzz``, ``matrix``, ``explore``, bench/detection.py)
cuts its work into these units.

A unit names everything its result depends on:

* ``version``: the shootdown code it needs (the package version and a digest
  of the sources of impls/, oracle/ and fuzz/; a worker running other code
  refuses the unit instead of computing something else);
* the plug-ins: built-in strategies and platforms by name, files by the
  SHA-256 of their content (a :class:`Bundle`: the file and the helper files
  it loads by path, e.g. tests/mutants/_rebind.py); the content travels as a
  *blob* next to the unit and is written once per worker under
  ``$TMPDIR/shootdown-plugins/<digest>/``;
* the environment, the engine(s), the program length, and a range of
  *positions*: which programs of the cell's sequence it runs
  (:func:`position`).

A unit's result is its statistics, behaviour counts and findings, each finding
with its position.  Merging is deterministic: for each signature the lowest
position wins (:func:`merge_findings`), so the findings of a campaign with
``--runs N`` do not depend on how the positions were cut into units, on how
many workers ran them, or in which order they finished.

Blobs are the layer's shared data: content-addressed values a unit needs
(plug-in bundles, explore's corpus hub).  A backend sends each blob to a
worker once; :func:`blob_key` names them.

The per-program watchdog (:class:`Watchdog`) lives here too: every run of a
program on a strategy (fuzz.run.run_program) is armed with a CPU-time limit,
and a hook that loops without yielding is stopped with :class:`HookTimeout`
and reported with the hook, the program's position and its seed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from impls import registry
from impls.machine.choices import Replay
from impls.machine.plugin import LOAD_RECORDERS, Ops, PluginError, PluginFailure
from impls.machine.program import Program

from .engine import (
    SEEDED_ENGINES,
    Finding,
    PausedGC,
    Stats,
    findings_of,
    fuzz_program,
    iteration_seed,
    pct_k_steps,
)
from .envs import Environment, environment
from .watchdog import WATCHDOG, WATCHDOG_SECONDS, HookTimeout, watchdog_report

ROOT = Path(__file__).resolve().parent.parent

# -- the code a unit needs ---------------------------------------------------------------------

_VERSION: str | None = None


def code_version() -> str:
    """``<package version>+<digest of the .py sources of impls/, oracle/, fuzz/>``."""
    global _VERSION
    if _VERSION is None:
        try:
            from importlib.metadata import version
            base = version("shootdown")
        except Exception:  # pragma: no cover  (not installed: run from a checkout)
            base = "0"
        h = hashlib.sha256()
        for pkg in ("impls", "oracle", "fuzz"):
            for p in sorted((ROOT / pkg).rglob("*.py")):
                h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
        _VERSION = f"{base}+{h.hexdigest()[:12]}"
    return _VERSION


class VersionMismatch(Exception):
    pass


# -- plug-ins by content -------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A plug-in file with the helper files it loads by path, as content:
    ``files`` are (path relative to the bundle's root, bytes); ``main`` is
    the plug-in file's relative path."""

    main: str
    files: tuple[tuple[str, bytes], ...]

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.main.encode() + b"\0")
        for rel, data in self.files:
            h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()


@dataclass(frozen=True)
class Plugin:
    """A strategy or platform as a unit names it: a built-in by name, or a
    file by the digest of its :class:`Bundle` (``name`` is then the file's
    name, for messages)."""

    kind: str                 # "strategy" | "platform"
    name: str
    digest: str = ""

    @property
    def is_file(self) -> bool:
        return bool(self.digest)

    @property
    def blob(self) -> str:
        return blob_key("plugin", self.digest)


def blob_key(kind: str, digest: str) -> str:
    return f"{kind}-{digest}"


def bundle_file(kind: str, path: str | Path) -> Bundle:
    """Load the plug-in file (so that it is checked) while recording the files
    it loads by path, and bundle their content."""
    rec: list[Path] = []
    LOAD_RECORDERS.append(rec)
    try:
        loader = registry.strategy if kind == "strategy" else registry.platform
        registry._cache.pop((kind, str(path)), None)  # load it afresh, so the helpers it loads are seen
        loader(str(path))
    finally:
        LOAD_RECORDERS.remove(rec)
    main = Path(path).resolve()
    files = [main] + [p for p in dict.fromkeys(rec) if p != main]
    root = Path(os.path.commonpath([str(p.parent) for p in files]))
    b = Bundle(main.relative_to(root).as_posix(),
               tuple((p.relative_to(root).as_posix(), p.read_bytes()) for p in files))
    _ORIGINS[b.digest[:32]] = root
    return b


#: digest prefix of each bundle made in this process -> the directory its files came from
_ORIGINS: dict[str, Path] = {}


def local_paths(text: str) -> str:
    """``text`` (a worker's message) with the paths of materialised plug-in
    copies (``$TMPDIR/shootdown-plugins-UID/DIGEST/...``) replaced by the
    files the user named, for the bundles made in this process."""
    for d, root in _ORIGINS.items():
        for base in {Path(tempfile.gettempdir()), Path(tempfile.gettempdir()).resolve()}:
            text = text.replace(f"{base / f'shootdown-plugins-{os.getuid()}' / d}{os.sep}", f"{root}{os.sep}")
    return text


def plugin_ref(kind: str, spec: str, blobs: dict[str, Any] | None = None) -> Plugin:
    """The :class:`Plugin` for a built-in name or a file path; a file's bundle
    is added to ``blobs``."""
    names = registry.STRATEGY_MODULES if kind == "strategy" else registry.PLATFORM_MODULES
    if spec in names:
        return Plugin(kind, spec)
    b = bundle_file(kind, spec)
    if blobs is not None:
        blobs[blob_key("plugin", b.digest)] = b
    return Plugin(kind, Path(spec).name, b.digest)


_MATERIALISED: dict[str, Path] = {}
_LOCK = threading.Lock()


def materialise(bundle: Bundle) -> Path:
    """Write ``bundle`` once under ``$TMPDIR/shootdown-plugins/<digest>/`` (atomically:
    a complete directory or none); the plug-in file's path."""
    digest = bundle.digest
    with _LOCK:
        if digest in _MATERIALISED:
            return _MATERIALISED[digest]
        base = Path(tempfile.gettempdir()) / f"shootdown-plugins-{os.getuid()}"
        d = base / digest[:32]
        if not (d / bundle.main).is_file():
            base.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=base, prefix=".tmp-"))
            for rel, data in bundle.files:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(data)
            try:
                os.rename(tmp, d)
            except OSError:  # another worker was first: same content
                shutil.rmtree(tmp, ignore_errors=True)
        _MATERIALISED[digest] = d / bundle.main
        return d / bundle.main


def resolve_plugin(p: Plugin, blobs: dict[str, Any]) -> Ops:
    loader = registry.strategy if p.kind == "strategy" else registry.platform
    if not p.is_file:
        return loader(p.name)
    bundle = blobs.get(p.blob)
    if bundle is None:
        raise PluginError(f"{p.name}: the content of this {p.kind} file did not reach the worker")
    return loader(str(materialise(bundle)))


# -- cells -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """Strategies in lockstep on a platform in an environment (fuzz.envs)."""

    strategies: tuple[Plugin, ...]
    platform: Plugin
    env: str

    def blobs(self) -> list[str]:
        return [p.blob for p in (*self.strategies, self.platform) if p.is_file]


def make_cell(strategies: Sequence[str], platform: str, env: str, blobs: dict[str, Any]) -> Cell:
    """A cell from names or file paths; the files' bundles go into ``blobs``."""
    return Cell(tuple(plugin_ref("strategy", s, blobs) for s in strategies), plugin_ref("platform", platform, blobs),
                env)


def resolve_cell(cell: Cell, blobs: dict[str, Any]) -> tuple[list[Ops], Ops, Environment]:
    strategies = [resolve_plugin(s, blobs) for s in cell.strategies]
    platform = resolve_plugin(cell.platform, blobs)
    env = environment(cell.env)
    if platform.name != env.platform:
        env = env.on_platform(platform.name)
    return strategies, platform, env


# -- results ------------------------------------------------------------------------------------------


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Result:
    """What every unit's result carries besides its own payload."""

    worker: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    #: the simulator (or a plug-in) raised: the traceback, with where
    crash: str | None = None
    #: the watchdog stopped a program (see :func:`watchdog_report`)
    watchdog: dict[str, Any] | None = None
    #: the unit could not run at all (wrong code version, a plug-in that does not load)
    error: str | None = None
    #: a strategy or platform file's code raised or called sys.exit() (PluginFailure):
    #: that file's error, one line with its file and line, never the simulator's crash
    plugin_failure: str | None = None


def run_unit(unit: Any, blobs: dict[str, Any], should_stop: Callable[[], bool] = lambda: False) -> Any:
    """The worker's entry point: run ``unit`` (any unit type: it has
    ``version`` and ``run(blobs, should_stop)``) and return its result.  Never
    raises for what a unit does: errors are in the result."""
    t0, c0 = time.monotonic(), time.process_time()
    if unit.version != code_version():
        res = unit.empty_result()
        res.error = (f"this worker runs shootdown {code_version()}, the campaign needs {unit.version}: "
                     "install the same version on every machine")
    else:
        try:
            res = unit.run(blobs, should_stop)
        except PluginFailure as e:
            res = unit.empty_result()
            res.plugin_failure = str(e)
        except PluginError as e:
            res = unit.empty_result()
            res.error = str(e)
    res.worker = worker_name()
    res.seconds = time.monotonic() - t0
    res.cpu_seconds = time.process_time() - c0
    return res


# -- fuzz units ------------------------------------------------------------------------------------


def position(pos: int, engines: Sequence[str], chunk: int, nseeds: int) -> tuple[str, int]:
    """Position ``pos`` of a cell's program sequence as (engine, iteration):
    first the ``nseeds`` corpus seeds (engine ``"seed"``, iteration = index),
    then the engines in turn, ``chunk`` iterations each (matrix: random
    0-15, pct 0-15, random 16-31, ...; fuzz: one engine, chunk 1)."""
    if pos < nseeds:
        return "seed", pos
    q = pos - nseeds
    per_round = chunk * len(engines)
    r, within = divmod(q, per_round)
    return engines[within // chunk], r * chunk + within % chunk


@dataclass
class FuzzResult(Result):
    stats: Stats = field(default_factory=Stats)
    #: (position, finding): the first of each signature in this unit
    findings: list[tuple[int, Finding]] = field(default_factory=list)
    #: positions run: [start, start + done)
    done: int = 0
    #: programs run per engine (the PCT guarantee counts the pct ones)
    per_engine: dict[str, int] = field(default_factory=dict)
    #: behaviour name -> programs that reached it
    behaviour_programs: dict[str, int] = field(default_factory=dict)
    #: signature -> programs this unit had run when it found it
    programs_at: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FuzzUnit:
    """Positions ``[start, stop)`` of a cell's program sequence (:func:`position`).

    Seeded engines (random, pct) and corpus seeds: position by position,
    exactly reproducible.  ``hypothesis``: positions are Hypothesis chunks
    (fuzz.drivers.hypothesis_driver), ``atheris``: one libFuzzer run in a
    child process (``max_programs`` inputs, ``seconds`` at most)."""

    cell: Cell
    seed: int
    length: int
    start: int
    stop: int
    engines: tuple[str, ...] = ("random",)
    chunk: int = 1
    #: corpus seeds replayed first: (name, program) for positions [seeds_at, seeds_at + len(seeds))
    seeds: tuple[tuple[str, Program], ...] = ()
    seeds_at: int = 0
    nseeds: int = 0
    #: stop at the first finding (matrix cells, detection searches)
    first_only: bool = False
    swarm: float = 0.0
    max_programs: int | None = None
    seconds: float | None = None
    options: tuple[tuple[str, Any], ...] = ()
    watchdog: float = WATCHDOG_SECONDS
    version: str = field(default_factory=code_version)

    def blobs(self) -> list[str]:
        return self.cell.blobs()

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)

    def empty_result(self) -> FuzzResult:
        return FuzzResult()

    def run(self, blobs: dict[str, Any], should_stop: Callable[[], bool]) -> FuzzResult:
        strategies, platform, env = resolve_cell(self.cell, blobs)
        out = FuzzResult()
        WATCHDOG.limit = self.watchdog
        engine = self.engines[0]
        where = [self.start]
        try:
            if engine in ("hypothesis", "atheris"):
                self._run_driver(engine, strategies, platform, env, out, should_stop)
            else:
                self._run_seeded(strategies, platform, env, out, should_stop, where)
        except HookTimeout as e:
            pos = where[0]
            eng, it = position(pos, self.engines, self.chunk, self.nseeds)
            out.watchdog = {**watchdog_report(e.__traceback__, strategies, platform), "position": pos,
                            "engine": eng, "iteration": it, "seed": self.seed,
                            "iteration_seed": iteration_seed(self.seed, it) if eng in SEEDED_ENGINES else None}
        except (KeyboardInterrupt, SystemExit, PluginFailure):
            raise                  # a plug-in's failure: run_unit reports it as such
        except Exception:
            eng, it = position(where[0], self.engines, self.chunk, self.nseeds)
            out.crash = f"{eng} seed {self.seed}, iteration {it}:\n{traceback.format_exc()}"
        return out

    def _run_seeded(self, strategies: list[Ops], platform: Ops, env: Environment, out: FuzzResult,
                    should_stop: Callable[[], bool], where: list[int]) -> None:
        cfg = env.gen_config(self.length, platform.name if platform.name != env.platform else None)
        k_steps = pct_k_steps(self.length)
        with PausedGC() as gcp:
            self._loop(strategies, platform, env, out, should_stop, where, cfg, k_steps, gcp)

    def _loop(self, strategies: list[Ops], platform: Ops, env: Environment, out: FuzzResult,
              should_stop: Callable[[], bool], where: list[int], cfg: Any, k_steps: int, gcp: PausedGC) -> None:
        stats = out.stats
        for pos in range(self.start, self.stop):
            gcp.tick()
            if should_stop():
                break
            where[0] = pos
            engine, it = position(pos, self.engines, self.chunk, self.nseeds)
            if engine == "seed":
                name, program = self.seeds[pos - self.seeds_at]
                from .run import run_lockstep
                res = run_lockstep(program, strategies, platform, lambda p=program: Replay(p.schedule))
                s, tag, it = 0, f"corpus {name}", -1
            else:
                program, res, s = fuzz_program(strategies, platform, env, engine, self.seed, it, cfg, k_steps,
                                               self.swarm)
                tag = engine
            stats.account(res)
            out.done += 1
            out.per_engine[engine] = out.per_engine.get(engine, 0) + 1
            names: set[str] = set()
            for r in res.runs:
                names.update(r.verdict.behaviours)
            for n in names:
                out.behaviour_programs[n] = out.behaviour_programs.get(n, 0) + 1
            new = findings_of(res, program, stats, s, env, it, tag)
            out.findings.extend((pos, f) for f in new)
            for f in new:
                out.programs_at[f.signature] = out.done
            if new and self.first_only:
                break

    def _run_driver(self, engine: str, strategies: list[Ops], platform: Ops, env: Environment, out: FuzzResult,
                    should_stop: Callable[[], bool]) -> None:
        stats = out.stats
        t0 = time.monotonic()

        def stop() -> bool:
            return (should_stop() or (self.max_programs is not None and stats.programs >= self.max_programs)
                    or (self.seconds is not None and time.monotonic() - t0 >= self.seconds))

        if engine == "hypothesis":
            from .drivers.hypothesis_driver import SHRINK_SECONDS, hypothesis_iter
            for f in hypothesis_iter(strategies, platform, env, self.seed, self.length, self.start, 1, stop, stats,
                                     feedback=self.option("feedback", True), end=self.stop,
                                     shrink_budget=self.option("shrink_budget", SHRINK_SECONDS)):
                out.findings.append((f.iteration, f))
                out.programs_at[f.signature] = stats.programs
                if self.first_only:
                    break
            out.done = self.stop - self.start
        else:
            from .drivers.atheris_driver import atheris_unit
            found, out.crash = atheris_unit(self, strategies, platform, env, stats, stop)
            out.findings.extend((self.start, f) for f in found)
            for f in found:
                out.programs_at[f.signature] = f.iteration
            out.done = 1
        out.per_engine[engine] = stats.programs


def merge_findings(found: Iterable[tuple[int, Finding]]) -> list[tuple[int, Finding]]:
    """The lowest position per signature, in position order (then signature)."""
    best: dict[str, tuple[int, Finding]] = {}
    for pos, f in found:
        cur = best.get(f.signature)
        if cur is None or pos < cur[0]:
            best[f.signature] = (pos, f)
    return sorted(best.values(), key=lambda x: (x[0], x[1].signature))


# -- minimisation units ----------------------------------------------------------------------------


@dataclass
class MinimizeResult(Result):
    program: Program | None = None
    violation: Any = None
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    runs: int = 0
    complete: bool = False
    #: the finding did not replay from its program and schedule alone
    unreplayable: str | None = None


@dataclass(frozen=True)
class MinimizeUnit:
    """Shrink ``program`` keeping ``signature`` on strategy ``target`` (an
    index into the cell's strategies), or, for a divergence, the lockstep's
    divergence; bounded by ``attempts`` runs, never by time, so a slow
    worker writes the same reproducer as a fast one."""

    cell: Cell
    target: int
    program: Program
    signature: str
    divergence: bool
    attempts: int
    watchdog: float = WATCHDOG_SECONDS
    version: str = field(default_factory=code_version)

    def blobs(self) -> list[str]:
        return self.cell.blobs()

    def empty_result(self) -> MinimizeResult:
        return MinimizeResult()

    def run(self, blobs: dict[str, Any], should_stop: Callable[[], bool]) -> MinimizeResult:
        from .minimize import minimize
        strategies, platform, env = resolve_cell(self.cell, blobs)
        WATCHDOG.limit = self.watchdog
        out = MinimizeResult()
        try:
            res = minimize(self.program, strategies[self.target], platform, self.signature, None, should_stop,
                           env.choice_biases(), lockstep=strategies if self.divergence else None,
                           attempts=self.attempts)
        except ValueError as e:
            out.unreplayable = str(e)
            return out
        except HookTimeout as e:
            out.watchdog = watchdog_report(e.__traceback__, strategies, platform)
            return out
        except (KeyboardInterrupt, SystemExit, PluginFailure):
            raise                  # a plug-in's failure: run_unit reports it as such
        except Exception:
            out.crash = f"minimising a finding:\n{traceback.format_exc()}"
            return out
        out.program, out.violation, out.before, out.after = res.program, res.violation, res.before, res.after
        out.runs, out.complete = res.runs, res.complete
        return out
