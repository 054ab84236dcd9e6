"""powerpc Book3S-64 with the radix MMU: arch/powerpc/mm/book3s64/radix_tlb.c
``radix__tlb_flush()`` and ``__radix__flush_tlb_range_psize()``,
arch/powerpc/include/asm/book3s/64/tlbflush.h, read in the 2025 mainline tree;
``tlb_needs_table_invalidate()`` is ``radix_enabled()`` there
(arch/powerpc/include/asm/tlb.h, 0ed1325967ab).

* **The hardware walks the Linux tables** (unlike the hash MMU, where software
  fills a hash table and ``tlb_needs_table_invalidate()`` is false) and caches
  upper-level entries in a **page-walk cache (PWC)**.  Entries are tagged with
  the process ID (PID, the mm's ``context.id``), one per mm on every CPU: a
  context switch loads the PID register and flushes nothing, so a CPU keeps
  an mm's entries after it switches away.
* **Flushes are broadcast** ``tlbie`` instructions, completed by
  ``eieio; tlbsync; ptesync`` on the issuing CPU; no IPI, so an IRQ-off
  GUP-fast walker is not waited for (powerpc frees tables through RCU, its
  own ``HAVE_ARCH_TLB_REMOVE_TABLE``).
* **Which invalidation, from the gather** (``radix__tlb_flush()``): a fullmm
  gather flushes everything of the PID (``__flush_all_mm()``, RIC_FLUSH_ALL);
  otherwise ``tlb->freed_tables`` chooses between
  ``radix__flush_tlb_range_psize()`` (RIC_FLUSH_TLB: leaf entries of the
  range only, the PWC stays) and ``radix__flush_tlb_pwc_range_psize()``
  (``also_pwc``: the PID's whole PWC too); a range of more than
  ``tlb_single_page_flush_ceiling`` pages flushes the whole PID
  (``_tlbie_pid()``, RIC_FLUSH_ALL with ``also_pwc``, else RIC_FLUSH_TLB).

Uses the platform hooks ``tlb_flush``, ``tlb_needs_table_invalidate``,
``switch_mm_irqs_off``, plus ``mm_global_asid``/``broadcast_tlb_flush`` for
flushes a generic path asks of x86's ``flush_tlb_mm_range()``.

MODEL: radix only (the hash MMU would need a software-filled hash table);
every flush is the global ``tlbie`` path (no ``tlbiel`` for a thread-local mm,
no IPI-based ``tlbiel`` multicast, no H_RPT_INVALIDATE under a hypervisor);
``tlbie`` and its ``tlbsync`` complete in one step; 4 KiB pages only; a
PID is fixed per mm; no lazy-TLB shootdown (MMU_LAZY_TLB_SHOOTDOWN).
"""

from __future__ import annotations

from impls.machine.cpu import Cpu, Mm, Step
from impls.machine.pgtable import PAGE_SHIFT
from impls.machine.tlb import flush_all, hw_load_context
from impls.machine.tlbflush import TLB_FLUSH_ALL, FlushTlbInfo, mmu_notifier_arch_invalidate_secondary_tlbs

NAME = "powerpc-radix"
IMPLIES_IPI_BROADCAST = False

#: arch/powerpc/mm/book3s64/radix_tlb.c
tlb_single_page_flush_ceiling = 33
RIC_FLUSH_TLB, RIC_FLUSH_PWC, RIC_FLUSH_ALL = 0, 1, 2


def tlb_needs_table_invalidate() -> bool:
    """arch/powerpc/include/asm/tlb.h: ``radix_enabled()``: the radix MMU
    walks, and caches, the Linux tables."""
    return True


def pid_of(mm: Mm) -> int:
    """mm->context.id (MODEL: fixed per mm; 0 for init_mm)."""
    return 0 if mm.id < 0 else mm.id + 1


def switch_mm_irqs_off(cpu: Cpu, next_mm: Mm, why: str = "switch_mm") -> Step:
    """arch/powerpc/mm/mmu_context.c: switch_mm_irqs_off() -> switch_mmu_context()
    -> radix: ``mtspr(SPRN_PID, next->context.id)``: no flush."""
    m = cpu.m
    was_lazy = cpu.is_lazy
    cpu.is_lazy = False
    if cpu.loaded_mm is next_mm:
        if was_lazy:
            m.h.emit(cpu.id, "switch_mm", mm=next_mm.id, lazy=False, why=why, flush=False)
        return
    pfn, gen = (next_mm.pgd.pfn, next_mm.pgd_gen) if next_mm.pgd is not None else (0, 0)
    hw_load_context(cpu, pfn, gen, next_mm.id, pid_of(next_mm), False, f"PID <- {next_mm.name}")
    cpu.loaded_mm = next_mm
    cpu.loaded_mm_asid = pid_of(next_mm)
    m.h.emit(cpu.id, "switch_mm", mm=next_mm.id, lazy=False, why=why, flush=False)
    return
    yield  # pragma: no cover  (a generator hook)


def _tlbie(cpu: Cpu, mm: Mm, ric: int, start: int = 0, end: int = TLB_FLUSH_ALL) -> None:
    """``tlbie`` broadcast to every CPU, then ``eieio; tlbsync; ptesync``: on
    each CPU, the entries of the mm's PID: the leaf entries of [start, end)
    (or all of them), and with RIC_FLUSH_ALL / RIC_FLUSH_PWC its whole PWC."""
    m = cpu.m
    pid = pid_of(mm)
    m.h.emit(cpu.id, "tlbie", pid=pid, ric=ric, start=start, end=end)
    for c in m.cpus:
        ctx = c.asid_caches.get(pid)
        if ctx is None:
            continue
        tlb, psc = ctx
        why = f"tlbie ric={ric}"
        if end == TLB_FLUSH_ALL and ric == RIC_FLUSH_ALL:
            flush_all(c.id, m.h, tlb, psc, why, asid=pid)
            continue
        if ric in (RIC_FLUSH_ALL, RIC_FLUSH_PWC):
            psc.clear()
        if end == TLB_FLUSH_ALL:  # RIC_FLUSH_TLB of the whole PID: leaf entries only
            tlb.clear()
            m.h.emit(c.id, "tlb_inv_leaf_all", why=why, asid=pid)
            continue
        for addr in range(start, end, 1 << PAGE_SHIFT):
            tlb.pop(addr >> PAGE_SHIFT, None)
        m.h.emit(c.id, "tlb_inv", start=start, end=end, stride=PAGE_SHIFT,
                 psc="all" if ric != RIC_FLUSH_TLB else False, why=why, asid=pid)


def __radix__flush_tlb_range_psize(cpu: Cpu, mm: Mm, start: int, end: int, also_pwc: bool) -> None:
    """radix_tlb.c: __radix__flush_tlb_range_psize() (the global tlbie path)."""
    nr_pages = (end - start) >> PAGE_SHIFT
    if end == TLB_FLUSH_ALL or nr_pages > tlb_single_page_flush_ceiling:
        _tlbie(cpu, mm, RIC_FLUSH_ALL if also_pwc else RIC_FLUSH_TLB)
    else:
        # _tlbie_va_range(..., also_pwc): with also_pwc, a PWC flush of the PID first
        _tlbie(cpu, mm, RIC_FLUSH_PWC if also_pwc else RIC_FLUSH_TLB, start, end)
    mmu_notifier_arch_invalidate_secondary_tlbs(cpu, mm, start, end)


def tlb_flush(tlb) -> Step:
    """radix_tlb.c: radix__tlb_flush()."""
    mm = tlb.mm
    if tlb.fullmm or tlb.need_flush_all:
        _tlbie(tlb.cpu, mm, RIC_FLUSH_ALL)  # __flush_all_mm(mm, true)
        mmu_notifier_arch_invalidate_secondary_tlbs(tlb.cpu, mm, 0, TLB_FLUSH_ALL)
    elif not tlb.freed_tables:
        __radix__flush_tlb_range_psize(tlb.cpu, mm, tlb.start, tlb.end, False)
    else:
        __radix__flush_tlb_range_psize(tlb.cpu, mm, tlb.start, tlb.end, True)
    return
    yield  # pragma: no cover


def mm_global_asid(mm: Mm) -> bool:
    """Every flush is a broadcast tlbie."""
    return True


def broadcast_tlb_flush(cpu: Cpu, info: FlushTlbInfo) -> Step:
    """radix__flush_tlb_range() for a generic path: the PWC too."""
    __radix__flush_tlb_range_psize(cpu, info.mm, info.start, info.end, True)
    return
    yield  # pragma: no cover


def flush_tlb_multi(cpu: Cpu, cpumask: int, info: FlushTlbInfo) -> Step:
    """Not used (every flush is a broadcast); kept for the protocol."""
    yield from broadcast_tlb_flush(cpu, info)
