"""Bare-metal x86: arch/x86/mm/tlb.c native_flush_tlb_multi().

A synchronous IPI to the CPUs of ``mm_cpumask``: every target must take the
interrupt, which it can only do with IRQs enabled, and the sender waits
(``on_each_cpu_mask(..., wait=true)``).  When page tables are being freed
(``info->freed_tables``) lazy-TLB CPUs are IPI'd too and switch to ``init_mm``
(b956575bed91, 016c4d92cd16); otherwise ``should_flush_tlb()`` skips them and
they catch up through ``tlb_gen`` at their next switch.

The sender's wait is the barrier native direct free relies on: a CPU inside an
IRQ-disabled GUP-fast walk cannot ack until the walk is over.
"""

from __future__ import annotations

from impls.machine.cpu import Cpu, Step
from impls.machine.smp import on_each_cpu_cond_mask, on_each_cpu_mask
from impls.machine.tlbflush import FlushTlbInfo, flush_tlb_func

NAME = "native"
IMPLIES_IPI_BROADCAST = True


def should_flush_tlb(target: Cpu, info: FlushTlbInfo) -> bool:
    """arch/x86/mm/tlb.c: should_flush_tlb() (MODEL: no periodic cpumask trim,
    no LOADED_MM_SWITCHING window)."""
    if target.is_lazy:
        return False
    return target.loaded_mm is info.mm


def flush_tlb_multi(cpu: Cpu, cpumask: int, info: FlushTlbInfo) -> Step:
    """arch/x86/mm/tlb.c: native_flush_tlb_multi()."""
    if info.freed_tables:
        yield from on_each_cpu_mask(cpu, cpumask, flush_tlb_func, info, True, "flush_tlb_func")
    else:
        yield from on_each_cpu_cond_mask(cpu, should_flush_tlb, flush_tlb_func, info, True, cpumask,
                                         "flush_tlb_func")
