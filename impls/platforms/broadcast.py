"""Broadcast TLB invalidation without IPIs: AMD INVLPGB + TLBSYNC
(arch/x86/mm/tlb.c broadcast_tlb_flush(), v6.15; the same shape as arm64
TLBI+DSB and Intel RAR).

Every mm has a global ASID (MODEL: ``consider_global_asid()`` always says yes,
from the mm's first use: no ASID transition), the same PCID on every CPU,
``TLB_NR_DYN_ASIDS + mm id``: ``choose_new_asid()`` returns it without a flush
("Global ASIDs are always up to date"), so a CPU that switched away keeps the
mm's entries under that PCID, and ``flush_tlb_func()`` returns at once for
it.  ``init_mm`` keeps a dynamic ASID.  ``flush_tlb_mm_range()`` issues
INVLPGB for the range (leaf-only, with
``INVLPGB_FINAL_ONLY``, unless ``freed_tables``), or for the whole PCID when
the range is ``TLB_FLUSH_ALL`` (``invlpgb_flush_single_pcid_nosync()``, which
never sets ``INVLPGB_FINAL_ONLY``: paging-structure entries go too).  The invalidation reaches the
other CPUs asynchronously, without interrupting them and whatever their IRQ
state: a CPU keeps using its old entries until the invalidation lands (the
``invlpgb.delay`` choice holds it back).  INVLPGB invalidates by PCID, so it
reaches the mm's entries on every CPU, whether that PCID is current there or
not.  ``__tlbsync()`` at the end of
``broadcast_tlb_flush()`` waits until every INVLPGB issued by this CPU has
landed everywhere; only then is the flush complete.

No IPI means no IRQ-off barrier: native direct free is unsafe here (the reason
for a37259732a7d, "x86/mm: Make MMU_GATHER_RCU_TABLE_FREE unconditional").
"""

from __future__ import annotations

from impls.machine.cpu import TLB_NR_DYN_ASIDS, Cpu, Mm, Step
from impls.machine.tlb import flush_all, huge_key, invlpg
from impls.machine.tlbflush import TLB_FLUSH_ALL, FlushTlbInfo
from impls.machine.tlbflush import choose_new_asid as dynamic_asid

NAME = "broadcast"
IMPLIES_IPI_BROADCAST = False
#: INVLPGB invalidates by PCID: X86_FEATURE_INVLPGB needs PCIDs
OPTIONS = {"pcid": ("on", ("on",), "X86_FEATURE_PCID (required by the global ASIDs of INVLPGB)")}


def init(m) -> None:
    for c in m.cpus:
        c.pv["invlpgb"] = []


def mm_global_asid(mm: Mm) -> bool:
    return True


def _global_asid(mm: Mm) -> int:
    """mm->context.global_asid (MODEL: assigned at the mm's creation, never
    reused)."""
    return TLB_NR_DYN_ASIDS + mm.id


def choose_new_asid(cpu: Cpu, next_mm: Mm, next_tlb_gen: int) -> tuple[int, bool]:
    """arch/x86/mm/tlb.c: choose_new_asid() with X86_FEATURE_INVLPGB: "TLB
    consistency for global ASIDs is maintained with hardware assisted remote
    TLB flushing. Global ASIDs are always up to date." """
    if next_mm is not cpu.m.init_mm:
        return _global_asid(next_mm), False
    return dynamic_asid(cpu, next_mm, next_tlb_gen)


def _land(target: Cpu, info: FlushTlbInfo) -> None:
    """The invalidation takes effect on ``target``, on the entries tagged
    with the mm's PCID (current there or not)."""
    h = target.m.h
    why = f"invlpgb {info.id}"
    asid = _global_asid(info.mm)
    ctx = target.asid_caches.get(asid)
    if ctx is None:
        h.emit(target.id, "invlpgb_land", id=info.id, effect="PCID never used here")
        return
    tlb, psc = ctx
    if info.end == TLB_FLUSH_ALL:
        # invlpgb_flush_single_pcid_nosync(): INVLPGB by PCID, without
        # INVLPGB_FLAG_FINAL_ONLY whatever freed_tables says, so the
        # paging-structure caches go too (v6.15 broadcast_tlb_flush())
        flush_all(target.id, h, tlb, psc, why, asid=asid)
        return
    addr = info.start
    step = 1 << info.stride_shift
    while addr < info.end:
        if info.freed_tables:
            invlpg(target.id, h, tlb, psc, addr, why, emit=False)
        else:  # INVLPGB_FINAL_ONLY: leaf entries only, the PSC survives
            tlb.pop(addr >> 12, None)
            tlb.pop(huge_key(addr), None)
        addr += step
    h.emit(target.id, "tlb_inv", start=info.start, end=info.end, stride=info.stride_shift,
           psc=info.freed_tables, why=why, asid=asid)


def invlpgb_flush_nosync(cpu: Cpu, info: FlushTlbInfo) -> None:
    """invlpgb_flush_user_nr_nosync() / invlpgb_flush_single_pcid_nosync()."""
    m = cpu.m
    for c in m.cpus:
        c.pv["invlpgb"].append(info)
    m.h.emit(cpu.id, "invlpgb", id=info.id, start=info.start, end=info.end,
             final_only=not info.freed_tables)


def tlbsync(cpu: Cpu) -> None:
    """__tlbsync(): wait until this CPU's INVLPGBs have landed everywhere."""
    m = cpu.m
    for c in m.cpus:
        mine = [i for i in c.pv["invlpgb"] if i.initiating_cpu == cpu.id]
        if mine:
            c.pv["invlpgb"] = [i for i in c.pv["invlpgb"] if i.initiating_cpu != cpu.id]
            for info in mine:
                _land(c, info)
    m.h.emit(cpu.id, "tlbsync")


def broadcast_tlb_flush(cpu: Cpu, info: FlushTlbInfo) -> Step:
    """arch/x86/mm/tlb.c: broadcast_tlb_flush()."""
    invlpgb_flush_nosync(cpu, info)
    yield "broadcast_tlb_flush:invlpgb_issued"
    tlbsync(cpu)


def flush_tlb_multi(cpu: Cpu, cpumask: int, info: FlushTlbInfo) -> Step:
    """Not used while every mm has a global ASID; kept for the protocol."""
    yield from broadcast_tlb_flush(cpu, info)


def on_step(cpu: Cpu) -> None:
    """Invalidations in flight reach this CPU unless held back."""
    pending = cpu.pv["invlpgb"]
    if pending and not cpu.m.choices.flip("invlpgb.delay"):
        cpu.pv["invlpgb"] = []
        for info in pending:
            _land(cpu, info)


def pending(m) -> bool:
    return any(c.pv["invlpgb"] for c in m.cpus)


def quiesce(m) -> None:
    for c in m.cpus:
        pending_list, c.pv["invlpgb"] = c.pv["invlpgb"], []
        for info in pending_list:
            _land(c, info)
