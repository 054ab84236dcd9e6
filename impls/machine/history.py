"""The history a run emits: an append-only list of events.

Oracles read histories; they never reach into a live machine.  An event is a
small immutable record: a sequence number, the agent that caused it (a CPU
number, ``-1`` for the RCU agent, ``-2`` for the hypervisor or hardware acting
on its own), a kind, and a mapping of attributes.  The attribute mapping is a
plain dict for speed; nothing mutates it after :meth:`History.emit`.

The vocabulary of kinds is documented in ``ARCHITECTURE.md`` ("Events"); each
kind is emitted in exactly one place of the machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

HW = -2  #: agent id for events caused by hardware/hypervisor, not a CPU's code


class Event(NamedTuple):
    seq: int
    cpu: int
    kind: str
    a: dict[str, Any]

    def __getattr__(self, name: str) -> Any:  # ev.pfn instead of ev.a["pfn"]
        try:
            return self.a[name]
        except KeyError:
            raise AttributeError(name) from None

    def brief(self) -> str:
        who = {-1: "rcu", -2: "hw", -3: "iommu"}.get(self.cpu, f"cpu{self.cpu}")
        args = " ".join(f"{k}={v}" if k in COUNTS else f"{k}={_fmt(v)}" for k, v in self.a.items())
        return f"#{self.seq} {who} {self.kind} {args}".rstrip()


#: attributes that count things: always decimal (others >= 0x1000 are addresses or values: hex)
COUNTS = frozenset({"steps", "gen", "idx", "op", "id", "live", "nr", "level", "state"})


def _fmt(v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0x1000:
        return hex(v)
    if isinstance(v, tuple):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


#: ``new_event(Event, (seq, cpu, kind, attrs))``: skips NamedTuple's
#: Python-level __new__ on the hot path (the machine's hottest emitters
#: append ``new_event(Event, (len(events), ...))`` to ``History.events``
#: themselves: the same event as :meth:`History.emit_attrs`)
new_event = _new_event = tuple.__new__


class History:
    """Append-only event log of one run (on one strategy and platform)."""

    __slots__ = ("events", "strategy", "platform", "meta")

    def __init__(self, strategy: str = "", platform: str = "") -> None:
        self.events: list[Event] = []
        self.strategy = strategy
        self.platform = platform
        self.meta: dict[str, Any] = {}

    def emit(self, cpu: int, kind: str, **a: Any) -> Event:
        events = self.events
        ev = _new_event(Event, (len(events), cpu, kind, a))
        events.append(ev)
        return ev

    def emit_attrs(self, cpu: int, kind: str, a: dict[str, Any]) -> Event:
        """:meth:`emit` with the attributes as a dict (``{"pfn": ..., ...}``):
        the same event, for the hottest call sites, where packing keyword
        arguments is a large part of the cost of an event."""
        events = self.events
        ev = _new_event(Event, (len(events), cpu, kind, a))
        events.append(ev)
        return ev

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, i: int) -> Event:
        return self.events[i]

    def of_kind(self, *kinds: str) -> list[Event]:
        return [e for e in self.events if e.kind in kinds]

    def fingerprint(self) -> list[str]:
        """A canonical, hash-free rendering used by the determinism test."""
        return [e.brief() for e in self.events]
