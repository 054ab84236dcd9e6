"""Planted bug: a Xen PV guest whose ``pv_ops.mmu.tlb_remove_table`` is the
native one, so page-table pages go into the mmu_gather page batch and are
freed right after the flush, as on bare metal.

Kernel: 48a8b97cfd80 "x86/mm: Only use tlb_remove_table() for paravirt"
(v4.19, part of the 2018 'tlb-fixes' merge 706a1ea65e6f) set
``pv_ops.mmu.tlb_remove_table = tlb_remove_table`` for Xen PV; this mutant is
that assignment missing, i.e. 9e52fc2b50de "x86/mm: Enable RCU based page
table freeing (CONFIG_HAVE_RCU_TABLE_FREE=y)" reverted, which is the 2012
report of seed S0: ``xen_flush_tlb_multi()`` is a hypercall that does not
interrupt the other vCPUs, so an IRQ-off GUP-fast walker is not held off and
reads a freed (and reused) PTE table.

Built from the correct semi-RCU strategy; only the table hand-off differs.
"""

from pathlib import Path

from impls.machine.kernel import tlb_remove_page
from impls.machine.plugin import load_module_file
from impls.xen_semi_rcu import mmu_gather as correct

NAME = "xen-native-tlb-remove-table"
PLANTED = {"env": "xen-pv", "kind": "strategy", "check": "table-uaf"}


def tlb_remove_table(tlb, table):
    """BUG: native_tlb_remove_table(): pagetable_dtor(); tlb_remove_page()."""
    yield from tlb_remove_page(tlb, table)


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
