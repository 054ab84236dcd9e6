"""The kernel API a strategy may use: everything a table-freeing scheme needs
from the rest of the kernel, under the kernel's names.  Built-in strategies
and user strategy files import from here (or from the module named after the
kernel file); see docs/writing-a-strategy.md.

Blocking calls (``flush_tlb_mm_range``, ``smp_call_function``,
``synchronize_rcu``, ``tlb_flush_mmu_tlbonly``...) are generators: use them with
``yield from`` inside a generator hook.
"""

from __future__ import annotations

from .cpu import Cpu, local_irq_restore, local_irq_save, rcu_read_lock, rcu_read_unlock
from .mmu_gather import (
    MAX_GATHER_BATCH,
    MMU_GATHER_BUNDLE,
    MmuGather,
    __tlb_adjust_range,
    __tlb_remove_page_size,
    __tlb_reset_range,
    pagetable_free,
    tlb_batch_pages_flush,
    tlb_finish_mmu,
    tlb_flush,
    tlb_flush_mmu_tlbonly,
    tlb_flush_p4d_range,
    tlb_flush_pmd_range,
    tlb_flush_pte_range,
    tlb_flush_pud_range,
    tlb_get_unmap_shift,
    tlb_needs_table_invalidate,
    tlb_remove_page,
    tlb_tables_changed,
)
from .page_alloc import Frame
from .paravirt import paravirt_release_pmd, paravirt_release_pte, paravirt_release_pud
from .pgtable import PAGE_SIZE, PMD_SIZE, PUD_SIZE
from .rcu import call_rcu, rcu_barrier, synchronize_rcu
from .smp import on_each_cpu_mask, smp_call_function, smp_call_function_many
from .tlbflush import TLB_FLUSH_ALL, flush_tlb_mm_range

#: sizeof(struct mmu_table_batch) header is an rcu_head + nr: (4096 - 24) / 8
MAX_TABLE_BATCH = 509


def gfp_nowait_fails(tlb: MmuGather, what: str) -> bool:
    """Ask the choice source whether a ``__get_free_page(GFP_NOWAIT)`` for
    ``what`` fails (label ``alloc_fails:<what>``); records the failure."""
    if tlb.m.choices.flip(f"alloc_fails:{what}"):
        tlb.m.h.emit(tlb.cpu.id, "alloc_fail", what=what)
        return True
    return False


def trace(cpu: Cpu, text: str) -> None:
    """A note in the history (shown in race diagrams)."""
    cpu.m.h.emit(cpu.id, "note", text=text)


def flush_implies_ipi_broadcast(cpu: Cpu) -> bool:
    """Whether the platform's flush is a synchronous IPI to every target, the
    question ``tlb_table_flush_implies_ipi_broadcast()`` asks (2026)."""
    return bool(cpu.m.P.meta.get("implies_ipi_broadcast"))


__all__ = [
    "Cpu", "Frame", "MmuGather", "MAX_GATHER_BATCH", "MAX_TABLE_BATCH", "MMU_GATHER_BUNDLE",
    "PAGE_SIZE", "PMD_SIZE", "PUD_SIZE", "TLB_FLUSH_ALL", "__tlb_adjust_range",
    "__tlb_remove_page_size", "__tlb_reset_range", "call_rcu", "flush_implies_ipi_broadcast",
    "flush_tlb_mm_range", "gfp_nowait_fails", "local_irq_restore", "local_irq_save",
    "on_each_cpu_mask", "pagetable_free", "paravirt_release_pmd", "paravirt_release_pte",
    "paravirt_release_pud", "rcu_barrier", "rcu_read_lock", "rcu_read_unlock",
    "smp_call_function", "smp_call_function_many", "synchronize_rcu", "tlb_batch_pages_flush",
    "tlb_finish_mmu", "tlb_flush", "tlb_flush_mmu_tlbonly", "tlb_flush_p4d_range",
    "tlb_flush_pmd_range", "tlb_flush_pte_range", "tlb_flush_pud_range", "tlb_get_unmap_shift",
    "tlb_needs_table_invalidate", "tlb_remove_page", "tlb_tables_changed", "trace",
]
