"""Planted bug: ``free_pgtables()`` unlinks a zapped VM_PFNMAP VMA from its
file's rmap before the TLB flush for it: ``tlb_free_vmas()`` does nothing.

Kernel: b67fbebd4cf9 "mmu_gather: Force tlb-flush VM_PFNMAP vmas" (Peter
Zijlstra, 2022; CVE-2022-39188, reported by Jann Horn): "there is a race
between munmap() and unmap_mapping_range(), where unmap_mapping_range() will
no-op once unmap_vmas() has unlinked the VMA; however munmap() will not yet
have invalidated the TLBs".  x86 selects MMU_GATHER_MERGE_VMAS, so
tlb_end_vma() flushes nothing and the gather's flush comes at
tlb_finish_mmu(), after free_pgtables() has taken the VMA out of the rmap; a
driver revoking its frames finds no VMA, returns, and releases frames a CPU
still translates to.  The fix forced a flush at the end of such a VMA; Roman
Gushchin's "mmu_gather: move tlb flush for VM_PFNMAP/VM_MIXEDMAP vmas into
free_pgtables()" (2025) moved it to tlb_free_vmas().  This is the
MMU_GATHER_MERGE_VMAS kernel before the fix.

Built from the correct full-RCU strategy.
"""

from pathlib import Path

from impls.machine.plugin import load_module_file
from impls.pt_reclaim import mmu_gather as correct

NAME = "pfnmap-unlinked-before-flush"
PLANTED = {"env": "native+file", "kind": "strategy", "check": "ordering"}


def tlb_free_vmas(tlb):
    """include/asm-generic/tlb.h: tlb_free_vmas() without the VM_PFNMAP flush."""
    return  # BUG: no "if (tlb->vma_pfn) tlb_flush_mmu_tlbonly(tlb);"
    yield  # noqa: B901 (a generator hook)


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
