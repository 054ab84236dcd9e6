"""arch/x86/mm/tlb.c and arch/x86/include/asm/tlbflush.h: TLB flushing and
mm switching on x86, as of v6.15+ (lazily trimmed ``mm_cpumask``).

``flush_tlb_mm_range()`` bumps ``mm->context.tlb_gen``, then either asks the
platform for a broadcast flush (a global ASID, INVLPGB) or, if any other CPU is
in ``mm_cpumask``, calls ``pv_ops.mmu.flush_tlb_multi`` (the platform's
``flush_tlb_multi``: native IPIs, Xen hypercall, a user's RAR...), else flushes
locally; it ends with ``mmu_notifier_arch_invalidate_secondary_tlbs()``.

``flush_tlb_func()`` is what a target runs (in the IPI handler, or directly for
hypervisor/hardware flushes): a CPU that has switched to another mm clears its
``mm_cpumask`` bit; a lazy CPU switches to ``init_mm`` (dropping every cached
translation, the whole point of b956575bed91); otherwise the ``tlb_gen`` logic
picks a partial (INVLPG per stride) or full flush.

MODEL: no PCIDs/ASIDs (a CR3 write flushes everything); no periodic
``mm_cpumask`` trim (``should_trim_cpumask()`` is always false); no
``LOADED_MM_SWITCHING`` window (switching is atomic with IRQs off).
"""

from __future__ import annotations

from dataclasses import dataclass

from .cpu import Cpu, Mm, Step, local_irq_disable, local_irq_enable, preempt_disable, preempt_enable
from .tlb import flush_all, invalidate_range

TLB_FLUSH_ALL = -1
tlb_single_page_flush_ceiling = 33


@dataclass(slots=True)
class FlushTlbInfo:
    """struct flush_tlb_info."""

    mm: Mm
    start: int
    end: int
    stride_shift: int
    freed_tables: bool
    new_tlb_gen: int
    initiating_cpu: int
    id: int = 0  # flush id in the history


def init_flush_tlb_info(cpu: Cpu, mm: Mm, start: int, end: int, stride_shift: int,
                        freed_tables: bool, new_tlb_gen: int) -> FlushTlbInfo:
    if end != TLB_FLUSH_ALL and (end - start) >> stride_shift > tlb_single_page_flush_ceiling:
        start, end = 0, TLB_FLUSH_ALL
    m = cpu.m
    m.flush_seq += 1
    return FlushTlbInfo(mm, start, end, stride_shift, freed_tables, new_tlb_gen, cpu.id, m.flush_seq)


def cpu_flush_mask(cpu: Cpu, mask: int) -> tuple[int, ...]:
    return tuple(c for c in range(cpu.m.ncpus) if (mask >> c) & 1)


def flush_tlb_mm_range(cpu: Cpu, mm: Mm, start: int, end: int, stride_shift: int,
                       freed_tables: bool) -> Step:
    """arch/x86/mm/tlb.c: flush_tlb_mm_range()."""
    m = cpu.m
    preempt_disable(cpu)  # get_cpu()
    mm.tlb_gen += 1       # inc_mm_tlb_gen(): a full barrier
    info = init_flush_tlb_info(cpu, mm, start, end, stride_shift, freed_tables, mm.tlb_gen)
    P = m.P
    m.h.emit(cpu.id, "flush_begin", id=info.id, mm=mm.id, start=info.start, end=info.end,
             stride=stride_shift, freed_tables=freed_tables, mask=cpu_flush_mask(cpu, mm.cpumask),
             how=P.name)
    if P.mm_global_asid is not None and P.mm_global_asid(mm):
        yield from P.broadcast_tlb_flush(cpu, info)
    elif mm.cpumask & ~(1 << cpu.id):
        yield from P.flush_tlb_multi(cpu, mm.cpumask, info)
    elif cpu.loaded_mm is mm:
        local_irq_disable(cpu)
        flush_tlb_func(cpu, info)
        local_irq_enable(cpu)
    preempt_enable(cpu)  # put_cpu()
    m.h.emit(cpu.id, "flush_end", id=info.id)
    # the caller's range, not the one get_flush_tlb_info() widened to a full
    # flush (v6.15 flush_tlb_mm_range(): "mmu_notifier_arch_invalidate_
    # secondary_tlbs(mm, start, end)" after put_cpu())
    mmu_notifier_arch_invalidate_secondary_tlbs(cpu, mm, start, end)


def mmu_notifier_arch_invalidate_secondary_tlbs(cpu: Cpu, mm: Mm, start: int, end: int) -> None:
    """include/linux/mmu_notifier.h: the hook for secondary TLBs that walk the
    CPU page tables (IOMMU SVA).  Called at the end of every x86 flush since
    v6.6 (6bbd42e2df8f, 1af5a8109904)."""
    if mm.iommu is not None and mm.iommu.attached:
        if cpu.m.env.skip_mmu_notifiers:
            cpu.m.h.emit(cpu.id, "notifier_skipped", mm=mm.id, start=start, end=end,
                         event="arch_invalidate_secondary_tlbs")
            return
        mm.iommu.arch_invalidate_secondary_tlbs(cpu, start, end)


def flush_tlb_func(cpu: Cpu, f: FlushTlbInfo) -> None:
    """arch/x86/mm/tlb.c: flush_tlb_func(); runs with IRQs off on the target."""
    m = cpu.m
    h = m.h
    loaded = cpu.loaded_mm
    if f.mm is not loaded:
        # The CPU was left in the mm_cpumask of the target mm. Clear it.
        f.mm.cpumask &= ~(1 << cpu.id)
        h.emit(cpu.id, "cpumask_clear", mm=f.mm.id, why="flush_tlb_func: wrong mm")
        return
    if loaded is m.init_mm:
        return
    if cpu.is_lazy:
        # lazy: flush paging-structure caches by switching to init_mm
        switch_mm_irqs_off(cpu, m.init_mm, why="flush_tlb_func: lazy")
        return
    local_tlb_gen = cpu.local_tlb_gen
    if f.new_tlb_gen <= local_tlb_gen:
        return
    mm_tlb_gen = loaded.tlb_gen
    if local_tlb_gen == mm_tlb_gen:
        return
    why = f"flush {f.id}"
    if f.end != TLB_FLUSH_ALL and f.new_tlb_gen == local_tlb_gen + 1 and f.new_tlb_gen == mm_tlb_gen:
        invalidate_range(cpu.id, h, cpu.tlb, cpu.psc, f.start, f.end, f.stride_shift, why)
    else:
        flush_all(cpu.id, h, cpu.tlb, cpu.psc, why)
    cpu.local_tlb_gen = mm_tlb_gen


def switch_mm_irqs_off(cpu: Cpu, next_mm: Mm, why: str = "switch_mm") -> None:
    """arch/x86/mm/tlb.c: switch_mm_irqs_off()."""
    m = cpu.m
    prev = cpu.loaded_mm
    was_lazy = cpu.is_lazy
    cpu.is_lazy = False
    if prev is next_mm:
        if not was_lazy:
            return
        # lazy -> non-lazy in the same mm: catch up if tlb_gen moved
        if cpu.local_tlb_gen == next_mm.tlb_gen:
            m.h.emit(cpu.id, "switch_mm", mm=next_mm.id, lazy=False, why=why, flush=False)
            return
        cpu.local_tlb_gen = next_mm.tlb_gen
        m.P.load_cr3(cpu, next_mm)
        m.h.emit(cpu.id, "switch_mm", mm=next_mm.id, lazy=False, why=why, flush=True)
        return
    # MODEL: v6.13+ leaves prev's mm_cpumask bit set (trimmed lazily by
    # flush_tlb_func()); only next's bit is set here.
    if next_mm is not m.init_mm:
        next_mm.cpumask |= 1 << cpu.id
    cpu.local_tlb_gen = next_mm.tlb_gen
    cpu.loaded_mm = next_mm
    m.P.load_cr3(cpu, next_mm)
    m.h.emit(cpu.id, "switch_mm", mm=next_mm.id, lazy=False, why=why, flush=True)


def enter_lazy_tlb(cpu: Cpu) -> None:
    """arch/x86/include/asm/tlbflush.h: enter_lazy_tlb(): keep the user mm
    loaded (CR3 unchanged); the hardware may still walk it speculatively."""
    if cpu.loaded_mm is cpu.m.init_mm:
        return
    cpu.is_lazy = True
    cpu.m.h.emit(cpu.id, "switch_mm", mm=cpu.loaded_mm.id, lazy=True, why="enter_lazy_tlb",
                 flush=False)


def native_load_cr3(cpu: Cpu, mm: Mm) -> None:
    """load_new_mm_cr3() on bare metal: the CR3 write takes effect at once and
    (without PCID) flushes the TLB and paging-structure caches."""
    set_hw_cr3(cpu, mm)


def set_hw_cr3(cpu: Cpu, mm: Mm) -> None:
    """The CR3 the hardware walker uses changes (flushing, without PCIDs)."""
    if mm.pgd is None:
        cpu.cr3_pfn, cpu.cr3_gen = 0, 0
    else:
        cpu.cr3_pfn, cpu.cr3_gen = mm.pgd.pfn, mm.pgd_gen
    cpu.m.h.emit(cpu.id, "cr3_load", pfn=cpu.cr3_pfn, gen=cpu.cr3_gen, mm=mm.id)
    flush_all(cpu.id, cpu.m.h, cpu.tlb, cpu.psc, f"cr3 <- {mm.name}")
