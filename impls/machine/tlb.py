"""The hardware walker: TLB, paging-structure caches (PSC), page walks.

Each CPU (and the IOMMU) has a TLB of leaf translations ``vpn -> (pfn, gen,
writable)`` (a 2 MiB translation from a huge PMD is kept under the key
``huge_key(va)``, a negative number, so the two sizes never collide) and a
paging-structure cache of upper-level entries ``(level,
prefix) -> (table pfn, gen)``: the cached PML4E (prefix = va >> 39) points to a
PUD table, the cached PDPTE (va >> 30) to a PMD table, the cached PDE
(va >> 21) to a PTE table.  Entries carry the generation of the frame they
point to, so a later use of an entry whose frame was freed or reused is
visible.

A hardware walk (a user access that misses, or a speculative walk, which may
happen whenever CR3 holds a user mm, lazy-TLB mode included) starts from the
deepest PSC hit, else from CR3, reads table memory, and fills the PSC and,
for a present leaf, the TLB.  A walk stops at a huge PMD: the leaf it maps
goes into the TLB as a 2 MiB entry, and no PDE is cached (x86 caches only
non-leaf entries in the paging-structure caches).

Entries are tagged with the ASID (PCID, arm64 ASID, powerpc PID) current
when they were filled: ``cpu.asid_caches`` maps every ASID to its TLB and PSC,
``cpu.tlb``/``cpu.psc`` are the current one's.  The hardware uses, and walks
speculatively into, the current ASID's entries only (SDM 4.10.1: "cached
information associated with the current PCID"); entries of another ASID stay
until a write of that ASID with a flush, or an invalidation by ASID
(INVLPGB, arm64 TLBI ... ASID), removes them.  :func:`hw_load_context` is the
CR3 / TTBR0 write.

INVLPG (one address, current ASID) drops the leaf entries covering it (4 KiB
and 2 MiB) and, for the
paging-structure caches, what the CPU vendor says: with AMD's Translation
Cache Extension (APM, EFER.TCE; Linux sets it where present since
440a65b7d25f, v6.15) only the entries on that address's translation path; on
Intel (SDM 4.10.4.1) every paging-structure-cache entry of the current PCID,
"regardless of the linear addresses to which they correspond".  The platform
option ``invlpg`` chooses (``amd-tce``, the weaker, by default).  A full flush
(a CR3 write without NOFLUSH, INVPCID single-context) drops the ASID's whole
TLB and PSC.

MODEL: no A/D-bit updates; no global (kernel) entries; AMD without TCE (which
drops every PSC entry, like Intel) is the ``intel`` choice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .page_alloc import DATA, FREE, TABLE, Frame
from .pgtable import (
    LEVEL_SHIFT,
    PAGE_SHIFT,
    PMD_SHIFT,
    entry_pfn,
    entry_present,
    entry_writable,
    garbage_entry,
    index,
    is_table_entry,
    pmd_leaf,
)

if TYPE_CHECKING:
    from .cpu import Cpu

#: PSC levels: the level of the table a cached entry points to, and the shift
#: of the VA prefix it is tagged with (the level above's index shift)
PSC_LEVELS = ((1, 21), (2, 30), (3, 39))


def huge_key(va: int) -> int:
    """The TLB key of the 2 MiB translation covering ``va``."""
    return -1 - (va >> PMD_SHIFT)


def tlb_key_va(key: int) -> int:
    """The first VA a TLB key translates (4 KiB or 2 MiB entry)."""
    return key << PAGE_SHIFT if key >= 0 else (-1 - key) << PMD_SHIFT


def tlb_lookup(tlb: dict, va: int) -> tuple[int, int, bool] | None:
    """The TLB entry the hardware uses for ``va``: a 4 KiB one, else a 2 MiB
    one (both may be present after a size change; either may be used)."""
    hit = tlb.get(va >> PAGE_SHIFT)
    if hit is None and tlb:
        hit = tlb.get(-1 - (va >> PMD_SHIFT))
    return hit


def read_table_memory(f: Frame, idx: int) -> int:
    """What a load from entry ``idx`` of frame ``f`` returns, whatever the
    frame is now: a table's entry, the stale content of a freed table (no
    init_on_free), or user data reinterpreted as an entry."""
    if f.state == TABLE or f.state == FREE:
        return f.entries.get(idx, 0)
    if f.state == DATA:
        return garbage_entry(f.pfn, f.gen, idx)
    return 0


def hw_walk(cpu: Cpu, agent: int, tlb: dict, psc: dict, root_pfn: int, root_gen: int,
            va: int, via: str) -> tuple[int, int, bool] | None:
    """Walk ``va`` starting from the deepest PSC hit, else from the root table.

    Emits ``hw_read`` for every table load (with the generation the walker
    believes the frame has) and ``psc_fill``/``tlb_fill`` for what it caches.
    Returns the leaf translation or None.
    """
    m = cpu.m
    frames = m.frames
    h = m.h
    # deepest cached upper-level entry first
    level = 4
    pfn, gen = root_pfn, root_gen
    for lvl, shift in PSC_LEVELS:
        hit = psc.get((lvl, va >> shift))
        if hit is not None:
            level = lvl
            pfn, gen = hit
            break
    if pfn == 0:
        return None  # swapper_pg_dir: no user mappings
    while True:
        f = frames.get(pfn)
        if f is None:
            return None
        idx = index(level, va)
        val = read_table_memory(f, idx)
        h.emit_attrs(agent, "hw_read",
                     {"pfn": pfn, "gen": gen, "level": level, "idx": idx, "val": val, "va": va, "via": via})
        if not entry_present(val):
            return None
        child = entry_pfn(val)
        cf = frames.get(child)
        if cf is None:
            return None
        if level == 1:
            # a 4 KiB leaf
            rw = entry_writable(val)
            tlb[va >> PAGE_SHIFT] = (child, cf.gen, rw)
            h.emit_attrs(agent, "tlb_fill", {"va": va & ~0xFFF, "pfn": child, "gen": cf.gen, "rw": rw, "via": via})
            return (child, cf.gen, rw)
        if level == 2 and pmd_leaf(val):
            # a huge PMD: a 2 MiB leaf, the walk ends here
            rw = entry_writable(val)
            tlb[huge_key(va)] = (child, cf.gen, rw)
            h.emit_attrs(agent, "tlb_fill", {"va": va >> PMD_SHIFT << PMD_SHIFT, "pfn": child, "gen": cf.gen,
                                             "rw": rw, "via": via, "huge": True})
            return (child, cf.gen, rw)
        if not is_table_entry(val):
            return None
        level -= 1
        psc[(level, va >> LEVEL_SHIFT[level + 1])] = (child, cf.gen)
        h.emit_attrs(agent, "psc_fill", {"level": level,
                                         "prefix": va >> LEVEL_SHIFT[level + 1] << LEVEL_SHIFT[level + 1],
                                         "pfn": child, "gen": cf.gen, "via": via})
        pfn, gen = child, cf.gen


def invlpg(agent: int, h, tlb: dict, psc: dict, va: int, why: str, emit: bool = True,
           all_psc: bool = False, asid: int | None = None) -> None:
    """INVLPG: the leaf for ``va`` and, with TCE, the PSC entries on its path;
    with ``all_psc`` (Intel), every PSC entry of the ASID.  ``asid`` names the
    ASID when it is not the agent's current one (an invalidation by ASID).
    Any entry covering ``va`` goes, the 2 MiB one of a huge PMD included."""
    tlb.pop(va >> PAGE_SHIFT, None)
    tlb.pop(-1 - (va >> PMD_SHIFT), None)
    if all_psc:
        psc.clear()
    else:
        for lvl, shift in PSC_LEVELS:
            psc.pop((lvl, va >> shift), None)
    if emit:
        a = {"start": va, "end": va + (1 << PAGE_SHIFT), "stride": PAGE_SHIFT,
             "psc": "all" if all_psc else True, "why": why}
        if asid is not None:
            a["asid"] = asid
        h.emit_attrs(agent, "tlb_inv", a)


def invalidate_range(agent: int, h, tlb: dict, psc: dict, start: int, end: int, stride_shift: int,
                     why: str, all_psc: bool = False, asid: int | None = None) -> None:
    """flush_tlb_func()'s partial flush: one INVLPG per stride in [start, end)."""
    addr = start
    step = 1 << stride_shift
    while addr < end:
        invlpg(agent, h, tlb, psc, addr, why, emit=False, all_psc=all_psc)
        addr += step
    a = {"start": start, "end": end, "stride": stride_shift, "psc": "all" if all_psc else True,
         "why": why}
    if asid is not None:
        a["asid"] = asid
    h.emit_attrs(agent, "tlb_inv", a)


def flush_all(agent: int, h, tlb: dict, psc: dict, why: str, asid: int | None = None) -> None:
    """Every entry of one ASID (the agent's current one unless ``asid``)."""
    tlb.clear()
    psc.clear()
    if asid is None:
        h.emit(agent, "tlb_inv_all", why=why)
    else:
        h.emit(agent, "tlb_inv_all", why=why, asid=asid)


def hw_load_context(cpu: Cpu, pfn: int, gen: int, mm_id: int, asid: int, flush: bool, why: str) -> None:
    """The CR3 (TTBR0) write: the hardware walks from table ``pfn`` and tags
    what it caches with ``asid``, whose entries it uses from now on; ``flush``
    drops them first (a CR3 write without NOFLUSH: without PCIDs, always)."""
    caches = cpu.asid_caches
    ctx = caches.get(asid)
    if ctx is None:
        ctx = caches[asid] = ({}, {})
    cpu.tlb, cpu.psc = ctx
    cpu.hw_asid = asid
    cpu.cr3_pfn, cpu.cr3_gen = pfn, gen
    h = cpu.m.h
    h.emit(cpu.id, "cr3_load", pfn=pfn, gen=gen, mm=mm_id, asid=asid, flush=flush)
    if flush:
        flush_all(cpu.id, h, ctx[0], ctx[1], why)
