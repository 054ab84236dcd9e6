"""kernel/smp.c: cross-CPU function calls (IPIs).

A target CPU runs the function only when it takes the interrupt, which it can
do only with IRQs enabled: the scheduler delivers at most one pending IPI per
step of a CPU whose IRQs are on (the ``irq.defer`` choice can postpone it).
A waiting sender spins in ``csd_lock_wait()`` with IRQs enabled and preemption
disabled, so it keeps taking IPIs itself and holds off RCU grace periods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .cpu import Cpu, Step, local_irq_restore, local_irq_save, preempt_disable, preempt_enable, wait_until

SmpFunc = Callable[[Cpu, Any], None]


class Csd:
    """struct __call_single_data shared by all targets of one call."""

    __slots__ = ("id", "func", "info", "pending", "src", "name")

    def __init__(self, csd_id: int, func: SmpFunc, info: Any, src: int, name: str) -> None:
        self.id = csd_id
        self.func = func
        self.info = info
        self.pending: set[int] = set()
        self.src = src
        self.name = name


def _send(cpu: Cpu, targets: list[int], func: SmpFunc, info: Any, name: str) -> Csd:
    m = cpu.m
    if cpu.irqs_disabled():
        # kernel/smp.c: WARN_ON_ONCE(cpu_online(this_cpu) && irqs_disabled() ...)
        m.h.emit(cpu.id, "bug", what="smp_call_function_many() called with IRQs disabled "
                 "(can deadlock against a CPU waiting on us)")
    m.csd_seq += 1
    csd = Csd(m.csd_seq, func, info, cpu.id, name)
    for t in targets:
        csd.pending.add(t)
        m.cpus[t].ipi.append(csd)
    m.h.emit(cpu.id, "ipi_send", id=csd.id, what=name, targets=tuple(targets))
    return csd


def deliver_ipi(cpu: Cpu) -> None:
    """The target takes the interrupt: irq_enter, run the function, irq_exit."""
    csd = cpu.ipi.popleft()
    h = cpu.m.h
    h.emit(cpu.id, "ipi_recv", id=csd.id, what=csd.name, src=csd.src)
    local_irq_save(cpu)
    cpu.in_irq = True
    csd.func(cpu, csd.info)
    cpu.in_irq = False
    local_irq_restore(cpu)
    csd.pending.discard(cpu.id)
    if not csd.pending:
        h.emit(cpu.id, "ipi_done", id=csd.id, what=csd.name)


def _targets(cpu: Cpu, mask: int) -> list[int]:
    return [c for c in range(cpu.m.ncpus) if (mask >> c) & 1 and c != cpu.id]


def smp_call_function_many(cpu: Cpu, mask: int, func: SmpFunc, info: Any, wait: bool,
                           name: str) -> Step:
    """kernel/smp.c: smp_call_function_many(): every CPU in ``mask`` but self."""
    preempt_disable(cpu)
    targets = _targets(cpu, mask)
    if targets:
        csd = _send(cpu, targets, func, info, name)
        if wait:
            yield from wait_until(cpu, lambda: not csd.pending, f"{name}:csd_lock_wait")
    preempt_enable(cpu)


def smp_call_function(cpu: Cpu, func: SmpFunc, info: Any, wait: bool, name: str) -> Step:
    """kernel/smp.c: smp_call_function(): all other online CPUs."""
    yield from smp_call_function_many(cpu, (1 << cpu.m.ncpus) - 1, func, info, wait, name)


def on_each_cpu_cond_mask(cpu: Cpu, cond: Callable[[Cpu, Any], bool] | None, func: SmpFunc,
                          info: Any, wait: bool, mask: int, name: str) -> Step:
    """kernel/smp.c: on_each_cpu_cond_mask(): IPI the CPUs of ``mask`` for
    which ``cond(cpu, info)`` holds (evaluated by the sender), run ``func``
    locally with IRQs disabled if this CPU is in the mask, then wait.
    ``cond`` receives the target CPU (the kernel passes its number and reads its
    per-CPU data)."""
    preempt_disable(cpu)
    cpus = cpu.m.cpus
    targets = [c for c in _targets(cpu, mask) if cond is None or cond(cpus[c], info)]
    csd = _send(cpu, targets, func, info, name) if targets else None
    if (mask >> cpu.id) & 1 and (cond is None or cond(cpu, info)):
        local_irq_save(cpu)
        func(cpu, info)
        local_irq_restore(cpu)
    if csd is not None and wait:
        yield from wait_until(cpu, lambda: not csd.pending, f"{name}:csd_lock_wait")
    preempt_enable(cpu)


def on_each_cpu_mask(cpu: Cpu, mask: int, func: SmpFunc, info: Any, wait: bool, name: str) -> Step:
    yield from on_each_cpu_cond_mask(cpu, None, func, info, wait, mask, name)
