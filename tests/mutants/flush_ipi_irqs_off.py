"""Planted bug: the native flush sends its synchronous IPIs with local IRQs
disabled and spins in ``csd_lock_wait()`` that way.  Two CPUs that flush each
other at the same time each wait for an IPI the other cannot take.

Kernel: kernel/smp.c ``smp_call_function_many_cond()``: "Can deadlock when
called with interrupts disabled" (``lockdep_assert_irqs_enabled()``, before it
``WARN_ON_ONCE(cpu_online(this_cpu) && irqs_disabled() && !oops_in_progress)``).
The same rule, seen from the other side, is a79e53d85683 "x86/mm: Fix
pgd_lock deadlock" (Andrea Arcangeli, 2011): "It's forbidden to take the
page_table_lock with the irq disabled or if there's contention the IPIs (for
tlb flushes) sent with the page_table_lock held will never run leading to a
deadlock".  IPI-based table-free safety depends on this asymmetry: the
*sender* of a flush waits with IRQs on, only the *target* may hold IRQs off
(GUP-fast).  A flush issued with IRQs off gets the WARN on every remote flush;
when two CPUs flush each other at the same time, they deadlock (the fuzzer
finds the WARN at once; the deadlock needs two overlapping flushes, see
tests/test_zoo.py::test_liveness_by_schedule_search).

Built from the correct native platform.
"""

from pathlib import Path

from impls.machine.cpu import local_irq_restore, local_irq_save
from impls.machine.plugin import load_module_file
from impls.platforms import native as correct

NAME = "flush-ipi-irqs-off"
PLANTED = {"env": "native", "kind": "platform", "check": "kernel-bug", "strategy": "direct"}


def flush_tlb_multi(cpu, cpumask, info):
    """arch/x86/mm/tlb.c: native_flush_tlb_multi()."""
    local_irq_save(cpu)  # BUG: the IPIs are sent, and waited for, with IRQs off
    yield from correct.flush_tlb_multi(cpu, cpumask, info)
    local_irq_restore(cpu)


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
