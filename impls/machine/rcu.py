"""kernel/rcu/tree.c: grace periods, ``call_rcu()``, ``synchronize_rcu()``,
``rcu_barrier()``.

The RCU agent (agent id ``RCU`` = -1, its own lane in diagrams) stands for the
grace-period kthread and the softirq that invokes callbacks.  Each of its steps
does one thing: invoke a ready callback, end the current grace period, or start
one.  A grace period that starts at time t ends only once every read-side
critical section that was running at t has ended; a critical section is any
region with IRQs disabled, preemption disabled or ``rcu_read_lock()`` held
(consolidated RCU, v4.20+).

MODEL: grace periods are numbered 1, 2, ...; a callback queued while grace
period N is running waits for N+1 (it may have started before the callback was
queued), which is the ``rcu_seq_snap()`` rule.  Callbacks run in the RCU
agent's context, not on a particular CPU's softirq.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .cpu import Cpu, Step, wait_until

if TYPE_CHECKING:
    from .machine import Machine

RcuFunc = Callable[[Cpu, Any], None]


class RcuHead:
    __slots__ = ("id", "func", "arg", "what", "gp")

    def __init__(self, cb_id: int, func: RcuFunc, arg: Any, what: str, gp: int) -> None:
        self.id = cb_id
        self.func = func
        self.arg = arg
        self.what = what
        self.gp = gp


class Rcu:
    __slots__ = ("m", "completed", "active", "blockers", "waiting", "ready", "requested",
                 "next_id", "invoked")

    def __init__(self, machine: Machine) -> None:
        self.m = machine
        self.completed = 0
        self.active = False
        self.blockers: list[tuple[int, int]] = []
        self.waiting: list[RcuHead] = []
        self.ready: deque[RcuHead] = deque()
        self.requested = 0
        self.next_id = 0
        self.invoked = 0

    def snap(self) -> int:
        """rcu_seq_snap(): the grace period a new request must wait for."""
        return self.completed + (2 if self.active else 1)

    def _blocker_done(self, cpu_id: int, sid: int) -> bool:
        c = self.m.cpus[cpu_id]
        return c.rcu_sid != sid or not c.in_reader()

    def runnable(self) -> bool:
        if self.ready:
            return True
        if self.active:  # the grace period can end once every blocker is done
            for c, s in self.blockers:
                if not self._blocker_done(c, s):
                    return False
            return True
        return bool(self.waiting) or self.requested > self.completed

    def step(self) -> None:
        m = self.m
        ctx = m.rcu_cpu
        if self.ready:
            head = self.ready.popleft()
            m.h.emit(ctx.id, "rcu_cb", id=head.id, what=head.what, gp=head.gp)
            head.func(ctx, head.arg)
            self.invoked += 1
            return
        if self.active:
            self.completed += 1
            self.active = False
            m.h.emit(ctx.id, "gp_end", gp=self.completed, waited=len(self.blockers))
            still: list[Any] = []
            for head in self.waiting:
                (self.ready if head.gp <= self.completed else still).append(head)
            self.waiting = still
            return
        self.active = True
        self.blockers = [(c.id, c.rcu_sid) for c in m.cpus if c.in_reader()]
        m.h.emit(ctx.id, "gp_start", gp=self.completed + 1,
                 readers=tuple(c for c, _ in self.blockers))


def call_rcu(cpu: Cpu, func: RcuFunc, arg: Any, what: str) -> None:
    """kernel/rcu/tree.c: call_rcu(): ``func(arg)`` runs after a full grace period."""
    rcu = cpu.m.rcu
    rcu.next_id += 1
    head = RcuHead(rcu.next_id, func, arg, what, rcu.snap())
    rcu.waiting.append(head)
    cpu.m.h.emit(cpu.id, "call_rcu", id=head.id, what=what, gp=head.gp)


def synchronize_rcu(cpu: Cpu) -> Step:
    """kernel/rcu/tree.c: synchronize_rcu(): sleeps until a full grace period
    has elapsed.  Calling it inside a read-side critical section is a bug
    (might_sleep(); it would wait for itself)."""
    m = cpu.m
    rcu = m.rcu
    if cpu.in_reader():
        m.h.emit(cpu.id, "bug", what="synchronize_rcu() called in atomic or RCU read-side context")
    target = rcu.snap()
    rcu.requested = max(rcu.requested, target)
    m.h.emit(cpu.id, "sync_rcu_begin", gp=target)
    yield from wait_until(cpu, lambda: rcu.completed >= target, "synchronize_rcu")
    m.h.emit(cpu.id, "sync_rcu_end", gp=target)


def rcu_barrier(cpu: Cpu) -> Step:
    """kernel/rcu/tree.c: rcu_barrier(): wait for every queued callback."""
    rcu = cpu.m.rcu
    target = rcu.next_id
    yield from wait_until(cpu, lambda: not any(h.id <= target for h in rcu.waiting)
                          and not any(h.id <= target for h in rcu.ready), "rcu_barrier")
