"""Planted bug (oracle test): a strategy that waits for a grace period with
``synchronize_rcu()`` inside ``tlb_flush_mmu_tlbonly()``, which
``zap_pte_range()`` calls with the PTL held when the page batch is full: a
sleeping function called from atomic context.  The 2026 fallback
(1fb3d8c20bfa) may sleep precisely because it is only called where sleeping
is allowed.  The CPU holding the spinlock is itself an RCU reader, so the grace
period never ends: a deadlock.
"""

from impls.machine.kernel import synchronize_rcu
from impls.machine.kernel import tlb_flush_mmu_tlbonly as _tlbonly
from impls.native.mmu_gather import *  # noqa: F401,F403  (the correct strategy, then one change)

NAME = "direct-synchronize-rcu-under-ptl"
SAFE_ON = ()


def tlb_flush_mmu_tlbonly(tlb):
    yield from _tlbonly(tlb)
    yield from synchronize_rcu(tlb.cpu)  # BUG: may be called under the PTL
