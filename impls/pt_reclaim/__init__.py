"""Strategy ``full-rcu``: full RCU table freeing under PT_RECLAIM (see mmu_gather.py)."""
