"""Planted bug: ``gup_fast_pmd_leaf()`` without its re-check: GUP-fast takes
a reference on the THP folio a huge PMD mapped when it read it, and returns
it even if the PMD changed before the reference was taken.

Kernel: the leaf re-check is as old as the generic RCU GUP-fast, 2667f50e8b81
"mm: introduce a general RCU get_user_pages_fast()" (v3.18):
``if (unlikely(pmd_val(orig) != pmd_val(*pmdp))) { ... put_page(head); return 0; }``
in ``gup_huge_pmd()``; v6.15's ``gup_fast_pmd_leaf()`` keeps it (``gup_put_folio()``
on a mismatch).  Where the flush does not wait for the walker (Xen PV,
INVLPGB), a concurrent ``munmap()``/``MADV_DONTNEED`` zaps the huge PMD
(``zap_huge_pmd()``), flushes and frees the folio at once; the frame is
reallocated before the walker's add-unless-zero, which then succeeds, and the
caller is handed a pin on somebody else's page (I6).

Built from the correct full-RCU strategy: only ``gup_fast_pmd_leaf()`` of the
machine's mm/gup.c copy differs.
"""

from pathlib import Path

from impls.machine import gup as machine_gup
from impls.machine.gup import WHO, try_grab_folio_fast
from impls.machine.pgtable import entry_pfn, pmd_access_permitted
from impls.machine.pgtable_generic import walker_pmd_leaf
from impls.machine.plugin import load_module_file
from impls.pt_reclaim import mmu_gather as correct

NAME = "gup-fast-pmd-leaf-no-recheck"
PLANTED = {"env": "xen-pv+thp", "kind": "strategy", "check": "leaked-gup-pin"}


def gup_fast_pmd_leaf(cpu, orig, pmdp, addr, write):
    """mm/gup.c: gup_fast_pmd_leaf()."""
    m = cpu.m
    walker_pmd_leaf(cpu, WHO, orig, addr)
    if not pmd_access_permitted(orig, write):
        return None
    yield f"{WHO}:pmd_read"
    folio = m.frames.get(entry_pfn(orig))
    if folio is None or not try_grab_folio_fast(cpu, folio, addr):
        return None
    yield f"{WHO}:grabbed"
    # BUG: no re-check that the PMD still holds orig
    return folio


_rebind = load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind
_rebind(machine_gup, globals())  # gup_fast() & co., calling the gup_fast_pmd_leaf() above
_rebind(correct, globals())
