"""Turning a finding into a reproducer file: the name (what races with what),
the header (title, expected verdicts, how it was found, the signature) and
deduplication against the files already in the output directory.

A reproducer is the core litmus format (fuzz.corpus): ``shootdown run FILE``
replays it.  Its ``expect:`` header holds what ``shootdown run`` will print for
it: the failing strategy with its checks, and the verdicts of the other
strategies of the lockstep on the same program and schedule.

Deduplication key: the finding signature (``strategy|race_key``, the check
and the kernel functions on each side, fuzz.engine.finding_signature; kept in
the ``signature:`` header) plus the platform and environment knobs of
the program, so the same race on another platform is a new file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from impls.machine.history import History
from impls.machine.plugin import Ops
from impls.machine.program import Program
from oracle.verdict import Violation

from . import corpus
from .envs import ENVIRONMENTS
from .run import run_lockstep


def racing_ops(history: History, violation: Violation) -> list[str]:
    """The operations involved in a violation: for each CPU with an event in
    the witness, the operation it was running at that event (in order of
    first appearance); the CPUs' operations in flight at the last witness
    event come next."""
    if not violation.witness:
        return []
    wanted = {e.seq for e in violation.witness}
    last = max(wanted)
    current: dict[int, str] = {}
    names: list[str] = []
    for ev in history.events:
        if ev.seq > last:
            break
        if ev.kind == "op_begin":
            current[ev.cpu] = ev.a["name"]
        elif ev.kind == "op_end":
            current.pop(ev.cpu, None)
        if ev.seq in wanted and ev.cpu in current and current[ev.cpu] not in names:
            names.append(current[ev.cpu])
    for _, name in sorted(current.items()):
        if name not in names:
            names.append(name)
    return names


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9+.-]+", "-", s).strip("-") or "x"


def reproducer_name(ops: list[str], env_tag: str, strategy: str) -> str:
    """``gupfast+munmap+xen-pv-direct``: the racing operations, the
    environment, the strategy that failed."""
    parts = [op.replace("_", "") for op in ops[:4]] or ["race"]
    return f"{'+'.join(_slug(p) for p in parts)}+{_slug(env_tag)}-{_slug(strategy)}"


def env_tag(env_name: str, env_platform: str, platform: Ops) -> str:
    """The environment's name, with a platform file's name in place of the
    built-in platform it replaces (``native-skip-lazy+lazy``)."""
    if platform.name == env_platform:
        return env_name
    return platform.name + env_name[len(env_platform):] if env_name.startswith(env_platform) else (
        f"{platform.name}+{env_name}")


def platform_field(platform: Ops, out_dir: Path) -> str:
    src = getattr(platform, "source", "") or ""
    if src.endswith(".py") and Path(src).exists():
        return os.path.relpath(Path(src).resolve(), out_dir.resolve())
    return platform.name


def _strategy_key(strategy: Ops, out_dir: Path) -> str:
    src = getattr(strategy, "source", "") or ""
    if src.endswith(".py") and Path(src).exists():
        return os.path.relpath(Path(src).resolve(), out_dir.resolve())
    return strategy.name


def dedup_key(signature: str, program: Program) -> tuple:
    env = program.env
    return (signature, Path(program.platform).name if program.platform.endswith(".py") else program.platform,
            env.pt_reclaim, env.kvm, env.iommu, env.skip_mmu_notifiers)


def existing(out_dir: Path) -> dict[tuple, Path]:
    """Dedup keys of the reproducers already in ``out_dir`` (files that do not
    parse, or carry no signature, are ignored)."""
    out: dict[tuple, Path] = {}
    if not out_dir.is_dir():
        return out
    for f in sorted(out_dir.glob("*.yaml")):
        try:
            lit = corpus.load(f)
        except corpus.CorpusError:
            continue
        if lit.signature:
            out[dedup_key(lit.signature, lit.program)] = f
    return out


@dataclass
class Written:
    path: Path | None          # None: a duplicate of ``duplicate_of``
    litmus: corpus.Litmus
    duplicate_of: Path | None = None


def build_litmus(program: Program, strategy: Ops, strategies: list[Ops], platform: Ops,
                 violation: Violation, signature: str, env_name: str, found_by: str,
                 out_dir: Path, note: str = "") -> tuple[corpus.Litmus, str]:
    """The reproducer for ``program`` (with its schedule) and its file stem.
    Every strategy of the lockstep is replayed on it for the ``expect:`` header."""
    others = [s for s in strategies if s is not strategy]
    res = run_lockstep(program, [strategy] + others, platform)
    expect: dict[str, object] = {}
    history = res.runs[0].history
    for s, r in zip([strategy] + others, res.runs, strict=True):
        checks = sorted(r.verdict.checks())
        expect[_strategy_key(s, out_dir)] = checks if checks else "S"
    ops = racing_ops(history, _same(res.runs[0].verdict.violations, violation) or violation)
    tag = env_tag(env_name, _env_platform(env_name), platform)
    stem = reproducer_name(ops, tag, strategy.name)
    what = " vs ".join(ops) if ops else "a race"
    title = f"{strategy.name}: {violation.check} ({what}) on {tag}"
    desc = [f"{violation.verdict_word}: {violation.summary}"]
    if note:
        desc.append(note)
    prog = with_platform(program, platform_field(platform, out_dir))
    lit = corpus.Litmus(prog, title=title, description="\n".join(desc), refs=[], found_by=found_by,
                        expect=expect, signature=signature)
    return lit, stem


def _same(violations: list[Violation], v: Violation) -> Violation | None:
    sig = v.signature()
    return next((x for x in violations if x.signature() == sig), None)


def _env_platform(env_name: str) -> str:
    e = ENVIRONMENTS.get(env_name)
    return e.platform if e is not None else env_name.split("+")[0]


def with_platform(p: Program, platform: str) -> Program:
    return replace(p, platform=platform)


def write(lit: corpus.Litmus, stem: str, out_dir: Path, known: dict[tuple, Path]) -> Written:
    """Write ``lit`` as ``out_dir/stem.yaml`` (``stem-2.yaml``... if the name is
    taken by another bug), atomically; skip it if its dedup key is known."""
    key = dedup_key(lit.signature, lit.program)
    if key in known:
        return Written(None, lit, known[key])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.yaml"
    n = 2
    while path.exists():
        path = out_dir / f"{stem}-{n}.yaml"
        n += 1
    corpus.save(lit, path)
    known[key] = path
    return Written(path, lit)


# the names fuzz.explore used before they were public
_platform_field = platform_field
_with_platform = with_platform
