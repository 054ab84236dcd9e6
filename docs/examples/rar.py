"""Intel RAR (Remote Action Request): hardware-serviced remote TLB
invalidation, as in Rik van Riel's RFC "[RFC PATCH v4 5/8] x86/mm: Introduce
Remote Action Request" and "x86/mm: userspace & pageout flushing using Intel
RAR" (2025-06-19; not merged as far as our sources show).

The sender writes a payload (PCID, address range) and sends a RAR through
the APIC to the CPUs of ``mm_cpumask``; each target's microcode performs the
invalidation and marks its action slot done, without running kernel code and
whatever its IRQ state; the sender spins in ``smp_call_rar_many()`` until
every target is done (with IRQs enabled, like an IPI sender).  Then it
flushes its own TLB with ``flush_tlb_func()`` under ``local_irq_disable()``
(``rar_tlb_flush()``).

* **Targets.**  Every CPU of ``mm_cpumask``: the CPUs running the mm, the
  lazy ones (RAR invalidates by PCID; their CR3 still holds the mm, so their
  paging-structure caches get dropped for the range), and CPUs that switched
  away but whose bit was not trimmed yet (nothing of this mm is cached there:
  MODEL, no PCIDs, a CR3 write flushes everything).  Microcode cannot run
  ``flush_tlb_func()``: a lazy target is not switched to ``init_mm`` and no
  bit is cleared from ``mm_cpumask``; a stale ``local_tlb_gen`` only costs a
  full flush at the next switch.
* **Completion.**  Synchronous for the sender: ``flush_tlb_multi()``
  returns only after every target invalidated.  In between (the preemption
  point ``rar_tlb_flush:sent``) other CPUs keep running on their old entries;
  a target that happens to be scheduled there processes the request first
  (``on_step``).
* **No IPI.**  A CPU inside an IRQ-off GUP-fast walk is invalidated anyway,
  and the sender does not wait for the walk: native direct free is unsafe
  here (a table freed right after the flush can be reused under the walker),
  RCU table freeing is safe.  ``IMPLIES_IPI_BROADCAST`` is False, so
  ``tlb_table_flush_implies_ipi_broadcast()`` keeps the sync IPI.

MODEL: in the RFC, RAR is used through ``broadcast_tlb_flush()`` for mms with
a global ASID and periodic IPI flushes trim ``mm_cpumask``; here every flush
with a remote CPU in ``mm_cpumask`` is a RAR (the ``pv_ops.mmu.flush_tlb_multi``
slot) and the mask is never trimmed; a PTI user PCID is not modelled; the
invalidation drops the PSC entries on the range's paths (INVLPG semantics,
as the rest of the model).
"""

from __future__ import annotations

from impls.machine.cpu import Cpu, Step, local_irq_disable, local_irq_enable, preempt_disable, preempt_enable
from impls.machine.tlb import flush_all, invalidate_range
from impls.machine.tlbflush import TLB_FLUSH_ALL, FlushTlbInfo, flush_tlb_func

NAME = "rar"
IMPLIES_IPI_BROADCAST = False


def init(m) -> None:
    """Per-CPU RAR action slots: the payloads sent to this CPU, not yet done."""
    for c in m.cpus:
        c.pv["rar"] = []


def rar_handle(target: Cpu, info: FlushTlbInfo) -> None:
    """What the target's microcode does with one payload: invalidate the
    range (or everything) tagged with the mm's PCID.  MODEL: this platform
    declares no ``pcid`` option, so it runs without PCIDs: only a CPU whose
    CR3 holds the mm (running it, lazy, or mid-switch to it) has entries for
    it."""
    h = target.m.h
    why = f"rar {info.id}"
    pgd = info.mm.pgd
    if pgd is None or target.cr3_pfn != pgd.pfn:
        # what the microcode sees is the hardware's CR3, not loaded_mm (which
        # reads LOADED_MM_SWITCHING while switch_mm_irqs_off() changes CR3)
        h.emit(target.id, "rar_done", id=info.id, effect="other mm loaded: nothing cached")
        return
    if info.end == TLB_FLUSH_ALL:
        flush_all(target.id, h, target.tlb, target.psc, why)
    else:
        invalidate_range(target.id, h, target.tlb, target.psc, info.start, info.end,
                         info.stride_shift, why)
    h.emit(target.id, "rar_done", id=info.id, effect="invalidated")


def _process(target: Cpu, initiator: int | None = None) -> None:
    """The target services its pending actions (those of ``initiator``, or
    all of them)."""
    pending = target.pv["rar"]
    mine = [i for i in pending if initiator is None or i.initiating_cpu == initiator]
    if not mine:
        return
    target.pv["rar"] = [i for i in pending if i not in mine]
    for info in mine:
        rar_handle(target, info)


def smp_call_rar_many(cpu: Cpu, cpumask: int, info: FlushTlbInfo) -> Step:
    """arch/x86/mm/rar.c: smp_call_rar_many(): post the payload to every
    other CPU of the mask, then spin until each has performed it."""
    m = cpu.m
    if cpu.irqs_disabled():
        # lockdep_assert_irqs_enabled(): "Can deadlock when called with interrupts disabled"
        m.h.emit(cpu.id, "bug", what="smp_call_rar_many() called with IRQs disabled")
    targets = [c for c in range(m.ncpus) if (cpumask >> c) & 1 and c != cpu.id]
    if not targets:
        return
    preempt_disable(cpu)
    for t in targets:
        m.cpus[t].pv["rar"].append(info)
    m.h.emit(cpu.id, "rar_send", id=info.id, targets=tuple(targets), start=info.start,
             end=info.end, freed_tables=info.freed_tables)
    yield "rar_tlb_flush:sent"
    # the sender's spin ends when every target's action slot reads done: the
    # microcode of each target performs the invalidation, whatever it is doing
    for t in targets:
        _process(m.cpus[t], cpu.id)
    m.h.emit(cpu.id, "rar_complete", id=info.id)
    preempt_enable(cpu)


def flush_tlb_multi(cpu: Cpu, cpumask: int, info: FlushTlbInfo) -> Step:
    """arch/x86/mm/tlb.c (RFC): rar_tlb_flush(): RAR to the other CPUs of
    the mask, then the local flush (``flush_tlb_func()``) with IRQs off."""
    yield from smp_call_rar_many(cpu, cpumask, info)
    if (cpumask >> cpu.id) & 1:
        local_irq_disable(cpu)
        flush_tlb_func(cpu, info)
        local_irq_enable(cpu)


def on_step(cpu: Cpu) -> None:
    """A target scheduled while a request is in flight services it now."""
    if cpu.pv["rar"]:
        _process(cpu)


def pending(m) -> bool:
    return any(c.pv["rar"] for c in m.cpus)


def quiesce(m) -> None:
    for c in m.cpus:
        _process(c)
