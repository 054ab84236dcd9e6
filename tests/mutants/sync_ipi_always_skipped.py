"""Planted bug: the single-table fallback skips ``tlb_remove_table_sync_one()``
on every platform, as if every TLB flush were an IPI broadcast that GUP-fast
must acknowledge.

Kernel: Lance Yang, "[PATCH v7 1/2] mm/mmu_gather: prepare to skip redundant
sync IPIs" (Mar 2026; the series began as
https://lore.kernel.org/linux-mm/20251213080038.10917-1-lance.yang@linux.dev/,
the x86 part is in the mm tree) lets ``tlb_remove_table_sync_one()``
return early when ``tlb_table_flush_implies_ipi_broadcast()``: true only for
``native_flush_tlb_multi()`` without INVLPGB ("PV backends (KVM, Xen, Hyper-V)
... cannot be trusted to provide the IPI guarantees we need. They keep the
property false").  This mutant answers true everywhere: on Xen PV the
preceding flush is a hypercall, nothing waited for the IRQ-off GUP-fast
walker, and the table is freed under it.  (docs/examples/skip_sync_ipi.py is
the correct version.)

Built from the correct semi-RCU strategy.
"""

from pathlib import Path

from impls.machine.plugin import load_module_file
from impls.xen_semi_rcu import mmu_gather as correct

NAME = "sync-ipi-always-skipped"
PLANTED = {"env": "xen-pv+batch-fail", "kind": "strategy", "check": "table-uaf"}


def tlb_remove_table_sync_one(cpu):
    """mm/mmu_gather.c: tlb_remove_table_sync_one()."""
    return  # BUG: tlb_table_flush_implies_ipi_broadcast() taken to be always true
    yield  # noqa: B901 (a generator hook)


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
