"""Everything that executes: the simulated machine, the platforms, the
strategies, and the registry of built-ins."""

from ._pure import install as _install_pure

_install_pure()  # SHOOTDOWN_PURE=1: the .py files, not a compiled build (impls/_pure.py)
