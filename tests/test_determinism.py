"""Replaying a program is exact: the same history in separate processes with
different PYTHONHASHSEED (Shuttle's determinism self-check)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import hashlib, sys
from fuzz import corpus
from fuzz.run import run_program
from impls import registry
from impls.machine.choices import RandomChoices
lit = corpus.load(sys.argv[1])
out = []
for name in registry.STRATEGIES:
    for choices in (None, RandomChoices(7)):
        r = run_program(lit.program, registry.strategy(name),
                        registry.platform(lit.program.platform), choices)
        out.extend(r.history.fingerprint())
        out.append(repr(r.history.meta["schedule"]))
        out.append(repr([(v.check, v.summary) for v in r.verdict.violations]))
print(hashlib.sha256("\n".join(out).encode()).hexdigest(), len(out))
"""


def _digest(path: Path, hashseed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=hashseed, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=True)
    return r.stdout.strip()


def test_histories_identical_across_processes_and_hash_seeds():
    path = ROOT / "corpus" / "xen+exit_mmap+deferred-cr3.yaml"
    a = _digest(path, "1")
    b = _digest(path, "12345")
    assert a == b
    assert int(a.split()[1]) > 100  # the fingerprint covers whole histories


def test_recorded_schedule_replays_to_the_same_history():
    from fuzz import corpus
    from fuzz.run import run_program
    from impls import registry
    from impls.machine.choices import RandomChoices, Replay

    lit = corpus.load(ROOT / "corpus" / "gupfast+munmap+xenflush.yaml")
    prog = lit.program.with_schedule(None)
    for seed in range(5):
        first = run_program(prog, registry.strategy("semi-rcu"), registry.platform("xen-pv"),
                            RandomChoices(seed))
        sched = first.history.meta["schedule"]
        again = run_program(prog, registry.strategy("semi-rcu"), registry.platform("xen-pv"),
                            Replay(sched))
        assert again.history.fingerprint() == first.history.fingerprint()
        h = hashlib.sha256("".join(first.history.fingerprint()).encode()).hexdigest()
        assert h  # the fingerprint is a plain string list, hashable across runs
