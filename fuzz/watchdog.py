"""The per-program watchdog: a hook that loops without yielding is stopped
and reported (which hook, in which file and line, on which strategy), instead
of hanging a campaign past its budget.

fuzz.run.run_program arms it around every run of a program on a strategy,
whatever the engine or the command; fuzz.work reports the program's position
and seed with it.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from impls.machine.plugin import Ops

#: CPU seconds one program may take on one strategy before the watchdog stops
#: it (a 128-operation program takes a few milliseconds)
WATCHDOG_SECONDS = 20.0


class HookTimeout(BaseException):
    """Raised inside a run whose program took more CPU time than the watchdog
    allows (a hook looping without yielding).  A BaseException, so that no
    ``except Exception`` of the simulator or of a plug-in swallows it."""


class Watchdog:
    """One per process: :meth:`arm` before a program runs, :meth:`disarm`
    after.  A monitor thread reads the armed thread's CPU clock and, past the
    limit (or past 5x the limit of wall time, for a hook that sleeps), raises
    :class:`HookTimeout` in it (``PyThreadState_SetAsyncExc``: delivered at
    the next bytecode, so a pure-Python loop is stopped wherever it is)."""

    def __init__(self) -> None:
        self.limit = WATCHDOG_SECONDS
        self._armed: tuple[int, int, float, float] | None = None
        self._pid = -1
        self._wake: threading.Event | None = None
        self.fired = 0

    def _start(self) -> None:
        self._pid = os.getpid()
        self._wake = threading.Event()
        threading.Thread(target=self._monitor, name="shootdown-watchdog", daemon=True).start()

    def arm(self) -> None:
        if self.limit <= 0:
            return
        if self._pid != os.getpid():  # first use in this process (or a fork of it)
            self._start()
        tid = threading.get_ident()
        clk = time.pthread_getcpuclockid(tid)
        self._armed = (tid, clk, time.clock_gettime(clk) + self.limit, time.monotonic() + 5 * self.limit)

    def disarm(self) -> None:
        self._armed = None

    def _monitor(self) -> None:
        pid = os.getpid()
        while os.getpid() == pid:
            armed = self._armed
            step = min(0.25, max(0.01, self.limit / 20))
            if armed is not None:
                tid, clk, cpu_deadline, wall_deadline = armed
                try:
                    late = time.clock_gettime(clk) > cpu_deadline or time.monotonic() > wall_deadline
                except OSError:  # the thread is gone
                    late = False
                if late and self._armed is armed:
                    self._armed = None
                    self.fired += 1
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(HookTimeout))
            assert self._wake is not None
            self._wake.wait(step)


WATCHDOG = Watchdog()


def watchdog_report(tb: Any, strategies: Iterable[Ops], platform: Ops | None) -> dict[str, Any]:
    """Which hook was running when the watchdog fired: the innermost frame in a
    plug-in file or a built-in strategy/platform module, else the innermost."""
    frames = traceback.extract_tb(tb)
    sources = {str(Path(o.source).resolve()): o for o in [*strategies, *([platform] if platform else [])]
               if str(o.source).endswith(".py")}
    builtin = ("impls/native/", "impls/xen_semi_rcu/", "impls/pt_reclaim/", "impls/platforms/")
    pick = None
    for fr in reversed(frames):
        path = str(Path(fr.filename).resolve())
        if path in sources or any(b in path.replace(os.sep, "/") for b in builtin):
            pick = fr
            break
    pick = pick or (frames[-1] if frames else None)
    strategy = ""
    t = tb
    while t is not None:  # the strategy whose run it was (fuzz.run.run_program's argument)
        if t.tb_frame.f_code.co_name == "run_program":
            s = t.tb_frame.f_locals.get("strategy")
            strategy = getattr(s, "name", "") or strategy
        t = t.tb_next
    return {"hook": pick.name if pick else "?", "file": Path(pick.filename).name if pick else "?",
            "line": pick.lineno if pick else 0, "strategy": strategy, "limit": WATCHDOG.limit}


