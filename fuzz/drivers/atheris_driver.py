"""The atheris engine: libFuzzer mutating bytes, coverage-guided.

Input decoding (``--atheris-input``):

* ``bytes`` (default, the faster: see bench/engines.py): :func:`decode`, the
  shared generator over :class:`~fuzz.generate.BytesDraw` (one byte per
  decision, zeros once exhausted, so every byte string is a valid program),
  then the rest of the input as the decision tape of every run of the
  lockstep (:class:`~fuzz.drivers.tape.TapeChoices`); a short input is first
  :func:`pad`-ded with bytes from a PRNG seeded by the input;
* ``hypothesis``: the Hypothesis test of fuzz.drivers.hypothesis_driver
  through ``fuzz_one_input`` (Hypothesis decodes the bytes into its choice
  sequence).

Coverage (``--atheris-coverage``): libFuzzer keeps an input when it reaches a
new feature.  ``lines`` instruments the Python bytecode of impls/ and oracle/
(and of plug-in files) as atheris does; ``behaviour`` adds one synthetic
counter per feedback key (fuzz.feedback: behaviour x count bucket, behaviour
pairs, checks, outcomes), reserved from atheris' own counter space
(``atheris._reserve_counter()``, the call its bytecode instrumentation makes)
and hit with ``atheris._trace_branch()``; libFuzzer sees them as edges.  The
default, ``behaviour``, is what the benchmark found best: line coverage slows
every program down several times and says little about interleavings.

:class:`Harness` is the fuzz target with no atheris in it (so tests can feed
it arbitrary bytes); :func:`atheris_loop` runs libFuzzer in a worker process.
The simulator's exceptions are never swallowed: the worker reports them as a
crash with the input that caused it.
"""

from __future__ import annotations

import gc
import os
import random
import shutil
import tempfile
import time
import types
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from impls.machine.plugin import Ops
from impls.machine.program import Program

from ..engine import Stats, findings_of
from ..envs import Environment
from ..feedback import all_keys, keys_of
from ..generate import BytesDraw, generate
from ..run import Lockstep, run_lockstep
from .tape import Tape, TapeChoices

INPUT_MODES = ("bytes", "hypothesis")
COVERAGE_MODES = ("behaviour", "lines", "both")
#: synthetic counters for keys outside fuzz.feedback.all_keys() (hashed)
SPARE_COUNTERS = 256
#: libFuzzer's -timeout, in seconds: above anything fuzz.watchdog lets a program
#: run (it stops and reports a hook that loops), so that the watchdog is what
#: judges a slow input.  Not 0: atheris reads ``-timeout=0`` as "0 seconds", and
#: its SIGALRM check then ends the process ("=== Timeout: 1s elapsed, timeout=0s
#: ===", libFuzzer: "fuzz target exited", exit code 77) at the first input that
#: runs longer than a second, as 128-operation THP programs do on a loaded machine.
LIBFUZZER_TIMEOUT = 24 * 3600
#: random inputs libFuzzer starts from
SEED_INPUTS = 32


def max_len(length: int) -> int:
    """Bytes an input needs: the program (~5 per operation) and a tape
    (a few hundred decisions for 128 operations)."""
    return 256 + 12 * length


def pad(data: bytes, n: int) -> bytes:
    """``data`` extended to ``n`` bytes with bytes drawn from a PRNG seeded by
    ``data`` itself.  libFuzzer likes short inputs (they often reach a "new"
    feature: the degenerate program all-zero bytes decode to), and BytesDraw
    reads zeros past the end; padding makes every short input a full-size
    random program instead, and a mutation of it another one."""
    if len(data) >= n:
        return data
    rng = random.Random(zlib.crc32(data) ^ (len(data) << 32))
    return data + rng.randbytes(n - len(data))


def decode(data: bytes, env: Environment, length: int, platform: str | None = None) -> tuple[Program, bytes]:
    """Bytes -> (program, the rest of the bytes: the decision tape).  Total:
    every byte string decodes (BytesDraw reads zeros past the end)."""
    draw = BytesDraw(data)
    program = generate(draw, env.gen_config(length, platform))
    return program, data[draw.i:]


class Harness:
    """One input -> one lockstep run, judged; stats and findings recorded."""

    def __init__(self, strategies: list[Ops], platform: Ops, env: Environment, length: int,
                 mode: str = "bytes", stats: Stats | None = None, seed: int = 0) -> None:
        if mode not in INPUT_MODES:
            raise ValueError(f"unknown atheris input mode {mode!r} (known: {', '.join(INPUT_MODES)})")
        self.strategies = strategies
        self.platform = platform
        self.env = env
        self.length = length
        self.mode = mode
        self.stats = stats if stats is not None else Stats()
        self.seed = seed
        self.biases = env.choice_biases()
        self.inputs = 0
        self.last: Lockstep | None = None
        self.findings: list = []
        self._plat = platform.name if platform.name != env.platform else None
        self._max_len = max_len(length)
        if mode == "hypothesis":
            from .hypothesis_driver import Recorder, make_test, run_settings
            self._rec = Recorder(self.stats, env, raise_findings=False, feedback=False)
            self._rec.on_run = self._on_hypothesis_run  # type: ignore[method-assign]
            test = make_test(strategies, platform, env, length, self._rec)
            self._test = run_settings(1)(test)

    def _on_hypothesis_run(self, program: Program, res: Lockstep) -> None:
        self._record(program, res)

    def _record(self, program: Program, res: Lockstep) -> None:
        self.last = res
        self.stats.account(res)
        self.findings += findings_of(res, program, self.stats, self.seed, self.env, self.inputs, "atheris")

    def one_input(self, data: bytes) -> Lockstep | None:
        """Run one input.  Returns the lockstep run (None if Hypothesis
        rejected the input)."""
        self.inputs += 1
        self.last = None
        if self.mode == "hypothesis":
            self._test.hypothesis.fuzz_one_input(data)
            return self.last
        program, rest = decode(pad(data, self._max_len), self.env, self.length, self._plat)
        tape = Tape.of(rest)
        res = run_lockstep(program, self.strategies, self.platform, lambda: TapeChoices(tape, self.biases))
        self._record(program, res)
        return res

    def take_findings(self) -> list:
        out, self.findings = self.findings, []
        return out


class Counters:
    """Feedback keys -> synthetic atheris coverage counters."""

    def __init__(self, n_strategies: int, reserve: Callable[[], int], trace: Callable[[int], None]) -> None:
        self._trace = trace
        self.index = {k: reserve() for k in all_keys(n_strategies)}
        self.spare = [reserve() for _ in range(SPARE_COUNTERS)]

    def hit(self, keys: list[str]) -> None:
        idx = self.index
        for k in keys:
            i = idx.get(k)
            if i is None:
                i = idx[k] = self.spare[zlib.crc32(k.encode()) % len(self.spare)]
            self._trace(i)


def behaviour_counters(n_strategies: int, atheris_module: Any) -> Counters:
    """Counters in atheris' counter space.  ``_trace_branch`` is looked up at
    each call: atheris.Setup() rebinds it to the libFuzzer core, and a function
    captured before Setup() counts nothing (libFuzzer then sees no coverage)."""
    return Counters(n_strategies, atheris_module._reserve_counter,
                    lambda i: atheris_module._trace_branch(i))


def instrument(paths: list[str]) -> int:
    """Add atheris' line/branch instrumentation to every loaded function whose
    code lives under one of ``paths`` (impls/, oracle/, plug-in files); the
    modules are already imported (forked worker), so this patches the code
    objects in place, as ``atheris.instrument_all()`` does for everything."""
    import atheris
    roots = [str(Path(p).resolve()) for p in paths]
    n = 0
    done: set[int] = set()
    for obj in gc.get_objects():
        if not isinstance(obj, types.FunctionType):
            continue
        fn = obj.__code__.co_filename
        if not any(fn.startswith(r) for r in roots) or id(obj) in done:
            continue
        if "__ATHERIS_INSTRUMENTED__" in obj.__code__.co_consts:
            continue
        try:
            atheris.instrument_func(obj)
            n += 1
        except Exception:  # pragma: no cover  (a code object atheris cannot patch)
            pass
        done.add(id(obj))
    return n


def seed_inputs(seed: int, n: int, size: int) -> list[bytes]:
    """A few random inputs to start libFuzzer from (deterministic per seed)."""
    rng = random.Random(seed)
    return [bytes(rng.randrange(256) for _ in range(size)) for _ in range(n)]


def atheris_loop(spec: Any, strategies: list[Ops], platform: Ops, env: Environment, stats: Stats,
                 send: Callable[[tuple], None], tick: Callable[[], bool]) -> None:
    """Run libFuzzer in this (worker) process until ``tick()`` says stop or
    ``spec.runs`` inputs ran; never returns (libFuzzer exits the process)."""
    import atheris

    mode = spec.option("atheris_input", "bytes")
    coverage = spec.option("atheris_coverage", "behaviour")
    verbose = spec.option("verbose", False)
    h = Harness(strategies, platform, env, spec.length, mode, stats, spec.seed)
    if coverage in ("lines", "both"):
        here = Path(__file__).resolve().parents[2]
        paths = [str(here / "impls"), str(here / "oracle")]
        paths += [s.source for s in strategies + [platform] if str(s.source).endswith(".py")]
        instrument(paths)
    counters = None
    if coverage in ("behaviour", "both"):
        counters = behaviour_counters(len(strategies), atheris)
    share = None
    if spec.runs is not None:
        share = spec.runs // spec.jobs + (1 if spec.worker < spec.runs % spec.jobs else 0)
    workdir = tempfile.mkdtemp(prefix="shootdown-atheris-")
    ml = max_len(spec.length)
    for i, b in enumerate(seed_inputs(spec.seed * 7919 + spec.worker, SEED_INPUTS, ml)):
        Path(workdir, f"seed{i}").write_bytes(b)

    def finish() -> None:
        shutil.rmtree(workdir, ignore_errors=True)
        send(("done", spec.worker, stats))
        os._exit(0)

    def test_one_input(data: bytes) -> None:
        # nothing may escape into libFuzzer: it would report a "crash" and
        # write the input to the current directory
        try:
            if tick() or (share is not None and h.inputs >= share):
                finish()
            res = h.one_input(data)
            if res is not None and counters is not None:
                counters.hit(keys_of([r.verdict for r in res.runs], bool(res.divergences)))
            for f in h.take_findings():
                send(("finding", spec.worker, f))
        except BrokenPipeError:  # the parent is gone: nobody to report to
            shutil.rmtree(workdir, ignore_errors=True)
            os._exit(1)
        except BaseException:
            import traceback
            try:
                send(("crash", spec.worker, f"atheris input {data.hex()}:\n{traceback.format_exc()}"))
                finish()
            finally:
                os._exit(1)

    if not verbose:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    argv = ["shootdown-atheris", f"-seed={(spec.seed * 1_000_003 + spec.worker) % (2**31 - 1) + 1}",
            "-len_control=0", f"-max_len={ml}", "-handle_int=0", "-handle_term=0", "-rss_limit_mb=0",
            f"-timeout={LIBFUZZER_TIMEOUT}", "-print_final_stats=0", "-reduce_inputs=0",
            f"-artifact_prefix={workdir}/", workdir]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
    finish()  # pragma: no cover  (libFuzzer exits first)


def _atheris_child(spec: Any, strategies: list[Ops], platform: Ops, env: Environment, conn: Any, stop_ev: Any,
                   seconds: float | None) -> None:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    t0 = time.monotonic()
    stats = Stats()
    last = [t0]

    def send(msg: tuple) -> None:
        conn.send(msg)

    def tick() -> bool:
        now = time.monotonic()
        if now - last[0] >= 0.5:
            last[0] = now
            send(("stats", spec.worker, stats))
        return stop_ev.is_set() or (seconds is not None and now - t0 >= seconds)

    try:
        atheris_loop(spec, strategies, platform, env, stats, send, tick)
    finally:
        os._exit(0)


def atheris_unit(unit: Any, strategies: list[Ops], platform: Ops, env: Environment, stats: Stats,
                 should_stop: Callable[[], bool]) -> tuple[list, str | None]:
    """One libFuzzer run for a work unit (fuzz.work.FuzzUnit): in a child
    process (libFuzzer exits its process), ``unit.max_programs`` inputs or
    ``unit.seconds`` at most; returns the findings and the crash report, if any."""
    import multiprocessing as mp
    from types import SimpleNamespace

    ctx = mp.get_context("fork")
    spec = SimpleNamespace(option=unit.option, length=unit.length, runs=unit.max_programs, jobs=1,
                           worker=unit.start, seed=unit.seed)
    r, w = ctx.Pipe(duplex=False)
    stop_ev = ctx.Event()
    # a plain fork: this may be a daemonic worker process (fuzz.execution, Dask),
    # which multiprocessing does not let start children
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (the child)
        try:
            r.close()
            _atheris_child(spec, strategies, platform, env, w, stop_ev, unit.seconds)
        finally:
            os._exit(1)
    w.close()
    findings: list = []
    crash: str | None = None
    done = False
    exitcode: int | None = None

    def alive() -> bool:
        nonlocal exitcode
        if exitcode is None:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                exitcode = os.waitstatus_to_exitcode(status)
        return exitcode is None

    try:
        while True:
            if should_stop():
                stop_ev.set()
            if not r.poll(0.1):
                if not alive() and not r.poll(0):
                    break
                continue
            try:
                msg = r.recv()
            except (EOFError, OSError):
                break
            kind = msg[0]
            if kind in ("stats", "done"):
                st = msg[2]
                stats.programs, stats.steps, stats.violating = st.programs, st.steps, st.violating
                stats.behaviours, stats.keys, stats.max_steps_per_program = (
                    dict(st.behaviours), set(st.keys), st.max_steps_per_program)
                if kind == "done":
                    done = True
            elif kind == "finding":
                f = msg[2]
                if f.signature not in stats.signatures:
                    stats.signatures.add(f.signature)
                    stats.findings += 1
                    findings.append(f)
                    if unit.first_only:
                        stop_ev.set()
            elif kind == "crash":
                crash = msg[2]
    finally:
        deadline = time.monotonic() + 5
        while alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if alive():
            os.kill(pid, 9)
            _, status = os.waitpid(pid, 0)
            exitcode = os.waitstatus_to_exitcode(status)
        r.close()
    if not done and crash is None:
        crash = (f"the libFuzzer process exited without reporting (exit code {exitcode}); its crash "
                 "artifact, if any, is in /tmp/shootdown-atheris-*/")
    return findings, crash
