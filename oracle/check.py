"""Judging one history: one pass over the events, every check seeing each
event against the shadow state before it is applied."""

from __future__ import annotations

from collections import defaultdict

from impls.machine.history import Event, History

from .accounting import AccountingCheck, KernelBugCheck
from .bad_walk import BadWalkCheck
from .base import Check, Handler
from .behaviours import Behaviours
from .ordering import OrderingCheck
from .pins import GupPinCheck, XenPinCheck
from .shadow import Shadow
from .stale import StaleCheck
from .table_uaf import TableUafCheck
from .verdict import Verdict

CHECK_CLASSES: tuple[type[Check], ...] = (
    StaleCheck, TableUafCheck, GupPinCheck, XenPinCheck, OrderingCheck, AccountingCheck,
    KernelBugCheck, BadWalkCheck,
)


def check_history(history: History) -> Verdict:
    strategy = history.strategy
    sh = Shadow()
    checks = [cls(strategy) for cls in CHECK_CLASSES]
    dispatch: dict[str, list[Handler]] = {}
    for c in checks:
        for kind, fn in c.handlers().items():
            dispatch.setdefault(kind, []).append(fn)
    beh = Behaviours()
    for kind, fn in beh.handlers().items():
        dispatch.setdefault(kind, []).append(fn)
    # the shadow update comes last: checks see the state before the event
    for kind, fn in sh.updaters().items():
        dispatch.setdefault(kind, []).append(fn)
    # a kind no check handles gets its empty tuple on first sight
    table: defaultdict[str, tuple[Handler, ...]] = defaultdict(tuple, {k: tuple(v) for k, v in dispatch.items()})
    for ev in history.events:
        for fn in table[ev[2]]:
            fn(ev, sh)
    final: Event | None = None
    events = history.events
    for i in range(len(events) - 1, -1, -1):  # (not reversed(): mypyc 2.4 crashes on it here)
        if events[i].kind == "final":
            final = events[i]
            break
    for c in checks:
        c.finish(sh, final)
    violations = [v for c in checks for v in c.violations]
    violations.sort(key=lambda v: (v.witness[-1].seq if v.witness else 0, v.check))
    return Verdict(strategy, history.platform, history.meta.get("outcome", "?"), violations,
                   dict(sorted(beh.counts.items())))
