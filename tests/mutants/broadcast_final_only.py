"""Planted bug: every INVLPGB is issued with ``INVLPGB_FINAL_ONLY``, also when
page tables are being freed, so the broadcast flush drops leaf TLB entries but
leaves every CPU's paging-structure caches pointing at the freed tables.

Kernel: "[PATCH v11 12/12] x86/mm: only invalidate final translations with
INVLPGB" (Rik van Riel, 2025-02-13, message-id
20250213161423.449435-13-riel@surriel.com): "Use the INVLPGB_FINAL_ONLY flag
when invalidating mappings with INVPLGB ... On the (rare) occasions where we
free page tables we do a full flush, ensuring intermediate translations get
flushed from the TLB" -- the patch passes ``info->freed_tables`` down to
``__invlpgb_flush_user_nr_nosync()`` and sets the flag only without it.  This
mutant is the patch without that condition.

Built from the correct broadcast platform.
"""

from dataclasses import replace
from pathlib import Path

from impls.machine.plugin import load_module_file
from impls.platforms import broadcast as correct

NAME = "broadcast-final-only"
PLANTED = {"env": "broadcast", "kind": "platform", "check": "stale-psc", "strategy": "full-rcu"}


def invlpgb_flush_nosync(cpu, info):
    """invlpgb_flush_user_nr_nosync()."""
    # BUG: INVLPGB_FINAL_ONLY even with info->freed_tables
    correct.invlpgb_flush_nosync(cpu, replace(info, freed_tables=False))


load_module_file(Path(__file__).with_name("_rebind.py"), "helper").rebind(correct, globals())
