"""arm64: arch/arm64/include/asm/tlb.h, tlbflush.h and mmu_context.h, and the
ASID allocator of arch/arm64/mm/context.c, read at v6.18.y (with Zeng Heng's
2026 fix "arm64: tlb: Flush walk cache when unsharing PMD tables").

* **Broadcast TLBI, no IPI.**  Every invalidation is a ``TLBI ... IS``
  instruction the hardware broadcasts to every CPU of the inner-shareable
  domain, tagged with the mm's ASID; the issuing CPU's ``DSB ISH`` waits
  until it has completed everywhere.  Nothing interrupts the other CPUs: an
  IRQ-off GUP-fast walker is not held off, so native direct free is unsafe
  (arm64 has freed tables through RCU since 5e5f6dc10546 "arm64: mm: Enable
  HAVE_RCU_TABLE_FREE logic", 2014; GUP-fast's protection is that RCU delay:
  an IRQ-disabled walk is an RCU reader).  Between the TLBI and the DSB other
  CPUs keep using their entries (the ``tlbi.delay`` choice holds a TLBI back
  on a CPU, like ``invlpgb.delay``).
* **tlb_flush() chooses leaf-only or walk-cache invalidation from the gather
  flags**: ``last_level = !(tlb->freed_tables || tlb->unshared_tables)``;
  ``TLBI VALE1IS`` (last level) drops the leaf entry only and keeps the walk
  cache; ``TLBI VAE1IS`` drops the walk-cache entries used to translate the
  address too.  The stride is ``tlb_get_unmap_size()``.  A fullmm gather
  (exit) flushes only if tables were freed (``flush_tlb_mm()``: ``TLBI
  ASIDE1IS``, every entry of the ASID): "the ASID allocator won't reallocate
  our ASID without invalidating the entire TLB".  A range of at least
  ``MAX_DVM_OPS`` strides is a ``flush_tlb_mm()`` (``__flush_tlb_range_limit_
  excess()``).  ``mmu_notifier_arch_invalidate_secondary_tlbs()`` follows
  the TLBIs.
* **ASIDs.**  Each mm has one ASID on every CPU (``check_and_switch_context()``
  loads TTBR0 with it, no flush).  A CPU's entries of an mm stay tagged with
  its ASID after it switches away; a TLBI by ASID reaches them anyway.
* **Lazy TLB.**  ``enter_lazy_tlb()`` leaves TTBR0 alone (it only updates the
  saved TTBR0 of SW PAN): the CPU may keep walking the mm speculatively, and
  the broadcast TLBI reaches it.
* ``tlb_needs_table_invalidate()``: true (the generic default): the hardware
  walks, and caches, the Linux tables.

MODEL: no FEAT_TLBIRANGE (range TLBIs) and no TTL hints (a TTL only narrows
which leaf level a TLBI looks at); ``VAE1IS`` drops the walk-cache entries on
the address's path; an mm's ASID is fixed at its first use and never rolled
over (no generation flush); ``init_mm`` is ASID 0 with the reserved TTBR0;
``need_flush_all`` is not consulted (arm64 does not set it).
"""

from __future__ import annotations

from impls.machine.cpu import Cpu, Mm, Step
from impls.machine.mmu_gather import tlb_get_unmap_shift, tlb_tables_changed
from impls.machine.pgtable import PAGE_SHIFT
from impls.machine.tlb import flush_all, huge_key, hw_load_context, invlpg
from impls.machine.tlbflush import TLB_FLUSH_ALL, FlushTlbInfo, mmu_notifier_arch_invalidate_secondary_tlbs

NAME = "arm64"
IMPLIES_IPI_BROADCAST = False

#: arch/arm64/include/asm/tlbflush.h: #define MAX_DVM_OPS PTRS_PER_PTE
MAX_DVM_OPS = 512


def init(m) -> None:
    for c in m.cpus:
        c.pv["tlbi"] = []  # TLBIs issued, not yet performed on this CPU
    m.pv["tlbi_seq"] = 0


def ASID(mm: Mm) -> int:
    """arch/arm64/include/asm/mmu.h: ASID(mm) (MODEL: fixed per mm; 0 is
    init_mm's)."""
    return 0 if mm.id < 0 else mm.id + 1


# -- switching (arch/arm64/include/asm/mmu_context.h) -----------------------------

def switch_mm_irqs_off(cpu: Cpu, next_mm: Mm, why: str = "switch_mm") -> Step:
    """arch/arm64/include/asm/mmu_context.h: switch_mm() -> __switch_mm():
    ``check_and_switch_context()`` loads TTBR0 with the mm's tables and ASID,
    without a flush; ``init_mm`` gets the reserved TTBR0.  Nothing is waited
    for: no other CPU needs to know (no mm_cpumask, no tlb_gen)."""
    m = cpu.m
    prev = cpu.loaded_mm
    was_lazy = cpu.is_lazy
    cpu.is_lazy = False
    if prev is next_mm:
        if was_lazy:
            m.h.emit(cpu.id, "switch_mm", mm=next_mm.id, lazy=False, why=why, flush=False)
        return
    if next_mm is m.init_mm or next_mm.pgd is None:
        hw_load_context(cpu, 0, 0, next_mm.id, ASID(next_mm), False, "cpu_set_reserved_ttbr0")
    else:
        hw_load_context(cpu, next_mm.pgd.pfn, next_mm.pgd_gen, next_mm.id, ASID(next_mm), False,
                        f"ttbr0 <- {next_mm.name}")
    cpu.loaded_mm = next_mm
    cpu.loaded_mm_asid = ASID(next_mm)
    m.h.emit(cpu.id, "switch_mm", mm=next_mm.id, lazy=False, why=why, flush=False)
    return
    yield  # pragma: no cover  (a generator hook)


# -- TLBI and DSB ----------------------------------------------------------------------

def __tlbi(cpu: Cpu, op: str, asid: int, addrs: tuple[int, ...], stride_shift: int) -> None:
    """Issue a TLBI ... IS: it is broadcast to every CPU (this one included)
    and performed there when it lands (``on_step``), or at the issuer's DSB."""
    m = cpu.m
    m.pv["tlbi_seq"] += 1
    tlbi = (m.pv["tlbi_seq"], cpu.id, op, asid, addrs, stride_shift)
    for c in m.cpus:
        c.pv["tlbi"].append(tlbi)
    m.h.emit(cpu.id, "tlbi", id=tlbi[0], op=op, asid=asid,
             start=addrs[0] if addrs else 0, end=(addrs[-1] + (1 << stride_shift)) if addrs else 0)


def _perform(target: Cpu, tlbi) -> None:
    """What a TLBI does on ``target``: entries of its ASID, current there or
    not."""
    tid, _, op, asid, addrs, stride_shift = tlbi
    h = target.m.h
    why = f"tlbi {op} {tid}"
    ctx = target.asid_caches.get(asid)
    if ctx is None:
        return
    tlb, psc = ctx
    if op == "aside1is":
        flush_all(target.id, h, tlb, psc, why, asid=asid)
        return
    for addr in addrs:
        if op == "vae1is":
            invlpg(target.id, h, tlb, psc, addr, why, emit=False)
        else:  # vale1is: the last level only (a block entry is one), the walk cache stays
            tlb.pop(addr >> PAGE_SHIFT, None)
            tlb.pop(huge_key(addr), None)
    h.emit(target.id, "tlb_inv", start=addrs[0], end=addrs[-1] + (1 << stride_shift), stride=stride_shift,
           psc=op == "vae1is", why=why, asid=asid)


def dsb_ish(cpu: Cpu) -> None:
    """DSB ISH: wait until every TLBI this CPU issued is complete on every CPU."""
    m = cpu.m
    for c in m.cpus:
        mine = [t for t in c.pv["tlbi"] if t[1] == cpu.id]
        if mine:
            c.pv["tlbi"] = [t for t in c.pv["tlbi"] if t[1] != cpu.id]
            for t in mine:
                _perform(c, t)
    m.h.emit(cpu.id, "dsb_ish")


def flush_tlb_mm(cpu: Cpu, mm: Mm) -> Step:
    """arch/arm64/include/asm/tlbflush.h: flush_tlb_mm(): ``dsb(ishst);
    TLBI ASIDE1IS; dsb(ish)``, then the secondary TLBs."""
    __tlbi(cpu, "aside1is", ASID(mm), (), PAGE_SHIFT)
    yield "flush_tlb_mm:tlbi_issued"
    dsb_ish(cpu)
    mmu_notifier_arch_invalidate_secondary_tlbs(cpu, mm, 0, TLB_FLUSH_ALL)


def __flush_tlb_range(cpu: Cpu, mm: Mm, start: int, end: int, stride_shift: int, last_level: bool) -> Step:
    """arch/arm64/include/asm/tlbflush.h: __flush_tlb_range() ->
    __flush_tlb_range_nosync(), then ``dsb(ish)``."""
    stride = 1 << stride_shift
    start = start & ~(stride - 1)
    end = (end + stride - 1) & ~(stride - 1)
    # __flush_tlb_range_limit_excess() (MODEL: no FEAT_TLBIRANGE)
    if end - start >= MAX_DVM_OPS * stride:
        yield from flush_tlb_mm(cpu, mm)
        return
    if end <= start:
        return
    addrs = tuple(range(start, end, stride))
    __tlbi(cpu, "vale1is" if last_level else "vae1is", ASID(mm), addrs, stride_shift)
    mmu_notifier_arch_invalidate_secondary_tlbs(cpu, mm, start, end)
    yield "__flush_tlb_range:tlbi_issued"
    dsb_ish(cpu)


def tlb_flush(tlb) -> Step:
    """arch/arm64/include/asm/tlb.h: tlb_flush()."""
    last_level = not tlb_tables_changed(tlb)
    stride_shift = tlb_get_unmap_shift(tlb)  # tlb_get_unmap_size()
    # If we're tearing down the address space then we only care about
    # invalidating the walk-cache, since the ASID allocator won't reallocate
    # our ASID without invalidating the entire TLB.
    if tlb.fullmm:
        if not last_level:
            yield from flush_tlb_mm(tlb.cpu, tlb.mm)
        return
    yield from __flush_tlb_range(tlb.cpu, tlb.mm, tlb.start, tlb.end, stride_shift, last_level)


def mm_global_asid(mm: Mm) -> bool:
    """Every arm64 flush is a broadcast: the x86 flush_tlb_mm_range() a
    generic path may call goes to broadcast_tlb_flush()."""
    return True


def broadcast_tlb_flush(cpu: Cpu, info: FlushTlbInfo) -> Step:
    """flush_tlb_range() (arch/arm64/include/asm/tlbflush.h): never leaf-only,
    since it is used to remove tables (collapse, page-table moves)."""
    if info.end == TLB_FLUSH_ALL:
        yield from flush_tlb_mm(cpu, info.mm)
    else:
        yield from __flush_tlb_range(cpu, info.mm, info.start, info.end, info.stride_shift, False)


def flush_tlb_multi(cpu: Cpu, cpumask: int, info: FlushTlbInfo) -> Step:
    """Not used (every flush is a broadcast); kept for the protocol."""
    yield from broadcast_tlb_flush(cpu, info)


def on_step(cpu: Cpu) -> None:
    """TLBIs in flight are performed on this CPU unless held back."""
    pending = cpu.pv["tlbi"]
    if pending and not cpu.m.choices.flip("tlbi.delay"):
        cpu.pv["tlbi"] = []
        for t in pending:
            _perform(cpu, t)


def pending(m) -> bool:
    return any(c.pv["tlbi"] for c in m.cpus)


def quiesce(m) -> None:
    for c in m.cpus:
        waiting, c.pv["tlbi"] = c.pv["tlbi"], []
        for t in waiting:
            _perform(c, t)
