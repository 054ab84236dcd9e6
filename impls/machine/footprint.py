"""Per-step read/write footprints of the machine's shared state, for the
exhaustive explorer's partial-order reduction (``fuzz/exhaustive.py``).

Two steps of different agents may be reordered only if neither writes what the
other reads or writes, and neither changes whether the other can run.  Getting
that wrong makes the explorer skip executions, so the footprint is recorded
*by construction*, not from a per-operation table:

* while a :class:`Tracer` is installed, every class defined in ``impls.*`` or in
  a loaded strategy/platform file (every object of the simulated machine:
  frames and their table entries, CPUs with their TLB/PSC and IPI queues, mms,
  locks, RCU, csds, flush infos, secondary MMUs, whatever a new kernel path
  adds) gets an attribute hook: each attribute read of an object is a read of
  the location ``(object serial, attribute)``, each assignment a write;
* an attribute whose value is a mutable builtin container (the ``entries`` of a
  table, a CPU's ``tlb`` dict, ``ipi`` deque, the platform's ``pv`` dicts with
  Xen multicall queues or INVLPGBs in flight) is snapshotted when first read in
  a step and compared at the end of the step: if it (or anything nested in it)
  changed, the step also wrote that location;
* a container can also be reached without an attribute read if a CPU's code kept
  a reference to it across a preemption point (a generator local, or a closure
  such as a ``wait_until`` predicate).  After every step the agent's suspended
  frames are scanned; while it holds such a reference its steps are *opaque*:
  dependent with every other step;
* a step that touches an object the tracer cannot name (created before the
  tracer was installed, by a class outside ``impls``) uses one shared location
  per attribute name, so two such steps conflict;
* whether an agent can run (its ``wait`` predicate, pending IPIs, RCU's
  blockers) is evaluated under the tracer too: those reads are the agent's
  *enabling* footprint, so a step that could enable or disable another agent
  conflicts with it.

What is not traced, and why that is sound: the :class:`History` (write-only for
the simulator: the oracle reads it after the run, see ARCHITECTURE.md for the
argument about the oracle), the choice source (the explorer's own), frozen
dataclasses (immutable: ``Program``, ``Op``, ``Schedule``) and module globals
(the simulator keeps no state there; the determinism rule forbids it).

Object serials are creation order, which is deterministic for a given prefix
of choices, so footprints recorded in one execution compare with those of
another execution that shares the prefix.  An object created after the two
executions diverged may get the serial of a different object in the other one;
that can only add conflicts, never hide one.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from collections import deque
from collections.abc import Iterable
from typing import Any

from impls._pure import compiled_loaded

#: the location every step conflicts with (an opaque step)
ALL = ("*", "*")

_CONTAINERS = (dict, list, set, deque, bytearray)


class _CTypes(dict):
    """type -> is it a mutable builtin container (subclasses included)."""

    def __missing__(self, t: type) -> bool:
        v = self[t] = issubclass(t, _CONTAINERS)
        return v

    def __contains__(self, t: object) -> bool:  # type: ignore[override]
        return self[t]  # type: ignore[index]


_CTYPES = _CTypes()
_ATOMS = (int, str, float, bool, bytes, type(None), complex, range)


class Footprint:
    """What one step (or one enabledness test) read and wrote."""

    __slots__ = ("reads", "writes", "opaque")

    def __init__(self, reads: frozenset = frozenset(), writes: frozenset = frozenset(),
                 opaque: bool = False) -> None:
        self.reads = reads
        self.writes = writes
        self.opaque = opaque

    def conflicts(self, other: Footprint) -> bool:
        if self.opaque or other.opaque:
            return True
        w = self.writes
        ow = other.writes
        return not (w.isdisjoint(other.reads) and w.isdisjoint(ow) and ow.isdisjoint(self.reads))

    def to_json(self) -> list:
        return [sorted(map(list, self.reads)), sorted(map(list, self.writes)), self.opaque]

    @classmethod
    def from_json(cls, j: list) -> Footprint:
        return cls(frozenset(map(tuple, j[0])), frozenset(map(tuple, j[1])), bool(j[2]))


def union(fps: Iterable[Footprint]) -> Footprint:
    r: set = set()
    w: set = set()
    op = False
    for f in fps:
        r |= f.reads
        w |= f.writes
        op = op or f.opaque
    return Footprint(frozenset(r), frozenset(w), op)


def _excluded(cls: type) -> bool:
    from .choices import Choices
    from .history import History
    from .plugin import Ops
    if issubclass(cls, (BaseException, Choices, History, Ops, tuple)) or cls in (Footprint, Tracer):
        return True
    if isinstance(cls, type) and issubclass(cls, type):
        return True
    params = getattr(cls, "__dataclass_params__", None)
    if params is not None and params.frozen:
        return True
    import enum
    return issubclass(cls, enum.Enum)


def _state_classes() -> list[type]:
    """Every class of the simulator: defined in ``impls.*`` or in a strategy or
    platform file loaded by path (``_shootdown_*`` modules)."""
    out = []
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name.startswith("impls.") or name.startswith("_shootdown_")):
            continue
        for v in list(vars(mod).values()):
            if isinstance(v, type) and v.__module__ == name and not _excluded(v):
                out.append(v)
    return sorted(set(out), key=lambda c: (c.__module__, c.__qualname__))


class Tracer:
    """Install with :meth:`install`, remove with :meth:`uninstall`; one
    execution at a time (:meth:`reset` before each)."""

    def __init__(self) -> None:
        self._patched: list[tuple[type, dict[str, Any]]] = []
        self._serial: dict[int, int] = {}
        self.reset()

    # -- per execution ----------------------------------------------------------
    def reset(self) -> None:
        self._serial.clear()
        self._keep: list[Any] = []          # keeps ids unique for the execution
        self._containers: dict[int, tuple] = {}  # id(container) -> location
        self._keep_c: list[Any] = []
        self._mode = 0                      # 0 off, 1 recording
        self._r: set = set()
        self._w: set = set()
        self._snap: dict[int, tuple[tuple, Any, Any]] = {}
        self._opaque: set[int] = set()      # agents holding state containers across a yield

    # -- installation -------------------------------------------------------------
    def install(self) -> None:
        compiled = [n for n in compiled_loaded() if n.startswith("impls.")]
        if compiled:
            # compiled classes do not consult a patched __getattribute__ and
            # compiled generators have no frame to scan: a footprint taken
            # there would miss accesses, and the reduction would skip schedules
            raise RuntimeError(
                "the exhaustive explorer traces the machine's interpreted code, but "
                f"{len(compiled)} machine module(s) are compiled ({compiled[0]}, ...): "
                "run it with SHOOTDOWN_PURE=1 (the shootdown command does so itself) "
                "or `make clean-compiled`")
        tr = self
        serial = self._serial
        methods: dict[type, frozenset] = {}
        obj_get = object.__getattribute__
        obj_set = object.__setattr__

        ctypes = _CTYPES
        serial_get = serial.get

        def methods_of(cls: type) -> frozenset:
            ms = methods[cls] = frozenset(
                n for k in cls.__mro__ for n, x in vars(k).items()
                if isinstance(x, (types.FunctionType, staticmethod, classmethod, property))
                or (n.startswith("__") and n.endswith("__")))
            return ms

        def getattribute(self: Any, name: str) -> Any:
            v = obj_get(self, name)
            if tr._mode:
                cls = type(self)
                ms = methods.get(cls)
                if ms is None:
                    ms = methods_of(cls)
                if name not in ms:
                    s = serial_get(id(self))
                    k = ("?", name) if s is None else (s, name)
                    tr._r.add(k)
                    if type(v) in ctypes:
                        tr._watch(k, v)
            return v

        def setattr_(self: Any, name: str, value: Any) -> None:
            obj_set(self, name, value)
            if tr._mode:
                s = serial_get(id(self))
                k = ("?", name) if s is None else (s, name)
                tr._w.add(k)
                if type(value) in ctypes:
                    tr._register(k, value)

        def wrap_init(orig):
            def __init__(self, *a, **kw):
                i = id(self)
                if i not in tr._serial:
                    tr._serial[i] = len(tr._keep)
                    tr._keep.append(self)
                orig(self, *a, **kw)
            __init__.__wrapped__ = orig  # type: ignore[attr-defined]
            return __init__

        for cls in _state_classes():
            saved = {k: cls.__dict__[k] for k in ("__getattribute__", "__setattr__", "__init__")
                     if k in cls.__dict__}
            self._patched.append((cls, saved))
            cls.__getattribute__ = getattribute  # type: ignore[method-assign]
            cls.__setattr__ = setattr_  # type: ignore[method-assign]
            if "__init__" in cls.__dict__:
                cls.__init__ = wrap_init(cls.__dict__["__init__"])  # type: ignore[misc]
        del serial

    def uninstall(self) -> None:
        for cls, saved in reversed(self._patched):
            for k in ("__getattribute__", "__setattr__", "__init__"):
                if k in saved:
                    setattr(cls, k, saved[k])
                elif k in cls.__dict__:
                    delattr(cls, k)
        self._patched.clear()

    def __enter__(self) -> Tracer:
        self.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

    # -- containers ----------------------------------------------------------------
    def _register(self, key: tuple, c: Any) -> None:
        stack = [c]
        seen: set[int] = set()
        while stack:
            x = stack.pop()
            i = id(x)
            if i in seen:
                continue
            seen.add(i)
            if i not in self._containers:
                self._containers[i] = key
                self._keep_c.append(x)
            if type(x) is dict or isinstance(x, dict):
                stack.extend(v for v in x.values() if type(v) in _CTYPES)
            elif type(x) in _CTYPES and not isinstance(x, bytearray):
                stack.extend(v for v in x if type(v) in _CTYPES)

    def _watch(self, key: tuple, c: Any) -> None:
        i = id(c)
        if i not in self._snap:
            self._snap[i] = (key, c, _freeze(c))
            self._register(key, c)

    # -- recording -------------------------------------------------------------------
    def begin(self) -> None:
        self._r = set()
        self._w = set()
        self._snap = {}
        self._mode = 1

    def end(self, agent: int | None = None, frames: Any = None) -> Footprint:
        """Stop recording; the footprint since :meth:`begin`.  ``frames`` is
        the agent's suspended generator (scanned for held containers)."""
        self._mode = 0
        for key, c, before in self._snap.values():
            if _freeze(c) != before:
                self._w.add(key)
                self._register(key, c)
        opaque = False
        if agent is not None:
            if agent in self._opaque:
                opaque = True  # it held a reference when this step began
            if frames is not None and self._holds_state(frames):
                self._opaque.add(agent)
                opaque = True
            else:
                self._opaque.discard(agent)
        fp = Footprint(frozenset(self._r), frozenset(self._w), opaque)
        self._snap = {}
        return fp

    def off(self) -> None:
        self._mode = 0

    def _holds_state(self, gen: Any) -> bool:
        """Does a suspended generator chain keep a reference to a container of
        the machine's state (across the preemption point it stopped at)?"""
        seen: set[int] = set()
        stack: list[Any] = []
        g = gen
        while g is not None:
            fr = getattr(g, "gi_frame", None)
            if fr is not None:
                stack.extend(fr.f_locals.values())
            g = getattr(g, "gi_yieldfrom", None)
        while stack:
            v = stack.pop()
            i = id(v)
            if i in seen:
                continue
            seen.add(i)
            t = type(v)
            if t in _CTYPES:
                if i in self._containers:
                    return True
                stack.extend(v.values() if issubclass(t, dict) else v)
            elif issubclass(t, tuple):
                stack.extend(v)
            elif t is types.FunctionType:
                for cell in v.__closure__ or ():
                    try:
                        stack.append(cell.cell_contents)
                    except ValueError:
                        pass
        return False


_ATOM_TYPES = frozenset(_ATOMS)


def _freeze(v: Any, depth: int = 0) -> Any:
    """A comparable deep copy of builtin containers; other objects by identity
    (they are traced objects with their own locations, or immutable)."""
    t = type(v)
    if t in _ATOM_TYPES:
        return v
    if depth > 50:
        return ("deep", id(v))
    d = depth + 1
    if t is dict:
        return ("d", tuple((_freeze(k, d), _freeze(x, d)) for k, x in v.items()))
    if t is list or t is deque:
        return ("l", tuple(_freeze(x, d) for x in v))
    if t is set:
        return ("s", frozenset(_freeze(x, d) for x in v))
    if t is tuple:
        return ("t", tuple(_freeze(x, d) for x in v))
    if t is frozenset:
        return ("f", frozenset(_freeze(x, d) for x in v))
    if issubclass(t, _ATOMS):
        return v
    if issubclass(t, dict):
        return ("d", tuple((_freeze(k, d), _freeze(x, d)) for k, x in v.items()))
    if issubclass(t, (list, deque)):
        return ("l", tuple(_freeze(x, d) for x in v))
    if issubclass(t, set):
        return ("s", frozenset(_freeze(x, d) for x in v))
    if issubclass(t, bytearray):
        return ("b", bytes(v))
    if issubclass(t, tuple) and not dataclasses.is_dataclass(v):
        return ("t", tuple(_freeze(x, d) for x in v))
    return ("o", id(v))
