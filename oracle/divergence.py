"""divergence (I12): strategies run in lockstep on the same program must agree
on the observables that do not depend on the schedule.

Each strategy runs under its own schedule (their steps do not line up: one
frees inline, another in an RCU callback), so only *schedule-robust*
observables at quiescence are compared:

* ``mapped``: for every page touched by mutating operations (faults,
  munmap, madvise, mmap) of a single CPU only, whether it is mapped at the
  end; the order of those operations is program order, whatever the schedule;
* ``mm state``: which address spaces exited and were freed;
* ``leaked pages``: data pages alive at the end but mapped nowhere.

Named allowances (differences that are *not* divergence): frame numbers
(allocation order differs), the timing and number of flushes, IPIs, RCU
callbacks and grace periods, and the verdicts of the absolute checks (each
strategy's violations are reported on their own, not twice).
"""

from __future__ import annotations

from impls.machine.history import Event, History
from impls.machine.page_alloc import DATA
from impls.machine.pgtable import PAGE_SIZE
from impls.machine.program import Program

from .verdict import Violation

ALLOWANCES = ("frame numbers", "flush timing and count", "IPI count", "RCU callback timing",
              "absolute-check verdicts (reported per strategy)")

_MUTATING_RANGE = ("munmap", "madvise", "mmap", "populate")
_MUTATING_PAGE = ("access", "kvm_fault")


def robust_pages(program: Program) -> dict[tuple[int, int], bool]:
    """(mm, page va) -> True if only one CPU's operations mutate it.

    MODEL: a CPU's operations act on the mm it runs; the mm of each operation
    is derived statically from the ``switch`` operations before it."""
    touched: dict[tuple[int, int], set[int]] = {}
    for cpu in range(program.cpus):
        mm = program.start_of(cpu)
        for op in program.ops_of(cpu):
            if op.kind == "switch":
                mm = op.mm
                continue
            if mm is None:
                continue
            if op.kind in _MUTATING_RANGE:
                pages = range(op.addr, op.addr + op.len, PAGE_SIZE)
            elif op.kind in _MUTATING_PAGE:
                pages = range(op.addr & ~(PAGE_SIZE - 1), (op.addr & ~(PAGE_SIZE - 1)) + 1, PAGE_SIZE)
            else:
                continue
            if len(pages) > 4096:
                pages = range(0)  # MODEL: huge ranges make every page they cover racy
                touched.setdefault((mm, -1), set()).add(cpu)
            for va in pages:
                touched.setdefault((mm, va), set()).add(cpu)
    return {k: len(v) == 1 for k, v in touched.items() if k[1] >= 0}


def observables(history: History, program: Program) -> dict[str, object] | None:
    final: Event | None = next((e for e in reversed(history.events) if e.kind == "final"), None)
    if final is None:
        return None
    robust = robust_pages(program)
    exits = {cpu for cpu in range(program.cpus) for op in program.ops_of(cpu) if op.kind == "exit"}
    obs: dict[str, object] = {}
    for mm in final.a["mms"]:
        mapped = {va for va, _ in mm["mapping"]}
        for (mmid, va), ok in robust.items():
            if ok and mmid == mm["id"]:
                obs[f"mm{mmid} {va:#x} mapped"] = va in mapped
        if len(exits) <= 1:
            obs[f"mm{mm['id']} exited"] = mm["exited"]
    all_mapped = {pg for mm in final.a["mms"] for _, pg in mm["mapping"]}
    obs["leaked pages"] = sum(1 for f in final.a["frames"]
                              if f[2] == DATA and (f[0], f[1]) not in all_mapped)
    return obs


def compare(histories: list[History], program: Program) -> list[Violation]:
    """Pairwise comparison against the first strategy that reached quiescence."""
    out: list[Violation] = []
    base = None
    for h in histories:
        obs = observables(h, program)
        if obs is None:
            continue
        if base is None:
            base = (h, obs)
            continue
        bh, bobs = base
        for key in sorted(set(bobs) | set(obs)):
            if bobs.get(key) != obs.get(key):
                out.append(Violation(
                    "divergence", h.strategy,
                    f"{bh.strategy} and {h.strategy} disagree on '{key}': "
                    f"{bobs.get(key)} vs {obs.get(key)}",
                    (), {"observable": key, "strategies": (bh.strategy, h.strategy),
                         "values": (bobs.get(key), obs.get(key))}))
    return out
