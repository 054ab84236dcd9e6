"""Bare-metal x86: arch/x86/mm/tlb.c native_flush_tlb_multi() and
should_flush_tlb(), as of the v6.16-era tree (fea4e317f9e7 included).

A synchronous IPI to the CPUs of ``mm_cpumask``: every target must take the
interrupt, which it can only do with IRQs enabled, and the sender waits
(``on_each_cpu_mask(..., wait=true)``).  When page tables are being freed
(``info->freed_tables``) every CPU of the mask is IPI'd, lazy-TLB ones
included, which switch to ``init_mm`` (b956575bed91, 016c4d92cd16).
Otherwise ``should_flush_tlb()`` picks the targets: not a lazy CPU (it catches
up through ``tlb_gen`` at its next switch); a CPU inside
``switch_mm_irqs_off()`` (``loaded_mm == LOADED_MM_SWITCHING``: it may have
chosen its ASID from a ``tlb_gen`` read before this flush's increment,
fea4e317f9e7); a CPU running the mm; and, when the periodic trim is due, a CPU
that is still in the mask but runs another mm, which then clears its bit
(6db2526c1d69).

The sender's wait is the barrier native direct free relies on: a CPU inside an
IRQ-disabled GUP-fast walk cannot ack until the walk is over.

Options: ``pcid`` (``on``: X86_FEATURE_PCID, the per-CPU dynamic ASIDs of
``choose_new_asid()``; ``off``: every CR3 write flushes) and ``invlpg``
(``amd-tce``: INVLPG drops only the paging-structure entries on the
address's path, as on AMD with EFER.TCE, which Linux sets since v6.15;
``intel``: it drops every paging-structure entry of the PCID, SDM 4.10.4.1).
"""

from __future__ import annotations

from impls.machine.cpu import Cpu, Step
from impls.machine.smp import on_each_cpu_cond_mask, on_each_cpu_mask
from impls.machine.tlbflush import LOADED_MM_SWITCHING, FlushTlbInfo, flush_tlb_func

NAME = "native"
IMPLIES_IPI_BROADCAST = True
OPTIONS = {
    "pcid": ("on", ("on", "off"), "X86_FEATURE_PCID: per-CPU dynamic ASIDs; off: every CR3 write flushes"),
    "invlpg": ("amd-tce", ("amd-tce", "intel"),
               "what INVLPG drops from the paging-structure caches: the address's path (AMD with TCE) "
               "or every entry of the PCID (Intel)"),
}


def should_flush_tlb(target: Cpu, info: FlushTlbInfo) -> bool:
    """arch/x86/mm/tlb.c: should_flush_tlb()."""
    loaded_mm = target.loaded_mm
    # Lazy TLB will get flushed at the next context switch.
    if target.is_lazy:
        return False
    # While switching, the remote CPU could have state from either the prev
    # or next mm. Assume the worst and flush.
    if loaded_mm is LOADED_MM_SWITCHING:
        target.m.h.emit(info.initiating_cpu, "flush_ipi_switching", id=info.id, target=target.id)
        return True
    # The target mm is loaded, and the CPU is not lazy.
    if loaded_mm is info.mm:
        return True
    # In cpumask, but not the loaded mm? Periodically remove by flushing.
    return info.trim_cpumask


def flush_tlb_multi(cpu: Cpu, cpumask: int, info: FlushTlbInfo) -> Step:
    """arch/x86/mm/tlb.c: native_flush_tlb_multi() (MODEL: no global-ASID
    transition, so ``mm_in_asid_transition()`` is false)."""
    if info.freed_tables:
        yield from on_each_cpu_mask(cpu, cpumask, flush_tlb_func, info, True, "flush_tlb_func")
    else:
        yield from on_each_cpu_cond_mask(cpu, should_flush_tlb, flush_tlb_func, info, True, cpumask,
                                         "flush_tlb_func")
