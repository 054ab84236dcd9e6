"""The strategy protocol: how page-table pages are freed.

A strategy is one module: the kernel's mm/mmu_gather.c and the arch
``___p?d_free_tlb()`` with one configuration's ``#ifdef``s resolved.  The
machine (generic mm code: zap, free_pgtables, PT_RECLAIM, faults) calls only
these hooks, always through the strategy:

required
  ``pte_free_tlb(tlb, pte, addr)``, ``pmd_free_tlb(tlb, pmd, addr)``,
  ``pud_free_tlb(tlb, pud, addr)``: the asm-generic wrappers plus the arch
  part: record the flush range, set ``freed_tables``, ``paravirt_release_*()``,
  and queue the table for freeing.  Called after the parent entry was cleared.
  ``tlb_flush_mmu(tlb)``: flush the TLB for what was gathered, then free what
  was queued (in the kernel's order).

optional (the machine's generic version is used when absent)
  ``tlb_gather_mmu(tlb)``: initialise the strategy's part of the gather.
  ``__tlb_remove_page_size(tlb, page, page_size) -> bool``: queue a data page;
  True means "batch full, flush now".
  ``tlb_flush_mmu_tlbonly(tlb)``, ``tlb_finish_mmu(tlb)``.
  ``__tlb_remove_folio_pages(tlb, page, nr) -> bool``: queue ``nr`` pages of
  one large folio (a zapped PTE batch of a split THP).
  ``gup_fast(cpu, mm, addr, write) -> page | None``: the lockless walker, for a
  scheme that changes how GUP-fast protects itself.
  ``tlb_free_vmas(tlb)``: the first thing ``free_pgtables()`` does: flush if
  a VM_PFNMAP/VM_MIXEDMAP VMA was zapped (``tlb.vma_pfn``) and the flush is
  still pending, before any VMA leaves the rmap.
  ``tlb_remove_table_sync_one(cpu)``: wait for every concurrent IRQ-off walker
  (GUP-fast) with an IPI to all other CPUs; generic code calls it where a
  table is about to be modified or reused without a grace period (hugetlb's
  ``tlb_flush_unshared_tables()``, THP's ``collapse_huge_page()`` after
  ``pmdp_collapse_flush()``; the kernel's default is the IPI, and a
  configuration without RCU table freeing has an empty one).
  ``tlb_unshare_pmd_ptdesc(tlb, table, addr)``: hugetlb's huge_pmd_unshare()
  cleared a PUD entry pointing at a shared PMD table: drop its share count,
  add the PUD range to the gather, set ``tlb.unshared_tables`` (and
  ``fully_unshared_tables`` when no other sharer is left).  Plain.
  ``tlb_flush_unshared_tables(tlb)``: before ``i_mmap_rwsem`` is dropped,
  flush the unsharer's TLBs if ``unshared_tables``, and after a full unshare
  wait for GUP-fast (``tlb_remove_table_sync_one()``).
  ``pte_free(cpu, mm, table)``: free a PTE table at once, no flush, no RCU
  (include/asm-generic/pgalloc.h): zap_deposited_table() frees the table a
  huge PMD had deposited through it.  Plain (called under the PMD lock).
Module attributes: ``NAME`` (required), ``SAFE_ON`` (environment names the
strategy claims to be safe on; ``make fuzz`` holds it to that), ``KERNEL`` (the
kernel version/config it follows).  Hooks that block (flushes, IPIs,
``synchronize_rcu()``) are generator functions used with ``yield from``; a plain
function is accepted where nothing blocks.  See docs/writing-a-strategy.md.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from . import gup, mmu_gather
from .plugin import Hook, Ops, PluginError, build_ops, load_module_file

HOOKS = [
    Hook("pte_free_tlb", True, True, None, "queue a PTE table for freeing after the flush"),
    Hook("pmd_free_tlb", True, True, None, "queue a PMD table for freeing after the flush"),
    Hook("pud_free_tlb", True, True, None, "queue a PUD table for freeing after the flush"),
    Hook("tlb_flush_mmu", True, True, None, "flush the TLB, then free what was queued"),
    Hook("tlb_gather_mmu", False, False, None, "initialise the strategy's part of the gather"),
    Hook("__tlb_remove_page_size", False, True, mmu_gather.__tlb_remove_page_size,
         "queue a data page"),
    Hook("tlb_flush_mmu_tlbonly", False, True, mmu_gather.tlb_flush_mmu_tlbonly,
         "flush the TLB for what was gathered"),
    Hook("tlb_finish_mmu", False, True, mmu_gather.tlb_finish_mmu, "the final flush and free"),
    Hook("__tlb_remove_folio_pages", False, True, mmu_gather.__tlb_remove_folio_pages,
         "queue several pages of one large folio"),
    Hook("gup_fast", False, True, gup.gup_fast, "the GUP-fast lockless walker"),
    Hook("tlb_remove_table_sync_one", False, True, mmu_gather.tlb_remove_table_sync_one,
         "wait for concurrent GUP-fast walkers (an IPI to every other CPU)"),
    Hook("tlb_free_vmas", False, True, mmu_gather.tlb_free_vmas,
         "the flush a zapped VM_PFNMAP VMA needs before free_pgtables() unlinks VMAs"),
    Hook("tlb_unshare_pmd_ptdesc", False, False, mmu_gather.tlb_unshare_pmd_ptdesc,
         "record an unshared hugetlb PMD table in the gather (share count, range, flags)"),
    Hook("tlb_flush_unshared_tables", False, True, mmu_gather.tlb_flush_unshared_tables,
         "flush for unshared tables, and sync GUP-fast after a full unshare, before i_mmap_rwsem is dropped"),
    Hook("pte_free", False, False, mmu_gather.pte_free,
         "free a PTE table at once (zap_deposited_table())"),
]
HOOK_NAMES = tuple(h.name for h in HOOKS)
#: kernel functions a strategy defines under their own names that are close to
#: a hook's name but are not hooks (mm/mmu_gather.c's single-table fallback)
NOT_HOOKS = frozenset({"tlb_remove_table_one", "__tlb_remove_table_one"})


def load_strategy_module(module: ModuleType, source: str | None = None) -> Ops:
    ops = build_ops("strategy", module, HOOKS, source or module.__name__, NOT_HOOKS)
    safe_on = getattr(module, "SAFE_ON", ())
    if isinstance(safe_on, str) or not all(isinstance(s, str) for s in safe_on):
        raise PluginError(f"{ops.source}: SAFE_ON must be a tuple of environment names")
    ops.meta["safe_on"] = tuple(safe_on)
    ops.meta["kernel"] = str(getattr(module, "KERNEL", ""))
    return ops


def load_strategy_file(path: str | Path) -> Ops:
    return load_strategy_module(load_module_file(path, "strategy"), str(path))
