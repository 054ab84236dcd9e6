"""Throughput of the simulator + oracle, the figure the fuzz loop lives on.

    .venv/bin/python bench/throughput.py [--programs N] [--repeats R]

What one "program" costs here is what one fuzz iteration costs: generate a
4-CPU, 32-operation program (fuzz.generate, a seeded RandomDraw), run it on the
machine under fuzz.engine's random choices (RandomChoices with the platform's
environment biases), judge the history (oracle.check_history); for lockstep,
the same on the three built-in strategies plus the divergence comparison
(fuzz.run.run_lockstep).  Each figure is the median of R timed repeats over
the same N programs, timed in CPU time of this process (``time.process_time``:
programs per second per core, less sensitive to other load on the machine than
wall time, which is printed too, as is the best repeat: on a busy machine the
best is the steadier figure).  The programs run under the fuzz loop's
garbage-collection policy (fuzz.engine.PausedGC), as they do in a campaign.
The "build:" line says whether the modules of the optional compiled build
(tools/compiled.py, `make compiled`) ran compiled or as pure Python: label the
figures with it.  Prints figures only: no assertions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.engine import PausedGC, iteration_seed  # noqa: E402
from fuzz.envs import default_environment  # noqa: E402
from fuzz.generate import GenConfig, RandomDraw, generate  # noqa: E402
from fuzz.run import run_lockstep, run_program  # noqa: E402
from impls import registry  # noqa: E402
from impls.machine.choices import RandomChoices  # noqa: E402
from impls.machine.machine import Machine  # noqa: E402
from oracle import check_history  # noqa: E402
from tools.compiled import build_label  # noqa: E402

CPUS = 4
LENGTH = 32
SEED = 1


def _cfg(platform: str) -> GenConfig:
    return GenConfig(platform=platform, cpus=(CPUS, CPUS), length=LENGTH)


def one_strategy(platform: str, strategy: str, n: int) -> tuple[float, float, int, int]:
    """Generate + run + check ``n`` programs; (CPU seconds, wall seconds, steps, events)."""
    cfg = _cfg(platform)
    biases = default_environment(platform).choice_biases()
    strat = registry.strategy(strategy)
    plat = registry.platform(platform)
    steps = events = 0
    t0, w0 = time.process_time(), time.perf_counter()
    with PausedGC() as gcp:
        for i in range(n):
            s = iteration_seed(SEED, i)
            prog = generate(RandomDraw(s), cfg)
            r = run_program(prog, strat, plat, RandomChoices(s, biases))
            steps += r.history.meta["steps"]
            events += len(r.history)
            gcp.tick()
    return time.process_time() - t0, time.perf_counter() - w0, steps, events


def lockstep(platform: str, n: int) -> tuple[float, float, int, int]:
    cfg = _cfg(platform)
    biases = default_environment(platform).choice_biases()
    strats = [registry.strategy(s) for s in registry.STRATEGIES]
    plat = registry.platform(platform)
    steps = events = 0
    t0, w0 = time.process_time(), time.perf_counter()
    with PausedGC() as gcp:
        for i in range(n):
            s = iteration_seed(SEED, i)
            prog = generate(RandomDraw(s), cfg)
            res = run_lockstep(prog, strats, plat, lambda s=s: RandomChoices(s, biases))
            for r in res.runs:
                steps += r.history.meta["steps"]
                events += len(r.history)
            gcp.tick()
    return time.process_time() - t0, time.perf_counter() - w0, steps, events


def breakdown(platform: str, strategy: str, n: int) -> tuple[float, float, float]:
    """Seconds per program spent generating, in Machine.run(), in check_history()."""
    cfg = _cfg(platform)
    biases = default_environment(platform).choice_biases()
    strat = registry.strategy(strategy)
    plat = registry.platform(platform)
    tg = tr = tc = 0.0
    clock = time.process_time
    for i in range(n):
        s = iteration_seed(SEED, i)
        t0 = clock()
        prog = generate(RandomDraw(s), cfg)
        t1 = clock()
        m = Machine(prog, strat, plat, RandomChoices(s, biases))
        h = m.run()
        if hasattr(m, "release"):  # (absent before the performance work)
            m.release()
        t2 = clock()
        check_history(h)
        t3 = clock()
        tg += t1 - t0
        tr += t2 - t1
        tc += t3 - t2
    return tg / n, tr / n, tc / n


def _median(fn, repeats: int, *args) -> tuple[float, float, float, int, int]:
    """(median CPU seconds, best CPU seconds, median wall seconds, steps, events)."""
    fn(*args)  # warm-up (imports, caches of the interpreter)
    results = [fn(*args) for _ in range(repeats)]
    cpu = statistics.median(r[0] for r in results)
    best = min(r[0] for r in results)
    wall = statistics.median(r[1] for r in results)
    return cpu, best, wall, results[0][2], results[0][3]


def _row(platform: str, what: str, n: int, cpu: float, best: float, wall: float, steps: int,
         events: int) -> None:
    print(f"{platform:<10} {what:<10} {n / cpu:>10.0f} {1000 * cpu / n:>8.2f} {steps / cpu:>9.0f} "
          f"{events / cpu:>9.0f} {steps / n:>10.1f} {events / n:>11.1f} {n / best:>9.0f} {n / wall:>9.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", type=int, default=100, help="programs per timed repeat (default 100)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per figure (default 5)")
    args = ap.parse_args(argv)
    n, reps = args.programs, args.repeats
    print(f"shootdown throughput: {CPUS} CPUs, {LENGTH}-operation programs, {n} programs x "
          f"{reps} repeats (median), Python {sys.version.split()[0]}; rates per CPU-second")
    print(f"build: {build_label()}")
    print()
    print(f"{'platform':<10} {'strategy':<10} {'programs/s':>10} {'ms/prog':>8} {'steps/s':>9} "
          f"{'events/s':>9} {'steps/prog':>10} {'events/prog':>11} {'best p/s':>9} {'wall p/s':>9}")
    singles: list[float] = []
    bests: list[float] = []
    for platform in registry.PLATFORMS:
        for strategy in registry.STRATEGIES:
            cpu, best, wall, steps, events = _median(one_strategy, reps, platform, strategy, n)
            singles.append(n / cpu)
            bests.append(n / best)
            _row(platform, strategy, n, cpu, best, wall, steps, events)
    lock: list[float] = []
    lock_bests: list[float] = []
    for platform in registry.PLATFORMS:
        cpu, best, wall, steps, events = _median(lockstep, reps, platform, n)
        lock.append(n / cpu)
        lock_bests.append(n / best)
        _row(platform, "lockstep3", n, cpu, best, wall, steps, events)
    print()
    print(f"one strategy:         {statistics.mean(singles):6.0f} programs/s (mean over "
          f"{len(singles)} strategy x platform cells of the median; min {min(singles):.0f}; "
          f"best repeats {statistics.mean(bests):.0f})")
    print(f"three in lockstep:    {statistics.mean(lock):6.0f} programs/s (mean over platforms of the "
          f"median; min {min(lock):.0f}; best repeats {statistics.mean(lock_bests):.0f})")
    print()
    print("where one program's time goes (semi-rcu, mean over the same programs):")
    for platform in registry.PLATFORMS:
        tg, tr, tc = breakdown(platform, "semi-rcu", n)
        print(f"  {platform:<10} generate {1e3 * tg:5.2f} ms   Machine.run {1e3 * tr:5.2f} ms   "
              f"check_history {1e3 * tc:5.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
