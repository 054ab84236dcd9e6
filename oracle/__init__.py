"""Judges histories: the absolute checks per run (oracle.check), the
differential comparison across strategies (oracle.divergence)."""

from .check import check_history
from .divergence import compare
from .verdict import CHECKS, Verdict, Violation

__all__ = ["CHECKS", "Verdict", "Violation", "check_history", "compare"]
