"""The one property every driver shares: run a program on a strategy and a
platform, judge the history; and lockstep, the same program on several
strategies, judged each on its own and compared."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from impls.machine.choices import Choices, Replay
from impls.machine.history import History
from impls.machine.machine import DEFAULT_MAX_STEPS, Machine
from impls.machine.plugin import Ops, blame
from impls.machine.program import Program
from oracle import Verdict, Violation, check_history, compare

from .watchdog import WATCHDOG

ChoicesFactory = Callable[[], Choices]


@dataclass
class Run:
    history: History
    verdict: Verdict


@dataclass
class Lockstep:
    program: Program
    platform: str
    runs: list[Run] = field(default_factory=list)
    divergences: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.verdict.ok for r in self.runs) and not self.divergences

    def violations(self) -> list[Violation]:
        return [v for r in self.runs for v in r.verdict.violations] + self.divergences


def run_program(program: Program, strategy: Ops, platform: Ops, choices: Choices | None = None,
                max_steps: int = DEFAULT_MAX_STEPS) -> Run:
    """The property: run and judge.  Exceptions in the simulator propagate
    (a crash of the model is a bug to see, never a verdict to hide); one
    raised, or a sys.exit() called, from a strategy or platform file's code
    is that file's error (:class:`~impls.machine.plugin.PluginFailure`, with
    its file and line).  The run is watched (fuzz.watchdog): a hook that loops
    without yielding raises HookTimeout (a BaseException) out of here."""
    if choices is None:
        choices = Replay(program.schedule)
    try:
        machine = Machine(program, strategy, platform, choices, max_steps)
        WATCHDOG.arm()
        try:
            history = machine.run()
        finally:
            WATCHDOG.disarm()
        machine.release()
    except (Exception, SystemExit) as e:
        failure = blame(e, [strategy, platform])
        if failure is None:
            raise
        raise failure from e
    return Run(history, check_history(history))


def run_lockstep(program: Program, strategies: list[Ops], platform: Ops,
                 choices_factory: ChoicesFactory | None = None,
                 max_steps: int = DEFAULT_MAX_STEPS) -> Lockstep:
    """Every strategy on the same program and platform, each with a fresh
    choice source from ``choices_factory`` (default: replay the program's
    schedule), then the divergence comparison."""
    res = Lockstep(program, platform.name)
    for s in strategies:
        ch = choices_factory() if choices_factory is not None else Replay(program.schedule)
        res.runs.append(run_program(program, s, platform, ch, max_steps))
    if len(res.runs) > 1:
        res.divergences = compare([r.history for r in res.runs], program)
    return res
