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
  ``switch_mm_irqs_off(cpu, next, why)``: load ``next`` on this CPU (generator;
  default: x86's, with PCIDs, ``LOADED_MM_SWITCHING`` and ``tlb_gen``).
  ``choose_new_asid(cpu, next, next_tlb_gen) -> (asid, need_flush)``: which
  ASID x86's switch loads (default: the per-CPU dynamic ASIDs).
  ``load_cr3(cpu, mm, asid, need_flush)``: the CR3 write of a switch (default:
  immediate; flushes the ASID if ``need_flush``).
  ``flush_tlb_range(cpu, mm, start, end)``: the arch flush_tlb_range() that
  pmdp_collapse_flush(), pmdp_invalidate() and mremap call (default: x86 v6.15,
  ``flush_tlb_mm_range(..., PAGE_SHIFT, freed_tables=true)``).
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
``tlb_table_flush_implies_ipi_broadcast()`` asks); ``OPTIONS`` (the
platform's options: ``{name: (default, (allowed values...), doc)}``, chosen per
program with ``env.options``; x86 code reads ``pcid`` (``on``/``off``, default
off) and ``invlpg`` (``amd-tce``/``intel``)).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from .mmu_gather import x86_tlb_flush
from .plugin import Hook, Ops, PluginError, build_ops, load_module_file
from .tlbflush import choose_new_asid, native_load_cr3, switch_mm_irqs_off, x86_flush_tlb_range


def generic_tlb_needs_table_invalidate() -> bool:
    """include/asm-generic/tlb.h: ``#define tlb_needs_table_invalidate() (true)``."""
    return True


HOOKS = [
    Hook("flush_tlb_multi", True, True, None, "run flush_tlb_func() on the CPUs of a mask"),
    Hook("mm_global_asid", False, False, None, "does this mm use broadcast flushes"),
    Hook("broadcast_tlb_flush", False, True, None, "a broadcast flush"),
    Hook("switch_mm_irqs_off", False, True, switch_mm_irqs_off, "load another mm on this CPU"),
    Hook("choose_new_asid", False, False, choose_new_asid, "the ASID a switch loads, and whether to flush it"),
    Hook("load_cr3", False, False, native_load_cr3, "the CR3 write of a switch"),
    Hook("flush_tlb_range", False, True, x86_flush_tlb_range, "flush_tlb_range() (THP collapse and split, mremap)"),
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
    ops.meta["options"] = _options(ops, getattr(module, "OPTIONS", {}))
    return ops


def _options(ops: Ops, raw: Any) -> dict[str, tuple[str, tuple[str, ...], str]]:
    if not isinstance(raw, dict):
        raise PluginError(f"{ops.source}: OPTIONS must be a dict {{name: (default, (values...), doc)}}")
    out = {}
    for name, spec in raw.items():
        ok = (isinstance(name, str) and isinstance(spec, tuple) and len(spec) == 3
              and isinstance(spec[0], str) and isinstance(spec[1], tuple)
              and all(isinstance(v, str) for v in spec[1]) and spec[0] in spec[1])
        if not ok:
            raise PluginError(f"{ops.source}: OPTIONS[{name!r}] must be (default, (allowed values...), "
                              "doc) with the default among the values")
        out[name] = spec
    return out


def platform_options(platform: Ops, env: Any) -> dict[str, str]:
    """The options a run uses: the platform's defaults, then the program's
    ``env.options``.  An option the platform does not declare, or a value it
    does not allow, is refused (``ValueError``)."""
    declared = platform.meta.get("options", {})
    got = {name: spec[0] for name, spec in declared.items()}
    for name, value in getattr(env, "options", ()):
        spec = declared.get(name)
        if spec is None:
            known = ", ".join(sorted(declared)) or "none"
            raise ValueError(f"platform {platform.name!r} has no option {name!r} (its options: {known})")
        if value not in spec[1]:
            raise ValueError(f"platform {platform.name!r}: option {name} must be one of "
                             f"{', '.join(spec[1])}, not {value!r}")
        got[name] = value
    return got


def load_platform_file(path: str | Path) -> Ops:
    return load_platform_module(load_module_file(path, "platform"), str(path))
