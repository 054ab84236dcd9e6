"""Judges histories: the absolute checks per run (oracle.check), the
differential comparison across strategies (oracle.divergence)."""

import impls  # noqa: F401  (first: SHOOTDOWN_PURE=1 takes effect before a compiled check loads)

from .check import check_history
from .divergence import compare
from .verdict import CHECKS, Verdict, Violation

__all__ = ["CHECKS", "Verdict", "Violation", "check_history", "compare"]
