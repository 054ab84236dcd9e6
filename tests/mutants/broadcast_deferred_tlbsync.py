"""Planted bug: a broadcast (INVLPGB) flush that does not wait for its TLBSYNC:
``broadcast_tlb_flush()`` only records ``need_tlbsync`` and the TLBSYNC is
issued later, at this CPU's next context switch, so whatever the caller frees
after the flush returns may still be cached on other CPUs.

Kernel: Rik van Riel's AMD broadcast TLB invalidation series (e.g. "[PATCH
v11 12/12] x86/mm: only invalidate final translations with INVLPGB",
2025-02-13, message-id 20250213161423.449435-13-riel@surriel.com) tracked a
per-CPU ``cpu_tlbstate.need_tlbsync`` set by every ``*_nosync()`` INVLPGB and
consumed by ``tlbsync()`` (TLBSYNC only waits for INVLPGBs issued by the same
CPU, hence the deferred form for ``arch_tlbbatch_add_pending()`` /
``arch_tlbbatch_flush()``; v2 of the series fixed a missing TLBSYNC there).
The primer's rule (section 2, E4): the flush is complete only after TLBSYNC;
a free between INVLPGB and TLBSYNC is unsafe for hardware readers.

Built from the correct broadcast platform.
"""

from pathlib import Path

from impls.machine.plugin import load_module_file
from impls.platforms import broadcast as correct
from impls.platforms.broadcast import invlpgb_flush_nosync, tlbsync

NAME = "broadcast-deferred-tlbsync"
PLANTED = {"env": "broadcast", "kind": "platform", "check": "ordering", "strategy": "full-rcu"}


def broadcast_tlb_flush(cpu, info):
    """arch/x86/mm/tlb.c: broadcast_tlb_flush()."""
    invlpgb_flush_nosync(cpu, info)
    yield "broadcast_tlb_flush:invlpgb_issued"
    cpu.pv["need_tlbsync"] = True  # BUG: no TLBSYNC here; deferred to the next switch


def start_context_switch(cpu):
    """switch_mm_irqs_off(): TLBSYNC pending INVLPGBs before leaving the CPU."""
    if cpu.pv.get("need_tlbsync"):
        cpu.pv["need_tlbsync"] = False
        tlbsync(cpu)


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
