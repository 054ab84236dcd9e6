"""Planted bug: the skip-sync-IPI proposal with the wrong test: the sync IPI
of ``tlb_remove_table_sync_one()`` is skipped whenever the flush is the native
``pv_ops.mmu.flush_tlb_multi`` (not a paravirt guest), forgetting that with
INVLPGB the native flush broadcasts in hardware and interrupts nobody.

Kernel: Lance Yang, "[PATCH v7 1/2] mm/mmu_gather: prepare to skip redundant
sync IPIs" (Mar 2026; the series began as
https://lore.kernel.org/linux-mm/20251213080038.10917-1-lance.yang@linux.dev/)
enables ``tlb_table_flush_implies_ipi_broadcast()`` on x86 only when the flush
is ``native_flush_tlb_multi()`` *and* the CPU has no INVLPGB.  This mutant
drops the second half: on a bare-metal AMD machine with INVLPGB (the broadcast
platform) a THP collapse skips the IPI, nothing waits for an IRQ-off GUP-fast
walker of the collapsed table, and a later zap of the huge PMD frees the
deposited table under it.

Built from docs/examples/skip_sync_ipi.py: only
``tlb_table_flush_implies_ipi_broadcast()`` differs.
"""

from pathlib import Path

from impls.machine.plugin import load_module_file

_ROOT = Path(__file__).resolve().parents[2]
correct = load_module_file(_ROOT / "docs" / "examples" / "skip_sync_ipi.py", "helper")

NAME = "skip-sync-ipi-invlpgb"
PLANTED = {"env": "broadcast+thp", "kind": "strategy", "check": "table-uaf"}


def tlb_table_flush_implies_ipi_broadcast(cpu) -> bool:
    """arch/x86: static key set when pv_ops.mmu.flush_tlb_multi is
    native_flush_tlb_multi..."""
    return not cpu.m.P.name.startswith("xen")  # BUG: ... and !X86_FEATURE_INVLPGB forgotten


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
