"""The platform protocol: the flush mechanism and the hypervisor hooks
(``pv_ops.mmu`` and friends) a run uses.

required
  ``flush_tlb_multi(cpu, cpumask, info)``: invalidate ``info``'s range on the
  CPUs of ``cpumask`` (``pv_ops.mmu.flush_tlb_multi``).  The machine's
  ``flush_tlb_func(target, info)`` is what a target runs; a platform decides
  how it gets run: an IPI the target must take with IRQs on (native), a
  hypercall that runs it on the target's behalf at once (Xen), hardware that
  does it without interrupting (RAR), ...

optional
  ``mm_global_asid(mm) -> bool`` and ``broadcast_tlb_flush(cpu, info)``: a
  broadcast flush (INVLPGB/TLBI) used for every flush of such an mm.
  ``load_cr3(cpu, mm)``: the CR3 write of a switch (default: immediate, flushes).
  ``set_pxd(cpu, ptr, val, why)``: write an upper-level entry
  (``set_pmd``/``set_pud``/``set_p4d``; default: a plain store).
  ``alloc_pte/alloc_pmd/alloc_pud(cpu, mm, frame)``,
  ``release_pte/release_pmd/release_pud(cpu, frame)``: page-table page hooks.
  ``enter_lazy_mmu(cpu)``, ``leave_lazy_mmu(cpu)``: ``pv_ops.mmu.lazy_mode``.
  ``start_context_switch(cpu)``, ``end_context_switch(cpu)``.
  ``enter_mmap(cpu, mm)``: a new mm starts being used (Xen pins it).
  ``exit_mmap(cpu, mm)``: ``arch_exit_mmap()`` (generator).
  ``pgd_free(cpu, mm)``: the mm's pgd is about to be freed.
  ``tlb_flush(tlb)``: the arch ``tlb_flush()``: how the gather's range and
  flags (``freed_tables``, ``cleared_*``, ``unshared_tables``) become
  invalidations (default: x86's, ``flush_tlb_mm_range()``).
  ``tlb_needs_table_invalidate()``: must a table be invalidated before its RCU
  free (default: true)?
  ``init(machine)``: per-machine state; ``on_step(cpu)``: hardware effects
  between two steps of a CPU; ``pending(machine) -> bool`` and
  ``quiesce(machine)``: work the platform still has in flight.

Module attributes: ``NAME`` (required); ``IMPLIES_IPI_BROADCAST`` (True if
``flush_tlb_multi`` is a synchronous IPI every target must take, what
``tlb_table_flush_implies_ipi_broadcast()`` asks).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from .mmu_gather import x86_tlb_flush
from .plugin import Hook, Ops, PluginError, build_ops, load_module_file
from .tlbflush import native_load_cr3


def generic_tlb_needs_table_invalidate() -> bool:
    """include/asm-generic/tlb.h: ``#define tlb_needs_table_invalidate() (true)``."""
    return True


HOOKS = [
    Hook("flush_tlb_multi", True, True, None, "run flush_tlb_func() on the CPUs of a mask"),
    Hook("mm_global_asid", False, False, None, "does this mm use broadcast flushes"),
    Hook("broadcast_tlb_flush", False, True, None, "a broadcast flush"),
    Hook("load_cr3", False, False, native_load_cr3, "the CR3 write of a switch"),
    Hook("set_pxd", False, False, None, "write an upper-level entry"),
    Hook("alloc_pte", False, False, None, "paravirt_alloc_pte()"),
    Hook("alloc_pmd", False, False, None, "paravirt_alloc_pmd()"),
    Hook("alloc_pud", False, False, None, "paravirt_alloc_pud()"),
    Hook("release_pte", False, False, None, "paravirt_release_pte()"),
    Hook("release_pmd", False, False, None, "paravirt_release_pmd()"),
    Hook("release_pud", False, False, None, "paravirt_release_pud()"),
    Hook("enter_lazy_mmu", False, False, None, "arch_enter_lazy_mmu_mode()"),
    Hook("leave_lazy_mmu", False, False, None, "arch_leave_lazy_mmu_mode()"),
    Hook("start_context_switch", False, False, None, "paravirt_start_context_switch()"),
    Hook("end_context_switch", False, False, None, "paravirt_end_context_switch()"),
    Hook("enter_mmap", False, False, None, "a new mm starts being used"),
    Hook("exit_mmap", False, True, None, "arch_exit_mmap()"),
    Hook("pgd_free", False, False, None, "paravirt_pgd_free()"),
    Hook("tlb_flush", False, True, x86_tlb_flush, "the arch tlb_flush(): gather flags -> invalidations"),
    Hook("tlb_needs_table_invalidate", False, False, generic_tlb_needs_table_invalidate,
         "must a table be invalidated before its RCU free"),
    Hook("init", False, False, None, "per-machine platform state"),
    Hook("on_step", False, False, None, "hardware effects between steps of a CPU"),
    Hook("pending", False, False, None, "work still in flight"),
    Hook("quiesce", False, False, None, "finish work in flight at the end"),
]


def load_platform_module(module: ModuleType, source: str | None = None) -> Ops:
    ops = build_ops("platform", module, HOOKS, source or module.__name__)
    if (ops.mm_global_asid is None) != (ops.broadcast_tlb_flush is None):
        raise PluginError(f"{ops.source}: platform {ops.name!r} must define both mm_global_asid() and "
                          "broadcast_tlb_flush(), or neither")
    ops.meta["implies_ipi_broadcast"] = bool(getattr(module, "IMPLIES_IPI_BROADCAST", False))
    return ops


def load_platform_file(path: str | Path) -> Ops:
    return load_platform_module(load_module_file(path, "platform"), str(path))
