"""Where work units run: the one execution layer of every campaign.

A command cuts its work into units (fuzz.work: plain data) and hands them to
an :class:`Executor` through :func:`drive`; the executor runs each unit
somewhere and gives back its result.  Three backends, one interface:

* :class:`InProcess` (``--jobs 1``): in this process, one unit at a time;
* :class:`LocalPool` (``--jobs N``, the default: every core): N worker
  processes of this machine.  A worker killed by a signal or dying of
  anything else is *lost*: its unit is run again on a new worker (up to
  :data:`MAX_ATTEMPTS` times) and the loss is reported, not called a crash of
  the simulator.  Workers ignore SIGINT and SIGTERM (the parent decides when
  to stop and asks running units to return early) and die with their parent
  (``PR_SET_PDEATHSIG``), so no worker outlives a killed campaign;
* :class:`DaskCluster` (``--cluster tcp://host:8786`` or
  ``$SHOOTDOWN_CLUSTER``): the workers of an existing Dask ``distributed``
  cluster.  The scheduler re-runs the units of a worker that dies; the loss is
  reported from the changes of the worker list.

Units need *blobs* (content-addressed shared data: plug-in files, explore's
corpus hub); a backend sends each blob to a worker once.

:func:`drive` keeps an executor busy with the units of a :class:`Source` (what
a command implements: ``next_unit``, ``absorb``, ``finished``), so no command
has its own process handling.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import queue
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Protocol

from .work import run_unit

#: a unit whose worker died this many times is reported as failed
MAX_ATTEMPTS = 3
#: the environment variable naming a Dask scheduler (like --cluster)
CLUSTER_ENV = "SHOOTDOWN_CLUSTER"
#: most local workers --jobs may ask for, per core (more only contend)
MAX_JOBS_PER_CORE = 4
#: how long to try reaching a Dask scheduler
CONNECT_TIMEOUT = "20s"


class ExecutionError(Exception):
    """The executor cannot be set up (a one-line message)."""


@dataclass
class Done:
    ticket: int
    result: Any


@dataclass
class Failed:
    """A unit that could not be run (its workers kept dying)."""

    ticket: int
    error: str


@dataclass
class Lost:
    """A worker died; its unit, if it had one, is run again elsewhere."""

    description: str


Event = Done | Failed | Lost


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover  (not Linux)
        return max(1, os.cpu_count() or 1)


def check_jobs(jobs: int) -> int:
    """``--jobs``: at least 1, at most :data:`MAX_JOBS_PER_CORE` per core (a
    bigger campaign belongs on a cluster)."""
    cap = MAX_JOBS_PER_CORE * default_jobs()
    if jobs < 1:
        raise ExecutionError(f"--jobs {jobs}: must be at least 1")
    if jobs > cap:
        raise ExecutionError(f"--jobs {jobs}: at most {cap} on this machine ({default_jobs()} cores); "
                             "for more, run the campaign on a Dask cluster (--cluster)")
    return jobs


class Executor(Protocol):
    description: str
    lost: list[str]

    def capacity(self) -> int: ...
    def submit(self, unit: Any, blobs: dict[str, Any]) -> int: ...
    def poll(self, timeout: float) -> list[Event]: ...
    def cancel_pending(self) -> list[int]: ...
    def close(self) -> None: ...


def executor(jobs: int | None = None, cluster: str | None = None,
             should_stop: Callable[[], bool] = lambda: False) -> Executor:
    """The backend for ``--jobs``/``--cluster`` (or $SHOOTDOWN_CLUSTER)."""
    cluster = cluster or os.environ.get(CLUSTER_ENV) or None
    if cluster:
        return DaskCluster(cluster)
    jobs = check_jobs(jobs if jobs is not None else default_jobs())
    return InProcess(should_stop) if jobs == 1 else LocalPool(jobs, should_stop)


# -- in this process -------------------------------------------------------------------------------


class InProcess:
    """Units run one at a time, in this process, when polled."""

    def __init__(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.should_stop = should_stop
        self.pending: collections.deque[tuple[int, Any, dict[str, Any]]] = collections.deque()
        self.next_ticket = 0
        self.lost: list[str] = []
        self.description = "this process"
        self.workers = 1

    def capacity(self) -> int:
        return 1

    def submit(self, unit: Any, blobs: dict[str, Any]) -> int:
        self.next_ticket += 1
        self.pending.append((self.next_ticket, unit, blobs))
        return self.next_ticket

    def poll(self, timeout: float) -> list[Event]:
        if not self.pending:
            return []
        t, unit, blobs = self.pending.popleft()
        return [Done(t, run_unit(unit, blobs, self.should_stop))]

    def cancel_pending(self) -> list[int]:
        out = [t for t, _, _ in self.pending]
        self.pending.clear()
        return out

    def close(self) -> None:
        self.pending.clear()


# -- local worker processes ------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when the parent dies; elsewhere (or if the
    parent is already gone) the pipe's EOF ends the worker."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover
        pass
    if os.getppid() != parent:
        os._exit(1)


def _worker_main(conn: Any, stop_event: Any, parent: int) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    blobs: dict[str, Any] = {}
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "run":
                _, ticket, unit, new = msg
                blobs.update(new)
                res = run_unit(unit, blobs, stop_event.is_set)
                conn.send(("done", ticket, res))
            elif msg[0] == "forget":
                for k in msg[1]:
                    blobs.pop(k, None)
            else:
                break
    except (BrokenPipeError, KeyboardInterrupt):  # pragma: no cover  (the parent went away)
        pass
    finally:
        os._exit(0)  # no atexit handlers, no flushing of inherited buffers


@dataclass
class _Worker:
    proc: Any
    conn: Any
    has: set[str] = field(default_factory=set)
    busy: int | None = None


class LocalPool:
    """``jobs`` forked worker processes; units are dispatched to idle ones."""

    def __init__(self, jobs: int, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.ctx = mp.get_context("fork")
        self.jobs = jobs
        self.workers_n = jobs
        self.should_stop = should_stop
        self.stop_event = self.ctx.Event()
        self.pending: collections.deque[int] = collections.deque()
        self.units: dict[int, tuple[Any, dict[str, Any]]] = {}
        self.attempts: dict[int, int] = {}
        self.next_ticket = 0
        self.lost: list[str] = []
        self.description = f"{jobs} local worker processes"
        self.closing = False
        self.workers: list[_Worker] = [self._spawn() for _ in range(jobs)]

    def _spawn(self) -> _Worker:
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_worker_main, args=(child, self.stop_event, os.getpid()), daemon=True,
                             name="shootdown-worker")
        p.start()
        child.close()
        return _Worker(p, parent)

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    def capacity(self) -> int:
        return 2 * self.jobs

    def submit(self, unit: Any, blobs: dict[str, Any]) -> int:
        self.next_ticket += 1
        self.units[self.next_ticket] = (unit, blobs)
        self.pending.append(self.next_ticket)
        return self.next_ticket

    def _dispatch(self, events: list[Event]) -> None:
        for w in self.workers:
            if not self.pending:
                return
            if w.busy is not None or not w.proc.is_alive():
                continue
            t = self.pending.popleft()
            unit, blobs = self.units[t]
            new = {k: v for k, v in blobs.items() if k not in w.has}
            try:
                w.conn.send(("run", t, unit, new))
            except (BrokenPipeError, OSError):
                self.pending.appendleft(t)
                continue  # it died: the next poll sees it
            w.has.update(new)
            w.busy = t

    def poll(self, timeout: float) -> list[Event]:
        events: list[Event] = []
        if self.should_stop():
            self.stop_event.set()
        self._dispatch(events)
        waitables: dict[Any, _Worker] = {}
        for w in self.workers:
            waitables[w.proc.sentinel] = w
            if w.busy is not None:
                waitables[w.conn] = w
        ready = wait(list(waitables), timeout) if waitables else []
        dead: list[_Worker] = []
        for obj in ready:
            w = waitables[obj]
            if obj is w.conn:
                try:
                    kind, t, res = w.conn.recv()
                except (EOFError, OSError):
                    if w not in dead:
                        dead.append(w)
                    continue
                w.busy = None
                self.units.pop(t, None)
                events.append(Done(t, res))
            elif w not in dead:
                w.proc.join(timeout=0.1)
                if not w.proc.is_alive():
                    dead.append(w)
        for w in dead:
            self._lost(w, events)
        self._dispatch(events)
        return events

    def _lost(self, w: _Worker, events: list[Event]) -> None:
        w.proc.join(timeout=1.0)
        code = w.proc.exitcode
        how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exited with status {code}")
        desc = f"worker process {w.proc.pid} {how}"
        t = w.busy
        if t is not None and t in self.units:
            n = self.attempts[t] = self.attempts.get(t, 0) + 1
            if n >= MAX_ATTEMPTS:
                self.units.pop(t, None)
                events.append(Failed(t, f"a unit lost its worker {n} times (last: {desc})"))
                desc += f"; its unit failed {n} times and was given up"
            else:
                self.pending.appendleft(t)
                desc += "; its unit runs again on another worker"
        self.lost.append(desc)
        events.append(Lost(desc))
        try:
            w.conn.close()
        except OSError:  # pragma: no cover
            pass
        i = self.workers.index(w)
        if self.closing:
            self.workers.pop(i)
        else:
            self.workers[i] = self._spawn()

    def cancel_pending(self) -> list[int]:
        out = list(self.pending)
        self.pending.clear()
        for t in out:
            self.units.pop(t, None)
        return out

    def forget(self, keys: list[str]) -> None:
        """Blobs no unit will need again: the workers drop them."""
        for w in self.workers:
            gone = [k for k in keys if k in w.has]
            if gone and w.busy is None:
                try:
                    w.conn.send(("forget", gone))
                    w.has.difference_update(gone)
                except OSError:  # pragma: no cover
                    pass

    def close(self, grace: float = 5.0) -> None:
        """Stop every worker: idle ones at once, busy ones after ``grace``
        seconds (their units were asked to return early), then by force."""
        self.closing = True
        self.pending.clear()
        self.stop_event.set()
        for w in self.workers:
            try:
                w.conn.send(("exit",))
            except OSError:
                pass
        deadline = time.monotonic() + grace
        for w in self.workers:
            w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=5.0)
            try:
                w.conn.close()
            except OSError:  # pragma: no cover
                pass


# -- a Dask distributed cluster ------------------------------------------------------------------------


def _dask_task(unit: Any, keys: list[str], *values: Any) -> Any:
    """What a Dask worker runs: the unit, with its blobs (Dask moved them there)."""
    return run_unit(unit, dict(zip(keys, values, strict=True)))


class DaskCluster:
    """Units as tasks of an existing Dask ``distributed`` cluster."""

    def __init__(self, address: str, client: Any = None) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise ExecutionError("--cluster needs the 'distributed' package: pip install 'shootdown[cluster]' "
                                 "(or pip install distributed)") from None
        try:
            self.client = client or Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise ExecutionError(f"cannot reach the Dask scheduler at {address}: {e}") from None
        self.address = address
        self.lost: list[str] = []
        self.futures: dict[int, Any] = {}
        self.done_q: queue.Queue[int] = queue.Queue()
        self.scattered: dict[str, Any] = {}
        self.next_ticket = 0
        self.prefix = uuid.uuid4().hex[:8]
        self._known = set(self._workers())
        self._slots = self._count_slots()
        self._checked = time.monotonic()
        self.description = f"Dask cluster {address} ({len(self._known)} workers, {self._slots} threads)"
        self.workers_n = len(self._known)

    def _workers(self) -> dict[str, int]:
        return dict(self.client.nthreads())

    def _count_slots(self) -> int:
        return max(1, sum(self._workers().values()))

    def capacity(self) -> int:
        return 2 * self._slots

    def _scatter(self, key: str, value: Any) -> Any:
        fut = self.scattered.get(key)
        if fut is None:
            fut = self.client.scatter({f"shootdown-blob-{key}": value}, hash=False)[f"shootdown-blob-{key}"]
            self.scattered[key] = fut
        return fut

    def submit(self, unit: Any, blobs: dict[str, Any]) -> int:
        self.next_ticket += 1
        t = self.next_ticket
        keys = sorted(blobs)
        futs = [self._scatter(k, blobs[k]) for k in keys]
        fut = self.client.submit(_dask_task, unit, keys, *futs, pure=False, key=f"shootdown-unit-{self.prefix}-{t}")
        fut.add_done_callback(lambda _f, t=t: self.done_q.put(t))
        self.futures[t] = fut
        return t

    def _watch_workers(self, events: list[Event], force: bool = False) -> None:
        now = time.monotonic()
        if now - self._checked < 1.0 and not force:
            return
        self._checked = now
        try:
            workers = self._workers()
        except Exception:  # pragma: no cover  (the scheduler is busy: next time)
            return
        for addr in sorted(self._known - set(workers)):
            desc = f"worker {addr} left the cluster; the scheduler runs its units again elsewhere"
            self.lost.append(desc)
            events.append(Lost(desc))
        self._known = set(workers)
        self.workers_n = len(workers)
        self._slots = max(1, sum(workers.values()))

    def poll(self, timeout: float) -> list[Event]:
        events: list[Event] = []
        self._watch_workers(events)
        deadline = time.monotonic() + timeout
        while True:
            try:
                t = self.done_q.get(timeout=max(0.0, deadline - time.monotonic()) if not events else 0.0)
            except queue.Empty:
                break
            fut = self.futures.pop(t, None)
            if fut is None:
                continue
            if fut.status == "finished":
                events.append(Done(t, fut.result()))
            elif fut.status == "error":
                exc = fut.exception()
                events.append(Failed(t, f"{type(exc).__name__}: {exc}"))
        return events

    def check_workers(self) -> None:
        """Look at the worker list now (the summary's lost workers are up to date)."""
        self._watch_workers([], force=True)

    def cancel_pending(self) -> list[int]:
        out = list(self.futures)
        if out:
            self.client.cancel(list(self.futures.values()))
            self.futures.clear()
        return out

    def forget(self, keys: list[str]) -> None:
        for k in keys:
            self.scattered.pop(k, None)

    def close(self) -> None:
        self.cancel_pending()
        self.scattered.clear()
        self.client.close()


# -- driving an executor ------------------------------------------------------------------------------------


class Source(Protocol):
    """What a command gives :func:`drive`."""

    def next_unit(self) -> tuple[Any, dict[str, Any], Any] | None:
        """(unit, its blobs, a tag for :meth:`absorb`), or None: nothing to submit now."""

    def absorb(self, tag: Any, result: Any) -> None: ...

    def failed(self, tag: Any, error: str) -> None: ...

    def finished(self) -> bool:
        """Nothing more to submit and nothing more expected."""


def drive(ex: Executor, source: Source, on_lost: Callable[[str], None] | None = None,
          tick: Callable[[], None] | None = None, abandon: Callable[[], bool] = lambda: False) -> None:
    """Run ``source``'s units on ``ex`` until it is finished (or ``abandon()``:
    the units in flight are then dropped)."""
    inflight: dict[int, Any] = {}
    while True:
        while len(inflight) < ex.capacity():
            item = source.next_unit()
            if item is None:
                break
            unit, blobs, tag = item
            inflight[ex.submit(unit, blobs)] = tag
        if not inflight and source.finished():
            return
        if abandon():
            for t in ex.cancel_pending():
                inflight.pop(t, None)
            return
        for ev in ex.poll(0.2):
            if isinstance(ev, Done):
                tag = inflight.pop(ev.ticket, None)
                if tag is not None:
                    source.absorb(tag, ev.result)
            elif isinstance(ev, Failed):
                tag = inflight.pop(ev.ticket, None)
                if tag is not None:
                    source.failed(tag, ev.error)
            elif on_lost is not None:
                on_lost(ev.description)
        if tick is not None:
            tick()
        if not inflight:
            if source.finished():
                return
            time.sleep(0.05)  # waiting for the source (a deadline, a barrier)
