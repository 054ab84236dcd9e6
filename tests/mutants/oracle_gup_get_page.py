"""Planted bug for the oracle tests: GUP-fast takes its reference with a plain
``get_page()`` instead of the add-unless-zero ``try_grab_folio_fast()``, and
returns the page without a re-check.  Where the flush does not wait for the
IRQ-off walker (Xen PV), the page is freed between the PTE read and the
reference: a reference on a free page, which I6 forbids whatever the walker
returns.

Kernel: the speculative reference became add-unless-zero (``get_page_unless_zero()``,
``page_cache_get_speculative()``) with the generic RCU GUP-fast, 2667f50e8b81
"mm: introduce a general RCU get_user_pages_fast()" (v3.18), because without
an IPI the page may be freed under the walker; x86's own ``gup_pte_range()``
kept a plain ``get_page()`` until v4.13 ("x86, mm, gup: prevent get_page() race
with munmap in paravirt guest" fixed it in stable kernels).

Built from the correct full-RCU strategy: only ``gup_fast`` differs.
"""

from pathlib import Path

from impls.machine.cpu import local_irq_restore, local_irq_save, rcu_read_lock
from impls.machine.gup import WHO
from impls.machine.pgtable import entry_pfn, entry_present, entry_writable, index, is_table_entry
from impls.machine.pgtable_generic import child_of, pte_unmap
from impls.machine.plugin import load_module_file
from impls.pt_reclaim import mmu_gather as correct

NAME = "oracle-gup-get-page"


def gup_fast(cpu, mm, addr, write):
    """mm/gup.c: gup_fast() for one page, with a plain get_page()."""
    m = cpu.m
    local_irq_save(cpu)
    yield f"{WHO}:irq_off"
    f, gen = mm.pgd, mm.pgd_gen
    for level in (4, 3, 2):
        val = m.sw_read(cpu, f, gen, index(level, addr), WHO)
        child = child_of(cpu, val) if is_table_entry(val) else None
        if child is None:
            local_irq_restore(cpu)
            return None
        f, gen = child
        yield f"{WHO}:l{level}_read"
    rcu_read_lock(cpu)
    pte = m.sw_read(cpu, f, gen, index(1, addr), WHO)
    page = m.frames.get(entry_pfn(pte)) if entry_present(pte) else None
    if page is None or (write and not entry_writable(pte)):
        pte_unmap(cpu)
        local_irq_restore(cpu)
        return None
    yield f"{WHO}:pte_read"
    page.refcount += 1  # BUG: get_page(), not add-unless-zero
    m.h.emit(cpu.id, "gup_grab", mm=mm.id, addr=addr, pfn=page.pfn, gen=page.gen)
    pte_unmap(cpu)
    local_irq_restore(cpu)
    return page


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
