"""Planted bug: ``xen_flush_tlb_multi()`` queues its ``MMUEXT_TLB_FLUSH_MULTI``
multicall but never issues it, as if the caller were always in lazy MMU mode:
the remote flush happens whenever the CPU's multicall buffer is next flushed,
and the tables and pages gathered before it are freed first.

Kernel: arch/x86/xen/mmu_pv.c ``xen_flush_tlb_multi()`` ends with
``xen_mc_issue(XEN_LAZY_MMU)``; the flush is deferred only inside a lazy MMU
section, and ``zap_pte_range()`` leaves that section
(``arch_leave_lazy_mmu_mode()``, which issues the buffer) before its forced
``tlb_flush_mmu_tlbonly()``.  The primer's E3 rule (section 2) and invariant
I4: "for Xen lazy MMU: flush hypercall actually issued < free".  The kernel
met the same hazard in 4f06b0436b2d "x86/cpa: make sure cpa is safe to call in
lazy mmu mode" (Jeremy Fitzhardinge, 2009): with updates queued in lazy MMU
mode "we must explicitly flush any modifications CPA may have made (which
comes down to flushing queued operations when flushing the TLB)".  A multicall
left in the buffer at the end is also a kernel bug of its own.

Built from the correct Xen PV platform.
"""

from pathlib import Path

from impls.machine.plugin import load_module_file
from impls.machine.tlb import flush_all, invlpg
from impls.machine.tlbflush import TLB_FLUSH_ALL
from impls.platforms import xen_pv as correct
from impls.platforms.xen_pv import PAGE_SIZE, __xen_mc_entry

NAME = "xen-flush-unissued"
PLANTED = {"env": "xen-pv", "kind": "platform", "check": "ordering", "strategy": "semi-rcu",
           "also": ("kernel-bug",)}


def flush_tlb_multi(cpu, cpumask, info):
    """xen_flush_tlb_multi()."""
    m = cpu.m
    targets = tuple(c for c in range(m.ncpus) if (cpumask >> c) & 1)
    if not targets:
        return
    single = info.end != TLB_FLUSH_ALL and info.end - info.start <= PAGE_SIZE
    why = f"xen flush {info.id}"

    def run() -> None:
        for t in targets:
            tc = m.cpus[t]
            if single:
                invlpg(t, m.h, tc.tlb, tc.psc, info.start, why)
            else:
                flush_all(t, m.h, tc.tlb, tc.psc, why)

    __xen_mc_entry(cpu, "MMUEXT_INVLPG_MULTI" if single else "MMUEXT_TLB_FLUSH_MULTI", run)
    # BUG: no xen_mc_issue(XEN_LAZY_MMU)
    return
    yield  # noqa: B901 (a generator hook)


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
