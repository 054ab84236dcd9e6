"""arch/x86/mm/tlb.c and arch/x86/include/asm/tlbflush.h: TLB flushing, PCIDs
and mm switching on x86.

Read at the v6.16-era tree (CachyOS/linux, 2025; the v6.15 INVLPGB series
included) with the fixes of fea4e317f9e7 "x86/mm: Eliminate window where TLB
flushes may be inadvertently skipped" (Dave Hansen, 2025) and 83b0177a6c48
("x86/mm: Fix SMP ordering in switch_mm_irqs_off()", Peter Zijlstra, 2025).

``flush_tlb_mm_range()`` bumps ``mm->context.tlb_gen``, then either asks the
platform for a broadcast flush (a global ASID, INVLPGB) or, if any other CPU is
in ``mm_cpumask``, calls ``pv_ops.mmu.flush_tlb_multi`` (the platform's
``flush_tlb_multi``: native IPIs, Xen hypercall, a user's RAR...), else flushes
locally; it ends with ``mmu_notifier_arch_invalidate_secondary_tlbs()``.
Before an IPI flush it asks whether the once-a-second ``mm_cpumask`` trim is
due (``should_trim_cpumask()``, the ``tlb.trim_cpumask`` choice): then
``should_flush_tlb()`` also IPIs the CPUs that are in the mask but run another
mm, and their ``flush_tlb_func()`` clears their bit (6db2526c1d69).

``flush_tlb_func()`` is what a target runs (in the IPI handler, or directly for
hypervisor/hardware flushes): a CPU that has switched to another mm clears its
``mm_cpumask`` bit; a lazy CPU switches to ``init_mm`` (dropping every cached
translation, the whole point of b956575bed91); otherwise the ``tlb_gen`` logic
picks a partial (INVLPG per stride) or full flush of the current PCID.

**PCIDs.**  With ``X86_FEATURE_PCID`` (the platform option ``pcid``) each CPU
keeps a small array of dynamic ASIDs, ``cpu_tlbstate.ctxs[TLB_NR_DYN_ASIDS]``,
each remembering the mm it last held (``ctx_id``) and the ``tlb_gen`` that
ASID's TLB entries are up to date with.  ``choose_new_asid()`` reuses the slot
of the next mm if it has one, flushing it only if ``tlb_gen`` moved since
(the catch-up of flushes that skipped this CPU), else takes the next slot
round-robin and flushes it.  Entries of an ASID survive a switch away and
back; the hardware uses only the current PCID's.  Without PCIDs every CR3
write flushes.  INVLPG semantics on paging-structure caches are the
platform's ``invlpg`` option (tlb.py).

**The switch window.**  ``switch_mm_irqs_off()`` runs as steps: it writes
``loaded_mm = LOADED_MM_SWITCHING``, sets its ``mm_cpumask`` bit, reads
``tlb_gen`` and chooses the ASID (preemption point
``switch_mm_irqs_off:tlb_gen_read``), loads CR3 (preemption point
``switch_mm_irqs_off:cr3_loaded``), and only then writes ``loaded_mm = next``.
IRQs are off throughout, so an IPI sent meanwhile is taken after the switch.
``should_flush_tlb()`` must IPI a CPU in that window: its ASID may have been
chosen without a flush from a ``tlb_gen`` read before the flush's increment.

MODEL: sequentially consistent memory (no store buffer: the ordering that
83b0177a6c48 fixed, the ``loaded_mm`` store against the ``tlb_gen`` load, is
not modelled; a TSO option is for later); no PTI (no user PCIDs); the
``mm_cpumask`` trim is a choice, not a clock; the switch is atomic where the
kernel runs it in an interrupt handler (``flush_tlb_func()``'s lazy branch,
Xen's ``drop_mm_ref_this_cpu()``) and at boot; no hardware walk happens inside
the window (speculative walks are operations of the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

from .cpu import (
    TLB_NR_DYN_ASIDS,
    Cpu,
    Mm,
    Step,
    local_irq_disable,
    local_irq_enable,
    preempt_disable,
    preempt_enable,
)
from .pgtable import PAGE_SHIFT
from .tlb import flush_all, hw_load_context, invalidate_range

TLB_FLUSH_ALL = -1
tlb_single_page_flush_ceiling = 33

#: cpu_tlbstate.loaded_mm while switch_mm_irqs_off() changes CR3
#: (``#define LOADED_MM_SWITCHING ((struct mm_struct *)1UL)``)
LOADED_MM_SWITCHING = Mm(-2, None)


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
    trim_cpumask: bool = False


def init_flush_tlb_info(cpu: Cpu, mm: Mm, start: int, end: int, stride_shift: int,
                        freed_tables: bool, new_tlb_gen: int) -> FlushTlbInfo:
    if end != TLB_FLUSH_ALL and (end - start) >> stride_shift > tlb_single_page_flush_ceiling:
        start, end = 0, TLB_FLUSH_ALL
    m = cpu.m
    m.flush_seq += 1
    return FlushTlbInfo(mm, start, end, stride_shift, freed_tables, new_tlb_gen, cpu.id, m.flush_seq)


def cpu_flush_mask(cpu: Cpu, mask: int) -> tuple[int, ...]:
    return tuple(c for c in range(cpu.m.ncpus) if (mask >> c) & 1)


def should_trim_cpumask(cpu: Cpu, mm: Mm) -> bool:
    """arch/x86/mm/tlb.c: should_trim_cpumask(): once a second
    (``time_after(jiffies, mm->context.next_trim_cpumask)``).  MODEL: whether
    the second is up is the ``tlb.trim_cpumask`` choice."""
    return cpu.m.choices.flip("tlb.trim_cpumask")


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
        info.trim_cpumask = should_trim_cpumask(cpu, mm)
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


def flush_tlb_range(cpu: Cpu, vma, start: int, end: int) -> Step:
    """arch/x86/include/asm/tlbflush.h: flush_tlb_range(), through the
    platform's ``flush_tlb_range`` hook (default :func:`x86_flush_tlb_range`)."""
    yield from cpu.m.P.flush_tlb_range(cpu, vma.mm, start, end)


def x86_flush_tlb_range(cpu: Cpu, mm: Mm, start: int, end: int) -> Step:
    """arch/x86/include/asm/tlbflush.h: flush_tlb_range() for a non-hugetlb
    VMA: ``flush_tlb_mm_range(mm, start, end, PAGE_SHIFT, true)``.
    ``freed_tables`` is true since 3ef938c35035 ("x86/mm: Fix flush_tlb_range()
    when used for zapping normal PMDs", Jann Horn, Jan 2025, v6.14): its
    callers clear or move PMDs that point at tables (pmdp_collapse_flush(),
    mremap's move_normal_pmd()), so the paging-structure caches must go too,
    lazy-TLB CPUs included.  x86 has no flush_pmd_tlb_range() of its own:
    include/linux/pgtable.h makes it this.  The default of the platform's
    ``flush_tlb_range`` hook."""
    yield from flush_tlb_mm_range(cpu, mm, start, end, PAGE_SHIFT, True)


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


def is_global_asid(asid: int) -> bool:
    """arch/x86/include/asm/tlbflush.h: is_global_asid(): global ASIDs
    (INVLPGB) are numbered from TLB_NR_DYN_ASIDS up."""
    return asid >= TLB_NR_DYN_ASIDS


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
    asid = cpu.loaded_mm_asid
    # Broadcast ASIDs are always kept up to date with INVLPGB.
    if is_global_asid(asid):
        return
    if cpu.is_lazy:
        # lazy: flush paging-structure caches by switching to init_mm
        switch_mm_irqs_off_now(cpu, m.init_mm, "flush_tlb_func: lazy")
        return
    ctx = cpu.ctxs[asid]
    local_tlb_gen = ctx[1]
    if f.new_tlb_gen <= local_tlb_gen:
        return
    mm_tlb_gen = loaded.tlb_gen
    if local_tlb_gen == mm_tlb_gen:
        return
    why = f"flush {f.id}"
    if f.end != TLB_FLUSH_ALL and f.new_tlb_gen == local_tlb_gen + 1 and f.new_tlb_gen == mm_tlb_gen:
        # flush_tlb_one_user() per stride: INVLPG in the current PCID
        invalidate_range(cpu.id, h, cpu.tlb, cpu.psc, f.start, f.end, f.stride_shift, why,
                         all_psc=m.invlpg_all_psc)
    else:
        # flush_tlb_local(): a CR3 reload of the current PCID
        flush_all(cpu.id, h, cpu.tlb, cpu.psc, why)
    ctx[1] = mm_tlb_gen


def choose_new_asid(cpu: Cpu, next_mm: Mm, next_tlb_gen: int) -> tuple[int, bool]:
    """arch/x86/mm/tlb.c: choose_new_asid(): (the ASID to load, need_flush).
    The platforms' default ``choose_new_asid`` hook (INVLPGB's global ASIDs
    are the broadcast platform's)."""
    if not cpu.m.pcid:
        return 0, True
    ctxs = cpu.ctxs
    for asid in range(TLB_NR_DYN_ASIDS):
        ctx = ctxs[asid]
        if ctx[0] is not next_mm:
            continue
        return asid, ctx[1] < next_tlb_gen
    # We don't currently own an ASID slot on this CPU.  Allocate a slot.
    asid = cpu.next_asid
    cpu.next_asid += 1
    if asid >= TLB_NR_DYN_ASIDS:
        asid = 0
        cpu.next_asid = 1
    return asid, True


def switch_mm_irqs_off(cpu: Cpu, next_mm: Mm, why: str = "switch_mm") -> Step:
    """arch/x86/mm/tlb.c: switch_mm_irqs_off(), as steps (module docstring).
    The platforms' default ``switch_mm_irqs_off`` hook."""
    m = cpu.m
    P = m.P
    prev = cpu.loaded_mm
    prev_asid = cpu.loaded_mm_asid
    was_lazy = cpu.is_lazy
    if was_lazy:
        cpu.is_lazy = False
    if prev is next_mm:
        # Broadcast TLB invalidation keeps this ASID up to date all the time.
        if is_global_asid(prev_asid):
            if was_lazy:
                m.h.emit(cpu.id, "switch_mm", mm=next_mm.id, lazy=False, why=why, flush=False)
            return
        # switching between threads of one process: no TLB flush required
        if not was_lazy:
            return
        # lazy -> non-lazy in the same mm: catch up if tlb_gen moved
        next_tlb_gen = next_mm.tlb_gen
        if cpu.ctxs[prev_asid][1] == next_tlb_gen:
            m.h.emit(cpu.id, "switch_mm", mm=next_mm.id, lazy=False, why=why, flush=False)
            return
        asid, need_flush = prev_asid, True
    else:
        # Indicate that CR3 is about to change (nmi_uaccess_okay() and
        # should_flush_tlb() look at this window)
        cpu.loaded_mm = LOADED_MM_SWITCHING
        # make sure this CPU is in mm_cpumask() so that it gets flush IPIs
        if next_mm is not m.init_mm and not (next_mm.cpumask >> cpu.id) & 1:
            next_mm.cpumask |= 1 << cpu.id
        next_tlb_gen = next_mm.tlb_gen
        asid, need_flush = P.choose_new_asid(cpu, next_mm, next_tlb_gen)
        yield "switch_mm_irqs_off:tlb_gen_read"
    # reload_tlb:
    if need_flush:
        cpu.ctxs[asid] = [next_mm, next_tlb_gen]
    P.load_cr3(cpu, next_mm, asid, need_flush)
    if prev is not next_mm:
        yield "switch_mm_irqs_off:cr3_loaded"
    # Make sure we write CR3 before loaded_mm.
    cpu.loaded_mm = next_mm
    cpu.loaded_mm_asid = asid
    m.h.emit(cpu.id, "switch_mm", mm=next_mm.id, lazy=False, why=why, flush=need_flush)


def switch_mm_irqs_off_now(cpu: Cpu, next_mm: Mm, why: str) -> None:
    """switch_mm_irqs_off() run to completion without a preemption point:
    ``leave_mm()`` from an interrupt handler, and the boot switch.  MODEL: an
    interrupt handler's steps are atomic."""
    for _ in switch_mm_irqs_off(cpu, next_mm, why):
        pass


def enter_lazy_tlb(cpu: Cpu) -> None:
    """arch/x86/include/asm/tlbflush.h: enter_lazy_tlb(): keep the user mm
    loaded (CR3 unchanged); the hardware may still walk it speculatively."""
    mm = cpu.loaded_mm
    if mm is cpu.m.init_mm:
        return
    assert mm is not None  # (None only before boot)
    cpu.is_lazy = True
    cpu.m.h.emit(cpu.id, "switch_mm", mm=mm.id, lazy=True, why="enter_lazy_tlb",
                 flush=False)


def native_load_cr3(cpu: Cpu, mm: Mm, asid: int, need_flush: bool) -> None:
    """load_new_mm_cr3() on bare metal: ``build_cr3()`` (flushing the ASID)
    or ``build_cr3_noflush()``; the CR3 write takes effect at once."""
    set_hw_cr3(cpu, mm, asid, need_flush)


def set_hw_cr3(cpu: Cpu, mm: Mm, asid: int = 0, flush: bool = True) -> None:
    """The CR3 the hardware walker uses changes; ``asid`` tags what it caches
    from now on, and ``flush`` drops that ASID's entries first (without
    PCIDs: always ASID 0, always flushed)."""
    if mm.pgd is None:
        pfn, gen = 0, 0
    else:
        pfn, gen = mm.pgd.pfn, mm.pgd_gen
    hw_load_context(cpu, pfn, gen, mm.id, asid, flush, f"cr3 <- {mm.name}")
