"""Strategy ``direct``: native direct free (see mmu_gather.py)."""
