"""Decision tapes: the schedule part of an input for the guided engines.

A run asks its :class:`~impls.machine.choices.Choices` for hundreds of
decisions (which agent steps next, whether an IPI is deferred, whether an
allocation fails).  The guided engines supply them as a byte *tape*: atheris
from the tail of its input (after the bytes the program generator used),
Hypothesis drawn lazily in blocks.  Every strategy of a lockstep reads the same
tape from its start, so one input describes the whole lockstep.

:class:`TapeChoices` decodes a byte the way :class:`ByteChoices` does (a pick
below 128 keeps the agent that ran last, else ``runnable[b % n]``), but in a
form that suits mutation and shrinking alike: a decision with a single
possible outcome takes no byte, and 0 is always the simple outcome (stay on
the same CPU; flip ``False``).  The decisions actually taken are recorded as
usual (``Choices.recorded()``), so a finding replays with
:class:`~impls.machine.choices.Replay` like any other.
"""

from __future__ import annotations

from collections.abc import Callable

from impls.machine.choices import ByteChoices

#: decisions drawn per example at most (Hypothesis caps the size of a test case)
TAPE_LIMIT = 3000


class Tape:
    """A lazily drawn sequence of decision bytes shared by the runs of one
    lockstep: position ``i`` is drawn once, the first time any run needs it.

    Bytes are drawn in blocks of :data:`TAPE_BLOCK` (one Hypothesis choice
    each): a Hypothesis draw costs tens of microseconds, a run takes hundreds
    of decisions, and a block still shrinks towards zeros (no preemption)."""

    def __init__(self, draw_block: Callable[[], bytes] | None = None, limit: int = TAPE_LIMIT,
                 initial: bytes = b"") -> None:
        self.values = bytearray(initial)
        self._draw = draw_block
        self._limit = limit if draw_block is not None else len(self.values)

    @classmethod
    def of(cls, data: bytes) -> Tape:
        """A fixed tape (atheris): decisions past its end take the default."""
        return cls(None, 0, data)

    def get(self, i: int) -> int | None:
        values = self.values
        while i >= len(values):
            if len(values) >= self._limit:
                return None
            values += self._draw()
        return values[i]


class TapeChoices(ByteChoices):
    """:class:`ByteChoices` reading a :class:`Tape`, in shrink-friendly form:
    a decision with one possible outcome takes no byte; 0 means "stay" / False."""

    def __init__(self, tape: Tape, biases: dict[str, float] | None = None) -> None:
        super().__init__(b"", biases)
        self._tape = tape

    def _byte(self) -> int | None:
        b = self._tape.get(self._i)
        if b is not None:
            self._i += 1
        return b

    def _pick(self, runnable, last):
        if len(runnable) == 1:
            return runnable[0]
        return super()._pick(runnable, last)

    def _flip(self, label: str) -> bool:
        p = self._biases.get(label, 0.0)
        if p <= 0.0:
            return False
        if p >= 1.0:
            return True
        b = self._byte()
        return b is not None and b >= 256 - int(256 * p)


