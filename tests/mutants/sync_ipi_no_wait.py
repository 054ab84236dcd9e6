"""Planted bug: ``tlb_remove_table_sync_one()`` sends its IPI without waiting
for it: ``smp_call_function(tlb_remove_table_smp_sync, NULL, 0)``.

Kernel: mm/mmu_gather.c has always waited (``..., NULL, 1)``, since the
generic RCU table freeing of 267239116987, v3.0): the point of the empty IPI
is that the sender cannot go on before every CPU has taken it, which an
IRQ-off walker does only when it is done with the table ("It is however
sufficient for software page-table walkers that rely on IRQ disabling").
Without the wait, the THP collapse (2ba99c5e0881) goes on to reuse, deposit
and later ``pte_free()`` the old PTE table while GUP-fast on a hypercall-flush
platform still walks it; the single-table fallback frees it at once.

Built from the correct semi-RCU strategy: only ``tlb_remove_table_sync_one``
differs.
"""

from pathlib import Path

from impls.machine.kernel import smp_call_function
from impls.machine.plugin import load_module_file
from impls.xen_semi_rcu import mmu_gather as correct

NAME = "sync-ipi-no-wait"
PLANTED = {"env": "xen-pv+thp", "kind": "strategy", "check": "table-uaf"}


def tlb_remove_table_sync_one(cpu):
    """mm/mmu_gather.c: tlb_remove_table_sync_one()."""
    yield from smp_call_function(cpu, correct.tlb_remove_table_smp_sync, None,
                                 False,  # BUG: wait=0
                                 "tlb_remove_table_sync_one")


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
