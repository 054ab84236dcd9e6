"""Built-in platforms (flush mechanisms): native IPIs, Xen PV hypercalls,
broadcast INVLPGB/TLBSYNC.  Each module implements the protocol of
impls/machine/platform.py."""
