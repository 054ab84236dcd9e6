"""Xen PV guests: arch/x86/xen/mmu_pv.c, multicalls.c, enlighten_pv.c.

* **Flushes are hypercalls, not IPIs.**  ``xen_flush_tlb_multi()`` queues one
  ``MMUEXT_TLB_FLUSH_MULTI`` (``MMUEXT_INVLPG_MULTI`` for a single page) in the
  per-CPU multicall buffer; Xen flushes the target vCPUs itself, whether or not
  they have IRQs disabled.  Nothing waits for a remote CPU to take an
  interrupt, so an IRQ-disabled GUP-fast walker is not held off (seed S0).
* **Multicalls and lazy modes.**  ``xen_mc_issue(mode)`` issues the buffer
  unless the CPU is in that lazy mode: in lazy MMU mode (``zap_pte_range()``)
  flushes, pinned-table writes and pin changes stay queued until
  ``arch_leave_lazy_mmu_mode()``; in lazy CPU mode (a context switch) the CR3
  write stays queued until ``xen_end_context_switch()``.  In interrupt context
  the lazy mode reads as NONE.
* **Logical vs effective CR3.**  ``xen_cr3`` changes when the switch is
  requested; ``xen_current_cr3``, and what the vCPU's hardware walks, only
  when the queued ``MMUEXT_NEW_BASEPTR`` runs (9f79991d4186).
* **Pinning.**  The tables of an mm in use are pinned: ``PG_pinned``, read-only
  in the guest, validated (typed) by Xen.  ``xen_alloc_ptpage()`` pins a table
  added to a pinned mm; ``xen_release_ptpage()`` unpins one when it is queued
  for freeing (before the flush); ``xen_exit_mmap()`` first moves every vCPU
  whose *effective* CR3 is the pgd off it (``xen_drop_mm_ref()``), then unpins
  the whole tree.  Xen refuses to unpin a pgd still loaded on a vCPU.
* **Xen's own flushes.**  Read in xen-project/xen (xen/arch/x86/mm.c,
  ``_get_page_type()``, ``_put_final_page_type()``; flushtlb.c and
  asm/flushtlb.h, the TLB-flush clock; staging, 2025).  When a page-table
  page's last type reference goes (the unpin, or the parent entry cleared),
  ``_put_final_page_type()`` devalidates it and stamps it with the TLB-flush
  clock (``set_tlbflush_timestamp()``).  When the guest then maps it writable
  (``__set_pfn_prot(pfn, PAGE_KERNEL)`` in ``xen_release_ptpage()`` or
  ``xen_pgd_unpin()``), ``_get_page_type(PGT_writable_page)`` sees a type
  change and flushes the TLB of every CPU of the domain's dirty mask that has
  not flushed since that stamp (``tlbflush_filter()``: "It is vital that no
  other CPUs are left with writeable mappings to a frame which is intending to
  become pgtable/segdesc"; for a former page table, by IPI).  The clock
  (``tlbflush_clock``) ticks at every full flush Xen does on any CPU (a guest
  CR3 write, ``MMUEXT_TLB_FLUSH_MULTI``, these flushes), and each CPU records
  when it last flushed (``tlbflush_time``).  So the paging-structure-cache
  entries of a table Linux releases are gone from every vCPU before Linux
  even flushes, whatever Linux's flush does; leaf entries of data pages are
  not (their type never changes).  The option ``type_change_flush``:
  ``filtered`` (current Xen, the default) or ``off`` (no such flush: what the
  model did before, to show what Xen's flush covers).

MODEL: one pgd per mm (no separate user pgd); Xen's type reference on an upper
table linked into a pinned tree counts as a pin (so a table is stamped when
it is released, right after the guest cleared its parent entry, with no clock
tick possible in between); local flushes (``xen_flush_tlb_one_user()``,
``xen_flush_tlb()``) take effect at once and do not tick the clock (a CPU
thus looks less recently flushed than it is, so Xen's filter flushes it
again: harmless, its entries are gone already); every vCPU is always in the
domain's dirty mask; the multicall buffer has no size limit.
"""

from __future__ import annotations

from collections.abc import Callable

from impls.machine.cpu import Cpu, Mm, Step, preempt_disable, preempt_enable, spin_lock, spin_unlock
from impls.machine.history import HW
from impls.machine.page_alloc import TABLE, Frame
from impls.machine.pgtable import PAGE_SIZE, entry_pfn, is_table_entry
from impls.machine.pgtable_generic import Ptr
from impls.machine.smp import smp_call_function_many
from impls.machine.tlb import flush_all, invlpg
from impls.machine.tlbflush import TLB_FLUSH_ALL, FlushTlbInfo, set_hw_cr3, switch_mm_irqs_off_now

NAME = "xen-pv"
IMPLIES_IPI_BROADCAST = False
OPTIONS = {
    "invlpg": ("amd-tce", ("amd-tce", "intel"),
               "what Xen's INVLPG (MMUEXT_INVLPG_MULTI) drops from the paging-structure caches: "
               "the address's path (AMD with TCE) or every entry (Intel)"),
    "type_change_flush": ("filtered", ("filtered", "off"),
                          "Xen flushes the vCPUs not flushed since a page-table page was devalidated "
                          "when the guest makes it writable (_get_page_type()); off: it does not"),
}

XEN_LAZY_NONE, XEN_LAZY_MMU, XEN_LAZY_CPU = 0, 1, 2


def init(m) -> None:
    for c in m.cpus:
        c.pv.update(lazy=XEN_LAZY_NONE, mc=[], cbs=[], xen_cr3=(0, 0), xen_current_cr3=(0, 0),
                    tlbflush_time=0)
    # xen/arch/x86/flushtlb.c: u32 tlbflush_clock = 1U; per-frame timestamps
    m.pv.update(tlbflush_clock=1, tlbflush_timestamp={},
                type_change_flush=m.popts.get("type_change_flush") == "filtered")


# -- Xen's TLB-flush clock (xen/arch/x86/flushtlb.c, asm/flushtlb.h) ------------------

def pre_flush(m) -> int:
    """flushtlb.c: pre_flush(): tick the clock before a full flush (MODEL: it
    never wraps)."""
    t = m.pv["tlbflush_clock"] + 1
    m.pv["tlbflush_clock"] = t
    return t


def xen_flush_local(m, c: Cpu, why: str) -> None:
    """flush_area_local(FLUSH_TLB) on vCPU ``c``'s processor: ``pre_flush()``,
    the flush, ``post_flush()`` (``this_cpu(tlbflush_time) = t``)."""
    t = pre_flush(m)
    flush_all(c.id, m.h, c.tlb, c.psc, why)
    c.pv["tlbflush_time"] = t


def NEED_FLUSH(m, cpu_stamp: int, lastuse_stamp: int) -> bool:
    """asm/flushtlb.h: NEED_FLUSH(): has the CPU not flushed since the page
    stopped being used (``cpu_stamp <= lastuse_stamp``)?"""
    curr_time = m.pv["tlbflush_clock"]
    return curr_time == 0 or (cpu_stamp <= lastuse_stamp <= curr_time)


def tlbflush_filter(m, mask: list[Cpu], page_timestamp: int) -> list[Cpu]:
    """asm/flushtlb.h: tlbflush_filter(): keep the CPUs that need a flush."""
    return [c for c in mask if NEED_FLUSH(m, c.pv["tlbflush_time"], page_timestamp)]


def set_tlbflush_timestamp(m, f: Frame) -> None:
    """mm.c: _put_final_page_type() -> set_tlbflush_timestamp(): the page-table
    page lost its last type reference now."""
    m.pv["tlbflush_timestamp"][f.pfn] = m.pv["tlbflush_clock"]


def get_page_type_writable(m, frames: list[Frame], why: str) -> None:
    """mm.c: _get_page_type(page, PGT_writable_page) on pages that were page
    tables (typeref 0, a type change): "On type change we check to flush stale
    TLB entries. It is vital that no other CPUs are left with writeable
    mappings to a frame which is intending to become pgtable/segdesc" --
    ``d->dirty_cpumask`` filtered by the page's timestamp, flushed by IPI
    (FLUSH_TLB | FLUSH_NO_ASSIST for a former page table)."""
    if not m.pv["type_change_flush"] or not frames:
        return
    stamps = m.pv["tlbflush_timestamp"]
    need: list[Cpu] = []
    for f in frames:
        for c in tlbflush_filter(m, m.cpus, stamps.get(f.pfn, 0)):
            if c not in need:
                need.append(c)
    if not need:
        return
    m.h.emit(HW, "xen_type_change_flush", pfns=tuple(f.pfn for f in frames),
             cpus=tuple(c.id for c in need))
    for c in need:
        xen_flush_local(m, c, why)


# -- multicalls (arch/x86/xen/multicalls.c) ---------------------------------------

def xen_get_lazy_mode(cpu: Cpu) -> int:
    return XEN_LAZY_NONE if cpu.in_irq else cpu.pv["lazy"]


def __xen_mc_entry(cpu: Cpu, name: str, run: Callable[[], None]) -> None:
    cpu.pv["mc"].append((name, run))


def xen_mc_callback(cpu: Cpu, fn: Callable[[], None]) -> None:
    cpu.pv["cbs"].append(fn)


def xen_mc_flush(cpu: Cpu) -> None:
    mc, cbs = cpu.pv["mc"], cpu.pv["cbs"]
    if not mc and not cbs:
        return
    cpu.pv["mc"], cpu.pv["cbs"] = [], []
    cpu.m.h.emit(cpu.id, "xen_hypercall", ops=tuple(name for name, _ in mc))
    for _, run in mc:
        run()
    for fn in cbs:
        fn()


def xen_mc_issue(cpu: Cpu, mode: int) -> None:
    if (xen_get_lazy_mode(cpu) & mode) == 0:
        xen_mc_flush(cpu)
    else:
        cpu.m.h.emit(cpu.id, "xen_mc_deferred", ops=tuple(name for name, _ in cpu.pv["mc"]),
                     lazy="MMU" if cpu.pv["lazy"] == XEN_LAZY_MMU else "CPU")


def enter_lazy_mmu(cpu: Cpu) -> None:
    """xen_enter_lazy_mmu()."""
    if cpu.pv["lazy"] != XEN_LAZY_NONE:
        cpu.m.h.emit(cpu.id, "bug", what="enter_lazy(XEN_LAZY_MMU) while already lazy")
    cpu.pv["lazy"] = XEN_LAZY_MMU


def leave_lazy_mmu(cpu: Cpu) -> None:
    """xen_leave_lazy_mmu(): issue what was queued, leave the mode."""
    xen_mc_flush(cpu)
    cpu.pv["lazy"] = XEN_LAZY_NONE


def start_context_switch(cpu: Cpu) -> None:
    """xen_start_context_switch()."""
    if cpu.pv["lazy"] == XEN_LAZY_MMU:
        leave_lazy_mmu(cpu)
    cpu.pv["lazy"] = XEN_LAZY_CPU


def end_context_switch(cpu: Cpu) -> None:
    """xen_end_context_switch()."""
    xen_mc_flush(cpu)
    cpu.pv["lazy"] = XEN_LAZY_NONE


# -- TLB flushes and CR3 -----------------------------------------------------------

def flush_tlb_multi(cpu: Cpu, cpumask: int, info: FlushTlbInfo) -> Step:
    """xen_flush_tlb_multi(): one multicall entry; Xen flushes the vCPUs."""
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
                invlpg(t, m.h, tc.tlb, tc.psc, info.start, why, all_psc=m.invlpg_all_psc)
            else:
                xen_flush_local(m, tc, why)

    __xen_mc_entry(cpu, "MMUEXT_INVLPG_MULTI" if single else "MMUEXT_TLB_FLUSH_MULTI", run)
    xen_mc_issue(cpu, XEN_LAZY_MMU)
    return
    yield  # pragma: no cover


def set_current_cr3(cpu: Cpu, cr3: tuple[int, int]) -> None:
    cpu.pv["xen_current_cr3"] = cr3
    cpu.m.h.emit(cpu.id, "xen_current_cr3", pfn=cr3[0])


def load_cr3(cpu: Cpu, mm: Mm, asid: int, need_flush: bool) -> None:
    """xen_write_cr3(): the logical cr3 changes now; the hypercall (and with it
    the effective cr3 the hardware walks) is queued in lazy CPU mode.  No
    PCIDs under Xen PV (``xen_init_capabilities()`` clears X86_FEATURE_PCID):
    the ASID is always 0 and Xen's CR3 write flushes."""
    m = cpu.m
    new = (mm.pgd.pfn, mm.pgd_gen) if mm.pgd is not None else (0, 0)
    cpu.pv["xen_cr3"] = new
    m.h.emit(cpu.id, "xen_cr3", pfn=new[0])

    def run() -> None:
        # write_ptbase() -> switch_cr3_cr4(): a flushing CR3 write, which ticks
        # the TLB-flush clock (pre_flush()/post_flush())
        t = pre_flush(m)
        set_hw_cr3(cpu, mm)
        cpu.pv["tlbflush_time"] = t

    __xen_mc_entry(cpu, "MMUEXT_NEW_BASEPTR", run)
    xen_mc_callback(cpu, lambda: set_current_cr3(cpu, new))
    xen_mc_issue(cpu, XEN_LAZY_CPU)


# -- page-table writes and pinning ---------------------------------------------------

def set_pxd(cpu: Cpu, ptr: Ptr, val: int, why: str) -> None:
    """xen_set_pmd()/xen_set_pud()/xen_set_p4d(): a hypercall (queued in lazy
    MMU mode) for a pinned table, a plain store otherwise."""
    m = cpu.m
    if not ptr.frame.pinned:
        m.sw_write(cpu, ptr.frame, ptr.gen, ptr.idx, val, why)
        return

    def run() -> None:
        m.sw_write(cpu, ptr.frame, ptr.gen, ptr.idx, val, why + " (mmu_update)")

    __xen_mc_entry(cpu, "MMU_UPDATE", run)
    xen_mc_issue(cpu, XEN_LAZY_MMU)


def _set_pinned_state(m, f: Frame, gen: int, pinned: bool, what: str) -> None:
    if f.gen != gen or f.state != TABLE:
        m.h.emit(HW, "xen_pin_op_on_stale_frame", pfn=f.pfn, gen=gen, what=what)
    f.xen_pinned = pinned
    f.ro = pinned
    m.h.emit(HW, "xen_pin" if pinned else "xen_unpin", pfn=f.pfn, gen=f.gen)


def _alloc_ptpage(cpu: Cpu, mm: Mm, f: Frame) -> None:
    """xen_alloc_ptpage(): pin a table added to a pinned mm."""
    m = cpu.m
    if not mm.pgd.pinned:
        return
    if f.pinned:  # pinned = PagePinned(page); SetPagePinned(page); if (!pinned) ...
        return    # (a table re-pointed by mremap's move_normal_pmd() is already pinned)
    f.pinned = True
    gen = f.gen
    __xen_mc_entry(cpu, "update_va_mapping(RO)+PIN" if f.level == 1 else "update_va_mapping(RO)",
                   lambda: _set_pinned_state(m, f, gen, True, "alloc_ptpage"))
    xen_mc_issue(cpu, XEN_LAZY_MMU)


def alloc_pte(cpu: Cpu, mm: Mm, f: Frame) -> None:
    _alloc_ptpage(cpu, mm, f)


alloc_pmd = alloc_pud = alloc_pte


def _release_ptpage(cpu: Cpu, f: Frame) -> None:
    """xen_release_ptpage(): unpin and make writable a table being queued for
    freeing; ``PG_pinned`` is cleared now, the hypercall may be queued."""
    m = cpu.m
    if not f.pinned:
        return
    gen = f.gen
    __xen_mc_entry(cpu, "UNPIN+update_va_mapping(RW)" if f.level == 1 else "update_va_mapping(RW)",
                   lambda: _release_run(m, f, gen))
    xen_mc_issue(cpu, XEN_LAZY_MMU)
    f.pinned = False


def _release_run(m, f: Frame, gen: int) -> None:
    """What Xen does with xen_release_ptpage()'s multicall: MMUEXT_UNPIN_TABLE
    drops the last type reference (the guest cleared the parent entry just
    before: ``_put_final_page_type()`` stamps the page), then
    ``update_va_mapping(RW)`` takes a writable type reference: a type change,
    so ``_get_page_type()`` flushes the CPUs not flushed since the stamp."""
    _set_pinned_state(m, f, gen, False, "release_ptpage")
    if f.gen == gen and f.state == TABLE:
        set_tlbflush_timestamp(m, f)
        get_page_type_writable(m, [f], f"xen type change pfn {f.pfn:#x}")


def release_pte(cpu: Cpu, f: Frame) -> None:
    _release_ptpage(cpu, f)


release_pmd = release_pud = release_pte


def _tree(m, pgd: Frame) -> list[tuple[Frame, int]]:
    """__xen_pgd_walk(): every table of the tree, the pgd last."""
    out: list[tuple[Frame, int]] = []
    _walk(m, pgd, 4, out)
    return out


def _walk(m, f: Frame, level: int, out: list[tuple[Frame, int]]) -> None:
    # a module-level function, not a closure: a recursive closure is a reference
    # cycle that would keep the whole machine alive until the cycle collector runs
    if level > 1:
        for _, val in sorted(f.entries.items()):
            if is_table_entry(val):
                c = m.frames.get(entry_pfn(val))
                if c is not None and c.state == TABLE:
                    _walk(m, c, level - 1, out)
    out.append((f, f.gen))


def enter_mmap(cpu: Cpu, mm: Mm) -> None:
    """xen_enter_mmap() -> xen_pgd_pin(): pin the whole tree, issue at once."""
    m = cpu.m
    for f, gen in _tree(m, mm.pgd):
        f.pinned = True
        __xen_mc_entry(cpu, "pin", lambda f=f, gen=gen: _set_pinned_state(m, f, gen, True, "pgd_pin"))
    xen_mc_issue(cpu, 0)


def xen_pgd_unpin(cpu: Cpu, mm: Mm) -> None:
    """__xen_pgd_unpin(): UNPIN the pgd, make every table writable again.  Xen
    refuses while a vCPU's effective CR3 still holds the pgd: the tree stays
    pinned and read-only (the guest WARNs in xen_mc_flush(), seed S3)."""
    m = cpu.m
    pgd = mm.pgd
    tree = _tree(m, pgd)
    for f, _ in tree:
        f.pinned = False  # TestClearPagePinned() at queue time

    def run() -> None:
        users = tuple(c.id for c in m.cpus if c.cr3_pfn == pgd.pfn)
        if users:
            m.h.emit(HW, "xen_unpin_failed", pfn=pgd.pfn, gen=pgd.gen, mm=mm.id, cpus=users)
            return
        for f, gen in tree:
            _set_pinned_state(m, f, gen, False, "pgd_unpin")
        # MMUEXT_UNPIN_TABLE devalidated the whole tree (each table stamped),
        # then update_va_mapping(RW) of each: one filtered type-change flush
        live = [f for f, gen in tree if f.gen == gen and f.state == TABLE]
        for f in live:
            set_tlbflush_timestamp(m, f)
        get_page_type_writable(m, live, f"xen type change (pgd unpin, mm{mm.id})")

    __xen_mc_entry(cpu, "MMUEXT_UNPIN_TABLE(pgd)+update_va_mapping(RW)...", run)
    xen_mc_issue(cpu, 0)


def drop_mm_ref_this_cpu(cpu: Cpu, mm: Mm) -> None:
    """arch/x86/xen/mmu_pv.c: drop_mm_ref_this_cpu()."""
    if cpu.loaded_mm is mm:
        switch_mm_irqs_off_now(cpu, cpu.m.init_mm, "leave_mm (xen_drop_mm_ref)")
    if cpu.pv["xen_current_cr3"][0] == mm.pgd.pfn:
        xen_mc_flush(cpu)


def xen_drop_mm_ref(cpu: Cpu, mm: Mm) -> Step:
    """arch/x86/xen/mmu_pv.c: xen_drop_mm_ref(): every vCPU whose *effective*
    cr3 is this pgd gets a synchronous IPI."""
    m = cpu.m
    drop_mm_ref_this_cpu(cpu, mm)
    mask = 0
    for c in m.cpus:
        if c.pv["xen_current_cr3"][0] == mm.pgd.pfn:
            mask |= 1 << c.id
    yield from smp_call_function_many(cpu, mask, drop_mm_ref_this_cpu, mm, True, "drop_mm_ref_this_cpu")


def exit_mmap(cpu: Cpu, mm: Mm) -> Step:
    """arch/x86/xen/mmu_pv.c: xen_exit_mmap()."""
    preempt_disable(cpu)
    yield from xen_drop_mm_ref(cpu, mm)
    preempt_enable(cpu)
    yield from spin_lock(cpu, mm.page_table_lock, "xen_exit_mmap:page_table_lock")
    if mm.pgd.pinned:
        xen_pgd_unpin(cpu, mm)
    spin_unlock(cpu, mm.page_table_lock)


def pending(m) -> bool:
    return any(c.pv["mc"] or c.pv["cbs"] for c in m.cpus)


def quiesce(m) -> None:
    for c in m.cpus:
        if c.pv["mc"] or c.pv["cbs"]:
            m.h.emit(c.id, "bug", what="multicalls still queued at quiescence")
            xen_mc_flush(c)
