"""User accesses and speculative walks: what the CPU's hardware does.

* ``access``: a user load/store.  A TLB hit is used as is (this is where a
  stale TLB entry is *used*); a miss walks the tables through the PSC
  (``hw_walk``); a missing translation raises a page fault
  (arch/x86/mm/fault.c: do_user_addr_fault() -> handle_mm_fault() under the
  mmap lock) and the instruction is retried.
* ``spec_walk``: the hardware may walk speculatively whenever CR3 holds a user
  pgd, lazy-TLB mode included (b956575bed91); it fills the TLB and PSC.
"""

from __future__ import annotations

from .cpu import Cpu, Step, down_read, up_read
from .memory import handle_mm_fault
from .page_alloc import DATA, FREE
from .pgtable import PAGE_SIZE
from .tlb import hw_walk, tlb_lookup

MAX_FAULT_RETRIES = 4


def access(cpu: Cpu, op) -> Step:
    m = cpu.m
    mm = cpu.current_mm
    if mm is None:
        return "skipped: kernel thread"
    addr = op.addr & ~(PAGE_SIZE - 1)
    for _ in range(MAX_FAULT_RETRIES):
        hit = tlb_lookup(cpu.tlb, addr)
        if hit is None or (op.write and not hit[2]):
            hit = hw_walk(cpu, cpu.id, cpu.tlb, cpu.psc, cpu.cr3_pfn, cpu.cr3_gen, addr, "access")
        if hit is not None and (hit[2] or not op.write):
            pfn, gen, _ = hit
            m.h.emit(cpu.id, "tlb_use", va=addr, pfn=pfn, gen=gen, write=op.write, via="access")
            f = m.frames.get(pfn)
            if op.write and f is not None and f.state == DATA and f.gen == gen:
                f.data = m.h.events[-1].seq  # the value written: this access's id
            return f"pfn {pfn:#x}"
        # page fault
        yield "access:page_fault"
        yield from down_read(cpu, mm.mmap_lock)
        if mm.find_vma(addr) is None:
            up_read(cpu, mm.mmap_lock)
            return "SIGSEGV"
        res = yield from handle_mm_fault(cpu, mm, addr, op.write)
        up_read(cpu, mm.mmap_lock)
        m.h.emit(cpu.id, "fault_done", addr=addr, result=res)
        yield "access:fault_done"
    return "gave up after retries"


def populate(cpu: Cpu, op) -> Step:
    """MAP_POPULATE-like: fault in every page of [addr, addr+len)."""
    m = cpu.m
    mm = cpu.current_mm
    if mm is None:
        return "skipped: kernel thread"
    n = 0
    for addr in range(op.addr, op.addr + op.len, PAGE_SIZE):
        yield from down_read(cpu, mm.mmap_lock)
        if mm.find_vma(addr) is not None:
            yield from handle_mm_fault(cpu, mm, addr, True)
            n += 1
        up_read(cpu, mm.mmap_lock)
        yield "populate:page"
    m.h.emit(cpu.id, "populated", pages=n)
    return f"{n} pages"


def spec_walk(cpu: Cpu, op) -> Step:
    """A speculative page walk through whatever CR3 holds (lazy or not)."""
    m = cpu.m
    hit = hw_walk(cpu, cpu.id, cpu.tlb, cpu.psc, cpu.cr3_pfn, cpu.cr3_gen, op.addr, "speculative")
    yield "spec_walk:done"
    if hit is None:
        return "no translation"
    f = m.frames.get(hit[0])
    return f"filled pfn {hit[0]:#x}" + ("" if f is None or f.state != FREE else " (free frame)")
