"""Behaviour feedback: what counts as "coverage" for the guided engines.

Line coverage says little about interleavings: the same lines run whether or
not GUP-fast was mid-walk when munmap unhooked its table.  The oracle records
those facts as *behaviour events* (oracle.behaviours.BEHAVIOURS, counted per
run); this module turns a lockstep run into a set of stable feedback *keys*:

* ``b:<strategy#>:<behaviour>:<bucket>``: a behaviour happened, with its count
  bucketed the way AFL buckets edge hits (1, 2, 3, 4-7, 8-15, 16-31, 32+), so
  "twice" and "ten times" are different features but 11 and 12 are not;
* ``p:<behaviour>+<behaviour>``: two behaviours in the same run (on any
  strategy): a walker mid-walk at unhook *and* a lazy CPU's flush, say;
* ``c:<strategy#>:<check>``: a check fired; ``o:<strategy#>:<outcome>``: how
  the run ended (quiescent, deadlock, step_limit);
* ``d``: the strategies diverged.

The atheris driver maps each key to a synthetic coverage counter, the
Hypothesis driver to ``event()`` and ``target()``.  Keys use the strategy's
position in the lockstep, not its name, so the key space is known up front.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from oracle.behaviours import BEHAVIOURS
from oracle.verdict import CHECKS

BUCKETS: tuple[int, ...] = (1, 2, 3, 4, 8, 16, 32)
OUTCOMES: tuple[str, ...] = ("quiescent", "deadlock", "step_limit")


def bucket(n: int) -> int:
    """The largest bucket lower bound <= n (n >= 1)."""
    b = 1
    for lo in BUCKETS:
        if n >= lo:
            b = lo
    return b


def all_keys(n_strategies: int) -> list[str]:
    """Every key :func:`keys_of` can produce for a lockstep of this size
    (unknown behaviour names added later get keys outside this list)."""
    out: list[str] = []
    names = sorted(BEHAVIOURS)
    for s in range(n_strategies):
        out += [f"b:{s}:{b}:{k}" for b in names for k in BUCKETS]
        out += [f"c:{s}:{c}" for c in CHECKS]
        out += [f"o:{s}:{o}" for o in OUTCOMES]
    out += [f"p:{a}+{b}" for i, a in enumerate(names) for b in names[i + 1:]]
    out.append("d")
    return out


def keys_of(verdicts: Sequence, diverged: bool = False) -> list[str]:
    """The feedback keys of one lockstep run (its verdicts, in lockstep order)."""
    out: list[str] = []
    seen: set[str] = set()
    for s, v in enumerate(verdicts):
        for name, n in v.behaviours.items():
            out.append(f"b:{s}:{name}:{bucket(n)}")
            seen.add(name)
        for c in v.checks():
            out.append(f"c:{s}:{c}")
        out.append(f"o:{s}:{v.outcome}")
    names = sorted(seen)
    out += [f"p:{a}+{b}" for i, a in enumerate(names) for b in names[i + 1:]]
    if diverged:
        out.append("d")
    return out


def behaviour_names(keys: Iterable[str]) -> set[str]:
    """The behaviour names among feedback keys."""
    return {k.split(":")[2] for k in keys if k.startswith("b:")}
