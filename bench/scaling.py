"""How `shootdown fuzz --jobs N` scales: the same campaign at --jobs 1 and --jobs N.

    .venv/bin/python bench/scaling.py [--runs 1500] [--jobs 2] [--repeats 3] [--env native]

Runs ``shootdown fuzz --runs R --seed S --env ENV --no-write`` as a new user
would (a separate process, the CLI, the local worker pool), alternating
--jobs 1 and --jobs N so both see the same machine, R times each.  Prints
each run's wall and CPU time (the CPU time of the whole process tree, from
``os.wait4``), the median of each, and the speed-up: median wall(--jobs 1) /
median wall(--jobs N).  A speed-up is a wall-clock ratio, so it only means
something on an otherwise idle machine: the load average at the start and at
the end is printed next to it.  The default environment is one where every
built-in is safe, so no minimisation runs and the figure is the fuzz loop's
alone.  Prints figures only: no assertions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _shootdown() -> list[str]:
    exe = Path(sys.executable).with_name("shootdown")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "fuzz.cli"]


def one(runs: int, seed: int, jobs: int, env: str) -> tuple[float, float, int]:
    """(wall s, CPU s of the process tree, exit status) of one campaign."""
    cmd = _shootdown() + ["fuzz", "--runs", str(runs), "--seed", str(seed), "--jobs", str(jobs),
                          "--env", env, "--no-write", "--format", "json"]
    w0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - w0
    # wait4 gives the child's own usage; its workers are its children, which it
    # reaps, so their time is folded into the child's children usage, which
    # wait4 includes in ru (RUSAGE_CHILDREN semantics of the reaped child).
    cpu = ru.ru_utime + ru.ru_stime
    return wall, cpu, os.waitstatus_to_exitcode(status)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1500, help="programs per campaign (default 1500)")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--jobs", type=int, default=2, help="the parallel figure (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="campaigns per --jobs value (default 3)")
    ap.add_argument("--env", default="native", help="environment (default native: no findings)")
    a = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}; {os.cpu_count()} CPUs")
    walls: dict[int, list[float]] = {1: [], a.jobs: []}
    cpus: dict[int, list[float]] = {1: [], a.jobs: []}
    for r in range(a.repeats):
        for j in (1, a.jobs):
            wall, cpu, rc = one(a.runs, a.seed, j, a.env)
            walls[j].append(wall)
            cpus[j].append(cpu)
            print(f"repeat {r + 1} --jobs {j}: wall {wall:7.1f} s  CPU {cpu:7.1f} s  "
                  f"{a.runs / wall:6.1f} programs/s  exit {rc}", flush=True)
    for j in (1, a.jobs):
        print(f"--jobs {j}: median wall {statistics.median(walls[j]):7.1f} s, "
              f"median CPU {statistics.median(cpus[j]):7.1f} s")
    speedup = statistics.median(walls[1]) / statistics.median(walls[a.jobs])
    print(f"speed-up --jobs {a.jobs} over --jobs 1 (median wall ratio): {speedup:.2f}x")
    print(f"load average at end: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
