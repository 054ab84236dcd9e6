"""Planted bug: the table batch is freed at once instead of after an RCU
grace period: ``tlb_remove_table_free()`` calls the RCU callback directly.

Kernel: the whole point of 267239116987 "mm, powerpc: move the RCU page-table
freeing into generic code" (Peter Zijlstra, v3.0) is
``call_rcu_sched(&batch->rcu, tlb_remove_table_rcu)``: an IRQ-disabled
GUP-fast walker is a sched-RCU reader, so the free waits for it.  The same
guarantee is lost by any free path that does not wait for a grace period of
the right flavour (before the v4.20 flavour consolidation, a plain
``call_rcu()`` under ``CONFIG_PREEMPT_RCU`` did not wait for IRQ-off regions;
the model has consolidated RCU, so the mutant drops the wait altogether).
On Xen PV the flush hypercall does not wait for the walker either, and the
table is freed under it.

Built from the correct semi-RCU strategy.
"""

from pathlib import Path

from impls.machine.plugin import load_module_file
from impls.xen_semi_rcu import mmu_gather as correct
from impls.xen_semi_rcu.mmu_gather import tlb_remove_table_rcu

NAME = "rcu-free-without-grace-period"
PLANTED = {"env": "xen-pv", "kind": "strategy", "check": "table-uaf"}


def tlb_remove_table_free(tlb, batch):
    tlb_remove_table_rcu(tlb.cpu, batch)  # BUG: no call_rcu(): freed before a grace period


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
