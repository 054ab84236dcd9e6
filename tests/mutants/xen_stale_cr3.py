"""Planted bug: xen_drop_mm_ref() looks at the *logical* cr3 (``xen_cr3``)
instead of the effective one (``xen_current_cr3``).

Mirrors the bug fixed by 9f79991d4186 "xen: deal with stale cr3 values when
unpinning pagetables" (Jeremy Fitzhardinge, 2.6.23/24): a vCPU whose switch
away from the mm is still queued in a lazy-CPU multicall is not asked to drop
the pgd, the unpin reaches Xen while the pgd is still that vCPU's CR3, Xen
refuses it, and the tables stay pinned (worked example C).
"""

from impls.machine.smp import smp_call_function_many
from impls.platforms import xen_pv as _xen
from impls.platforms.xen_pv import *  # noqa: F401,F403  (the correct platform, then one change)

NAME = "xen-pv-stale-cr3"
PLANTED = {"env": "xen-pv", "kind": "platform", "check": "leaked-xen-pin", "strategy": "semi-rcu"}


def xen_drop_mm_ref(cpu, mm):
    _xen.drop_mm_ref_this_cpu(cpu, mm)
    mask = 0
    for c in cpu.m.cpus:
        if c.pv["xen_cr3"][0] == mm.pgd.pfn:  # BUG: logical, not effective, cr3
            mask |= 1 << c.id
    yield from smp_call_function_many(cpu, mask, _xen.drop_mm_ref_this_cpu, mm, True,
                                      "drop_mm_ref_this_cpu")


def exit_mmap(cpu, mm):
    from impls.machine.cpu import preempt_disable, preempt_enable, spin_lock, spin_unlock
    preempt_disable(cpu)
    yield from xen_drop_mm_ref(cpu, mm)
    preempt_enable(cpu)
    yield from spin_lock(cpu, mm.page_table_lock, "xen_exit_mmap:page_table_lock")
    if mm.pgd.pinned:
        _xen.xen_pgd_unpin(cpu, mm)
    spin_unlock(cpu, mm.page_table_lock)
