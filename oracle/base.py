"""What every check shares: handlers per event kind, a deduplicating report."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from impls.machine.history import Event

from .shadow import Shadow
from .verdict import Violation

Handler = Callable[[Event, Shadow], None]


class Check:
    """A check sees each event (with the shadow state *before* it) through
    the handlers it registers, and the final state at the end."""

    def __init__(self, strategy: str) -> None:
        self.strategy = strategy
        self.violations: list[Violation] = []
        self._seen: set[Any] = set()

    def handlers(self) -> dict[str, Handler]:
        return {}

    def finish(self, shadow: Shadow, final: Event | None) -> None:
        pass

    def report(self, check: str, key: Any, summary: str, witness: Iterable[Event | None],
               **extra: Any) -> None:
        if (check, key) in self._seen:
            return
        self._seen.add((check, key))
        wit = tuple(sorted({e.seq: e for e in witness if e is not None}.values(), key=lambda e: e.seq))
        self.violations.append(Violation(check, self.strategy, summary, wit, extra))
