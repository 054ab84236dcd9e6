"""Planted bug: ``choose_new_asid()`` reuses the PCID an mm already has on
this CPU without comparing its ``tlb_gen`` with the mm's: flushes that skipped
the CPU while it ran another mm are never caught up, and the entries it
cached before it switched away are used again.

Kernel: 10af6235e0d3 "x86/mm: Implement PCID based optimization: try to
preserve old TLB entries using PCID" (Andy Lutomirski, v4.14) introduced the
per-CPU ASIDs with ``*need_flush = (this_cpu_read(cpu_tlbstate.ctxs[asid].
tlb_gen) < next_tlb_gen)``: "we keep track of the tlb_gen of each ASID so
that we can flush it if it's out of date".  Since 94b1b03b519b (the same
series) lazy and switched-away CPUs are not IPI'd for flushes that free no
tables, so that comparison is the only thing that invalidates them.  This
mutant is the ASID lookup with ``need_flush = false``.

Built from the correct native platform (PCIDs on).
"""

from pathlib import Path

from impls.machine.plugin import load_module_file
from impls.machine.tlbflush import TLB_NR_DYN_ASIDS
from impls.machine.tlbflush import choose_new_asid as correct_choose_new_asid
from impls.platforms import native as correct

NAME = "choose-new-asid-no-catchup"
PLANTED = {"env": "native+switch", "kind": "platform", "check": "ordering", "strategy": "full-rcu",
           "also": ("stale-tlb",)}


def choose_new_asid(cpu, next_mm, next_tlb_gen):
    """arch/x86/mm/tlb.c: choose_new_asid()."""
    for asid in range(TLB_NR_DYN_ASIDS):
        if cpu.ctxs[asid][0] is next_mm:
            return asid, False  # BUG: not ctxs[asid].tlb_gen < next_tlb_gen
    return correct_choose_new_asid(cpu, next_mm, next_tlb_gen)


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
