"""Planted bug: ``xen_release_ptpage()`` queues the UNPIN / make-writable
hypercall for a table being freed but never issues it; it waits in the
per-CPU multicall buffer for whatever flushes the buffer next, and the table
can reach the page allocator first, still pinned and read-only.

Kernel: arch/x86/xen/mmu_pv.c ``xen_release_ptpage()`` ends with
``xen_mc_issue(XEN_LAZY_MMU)``: the hypercall is deferred only while the CPU
is in lazy MMU mode, and mainline never frees a table inside a lazy MMU
section (PT_RECLAIM's ``free_pte()`` runs after ``arch_leave_lazy_mmu_mode()``
in ``zap_pte_range()``; ``free_pgtables()`` is not lazy).  This near-miss is
the primer's E3 rule (section 2): "any strategy must make sure the queued
... hypercall is issued before the free"; it is what a release hook called
inside a lazy MMU section (or one that used ``xen_mc_batch()`` without
``xen_mc_issue()``) would do, the hazard of queued-but-unissued lazy updates
that 4f06b0436b2d "x86/cpa: make sure cpa is safe to call in lazy mmu mode"
(2009) fixed for CPA.  Xen's verdict on such a frame is LEAKED-XEN-PIN
(invariant I7); if the frame is reused before the queued unpin finally runs,
the hypercall also hits a stale frame.

Built from the correct Xen PV platform.
"""

from pathlib import Path

from impls.machine.plugin import load_module_file
from impls.platforms import xen_pv as correct
from impls.platforms.xen_pv import __xen_mc_entry, _set_pinned_state

NAME = "xen-release-unissued"
PLANTED = {"env": "xen-pv", "kind": "platform", "check": "leaked-xen-pin", "strategy": "semi-rcu"}


def _release_ptpage(cpu, f):
    """xen_release_ptpage()."""
    m = cpu.m
    if not f.pinned:
        return
    gen = f.gen
    __xen_mc_entry(cpu, "UNPIN+update_va_mapping(RW)" if f.level == 1 else "update_va_mapping(RW)",
                   lambda: _set_pinned_state(m, f, gen, False, "release_ptpage"))
    # BUG: no xen_mc_issue(XEN_LAZY_MMU): the hypercall stays queued
    f.pinned = False


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
