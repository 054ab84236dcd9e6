"""Planted bug: native flushes skip lazy-TLB CPUs even when page tables are
freed.

Mirrors 94b1b03b519b (v4.14 PCID rework), which stopped IPI'ing lazy CPUs;
b956575bed91 "x86/mm: Flush more aggressively in lazy TLB mode" (Lutomirski,
Oct 2017) restored it, because a lazy CPU's paging-structure cache can still
point at a freed table and a speculative walk then reads garbage.  Since
016c4d92cd16 (v4.20) lazy CPUs are skipped only when no tables are freed.
"""

from impls.machine.smp import on_each_cpu_cond_mask
from impls.machine.tlbflush import flush_tlb_func
from impls.platforms.native import IMPLIES_IPI_BROADCAST, should_flush_tlb  # noqa: F401

NAME = "native-skip-lazy"
PLANTED = {"env": "native+lazy", "kind": "platform", "check": "ordering", "strategy": "direct",
           "also": ("stale-psc",)}


def flush_tlb_multi(cpu, cpumask, info):
    # BUG: ignores info.freed_tables
    yield from on_each_cpu_cond_mask(cpu, should_flush_tlb, flush_tlb_func, info, True, cpumask,
                                     "flush_tlb_func")
