"""kernel/sched/core.c, kernel/exit.c: context switches and process exit.

``context_switch()`` runs with IRQs disabled (the runqueue lock):
``prepare_task_switch()`` (Xen: ``xen_start_context_switch()``, lazy CPU mode,
so the CR3 write below is only queued), then either ``enter_lazy_tlb()`` for a
kernel thread, which borrows the previous ``active_mm`` and keeps it loaded, or
the platform's ``switch_mm_irqs_off()`` (x86's has preemption points inside,
IRQs off: the ``LOADED_MM_SWITCHING`` window); a preemption point (still IRQs
off); then
``finish_task_switch()``: Xen ``xen_end_context_switch()`` issues the queued
multicall, and a borrowed lazy mm is dropped (``mmdrop_lazy_tlb()``).

``exit``: the process exits (``exit_group()``).  Threads of it on other CPUs are
killed at their next operation boundary (MODEL: a thread between operations is
taken off its CPU at once, as if it ran ``do_exit()`` there); the last one runs
``exit_mm()`` -> ``mmput()`` -> ``exit_mmap()``, after which the CPU runs a
kernel thread that keeps the dead mm as its lazy ``active_mm``.
"""

from __future__ import annotations

from .cpu import Cpu, Mm, Step, local_irq_disable, local_irq_enable, wait_until
from .mmap import exit_mmap, mmdrop_check
from .tlbflush import enter_lazy_tlb


def context_switch(cpu: Cpu, next_mm: Mm | None) -> Step:
    m = cpu.m
    P = m.P
    local_irq_disable(cpu)
    if P.start_context_switch is not None:
        P.start_context_switch(cpu)
    prev_active = cpu.active_mm
    drop = None
    # the switch is part of the next task's run from its start: an exit of
    # next_mm that begins while switch_mm_irqs_off() is in progress must count
    # this CPU among its threads and wait for it
    cpu.op_mm = next_mm
    if next_mm is None:
        enter_lazy_tlb(cpu)  # the kernel thread borrows prev->active_mm
    else:
        if cpu.current_mm is None and prev_active is not next_mm:
            drop = prev_active  # rq->prev_mm: mmdrop_lazy_tlb() in finish_task_switch()
        # rq->curr is next before switch_mm(): from here the CPU runs a live
        # thread of next_mm, which holds an mm_users reference, so an
        # exit_group() must kill it before exit_mmap() (switch_mm_irqs_off()
        # has preemption points)
        cpu.current_mm = next_mm
        cpu.op_mm = next_mm
        yield from P.switch_mm_irqs_off(cpu, next_mm, "context_switch")
        cpu.active_mm = next_mm
    cpu.current_mm = next_mm
    # the switch is now part of the next task's run: an exit of next_mm must
    # wait for it (exit_mmap() only runs once that task has run do_exit())
    cpu.op_mm = next_mm
    m.h.emit(cpu.id, "context_switch", to=-1 if next_mm is None else next_mm.id)
    yield "context_switch:switched"
    # finish_task_switch()
    if P.end_context_switch is not None:
        P.end_context_switch(cpu)
    local_irq_enable(cpu)
    if drop is not None:
        mmdrop_check(cpu, drop)


def switch_op(cpu: Cpu, op) -> Step:
    m = cpu.m
    if op.mm is None:
        if cpu.current_mm is None:
            return "already a kernel thread"
        yield from context_switch(cpu, None)
        return "kernel thread (lazy TLB)"
    mm = m.mms[op.mm]
    if mm.exited or mm.dying:
        return "skipped: mm has exited"
    if cpu.current_mm is mm:
        return "already running it"
    yield from context_switch(cpu, mm)
    return f"running {mm.name}"


def exit_op(cpu: Cpu, op) -> Step:
    """exit_group() of the current process."""
    m = cpu.m
    mm = cpu.current_mm
    if mm is None:
        return "skipped: kernel thread"
    mm.dying = True
    m.h.emit(cpu.id, "exit_group", mm=mm.id)
    # other threads of this process: wait until they are between operations,
    # then they are gone (their CPUs run a kernel thread, lazily on mm)
    # (a CPU in the middle of switching to a thread of mm is one of them: it
    # set op_mm when the switch began, before current_mm changes)
    others = [c for c in m.cpus if c is not cpu and (c.current_mm is mm or c.op_mm is mm)]
    yield from wait_until(cpu, lambda: all(c.op_mm is not mm for c in others), "exit:zap_other_threads")
    for c in others:
        if c.current_mm is mm:
            c.current_mm = None
            enter_lazy_tlb(c)
            m.h.emit(c.id, "thread_killed", mm=mm.id)
    # exit_mm(): current->mm = NULL; enter_lazy_tlb(); mmput()
    cpu.current_mm = None
    enter_lazy_tlb(cpu)
    yield "exit:exit_mm"
    yield from exit_mmap(cpu, mm)
    mmdrop_check(cpu, mm)
    return "exited"
