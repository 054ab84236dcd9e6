"""Strategy ``semi-rcu``: Xen semi-RCU table freeing (see mmu_gather.py)."""
