"""The litmus/reproducer file format (YAML, ``shootdown: 1``).

A file is a :class:`~impls.machine.program.Program` plus a header: title,
description, kernel references, how it was found, and the expected verdict
per strategy.  Read with ``yaml.safe_load`` only; every mistake is reported as
one line naming the file, the line, the place in the document and what is
wrong (:class:`CorpusError`).  See docs/litmus-format.md for the reference.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from impls.machine.choices import FLIP_LABELS, RCU, SchedEntry, Schedule
from impls.machine.pgtable import PAGE_SIZE, TASK_SIZE
from impls.machine.program import OP_KINDS, PT_RECLAIM_MODES, Env, Op, Program
from oracle.verdict import CHECKS

FORMAT_VERSION = 1
MAX_CPUS = 8
MAX_MMS = 4


class CorpusError(Exception):
    """A malformed litmus file: the message is one line, ready to print."""


@dataclass
class Litmus:
    program: Program
    title: str = ""
    description: str = ""
    refs: list[str] = field(default_factory=list)
    found_by: str = ""
    #: strategy name -> "S" or the sorted list of checks expected to fire
    expect: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    signature: str = ""

    def expected_checks(self, strategy: str) -> list[str] | None:
        """The checks expected to fire for ``strategy`` (a built-in name or a
        strategy's NAME when the header names its file), [] for S, None if the
        header says nothing about it."""
        e = self.expect.get(strategy)
        if e is None:
            for key, val in self.expect.items():
                if key.endswith(".py") and self._file_strategy_name(key) == strategy:
                    e = val
                    break
        if e is None:
            return None
        return [] if e == "S" else sorted(e)

    def strategy_files(self) -> list[str]:
        """Strategy files named in the expect: header, resolved."""
        return [resolve_expect_key(self, k) for k in self.expect if k.endswith(".py")]

    def _file_strategy_name(self, key: str) -> str | None:
        from impls import registry
        from impls.machine.plugin import PluginError
        try:
            return registry.strategy(resolve_expect_key(self, key)).name
        except PluginError:
            return None


# -- locating errors ----------------------------------------------------------------

def _lines(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    out = {} if out is None else out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            out[path + (k.value,)] = k.start_mark.line + 1
            _lines(v, path + (k.value,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _lines(v, path + (i,), out)
    return out


class _Ctx:
    def __init__(self, name: str, lines: dict[tuple, int]) -> None:
        self.name = name
        self.lines = lines

    def fail(self, path: tuple, msg: str) -> CorpusError:
        p = path
        while p and p not in self.lines:
            p = p[:-1]
        line = self.lines.get(p, 1)
        where = "".join(f"[{x}]" if isinstance(x, int) else (f".{x}" if i else str(x))
                        for i, x in enumerate(path))
        return CorpusError(f"{self.name}:{line}: {where or 'document'}: {msg}")


def _int(ctx: _Ctx, path: tuple, v: Any, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ctx.fail(path, f"expected an integer, got {v!r}")
    if lo is not None and v < lo or hi is not None and v > hi:
        raise ctx.fail(path, f"{v} is out of range [{lo}, {hi}]")
    return v


def _addr(ctx: _Ctx, path: tuple, v: Any, what: str = "address") -> int:
    v = _int(ctx, path, v, 0, TASK_SIZE)
    if v % PAGE_SIZE:
        raise ctx.fail(path, f"{what} {v:#x} is not page-aligned")
    return v


def _len(ctx: _Ctx, path: tuple, v: Any) -> int:
    v = _int(ctx, path, v, 1, TASK_SIZE)
    if v % PAGE_SIZE:
        raise ctx.fail(path, f"length {v:#x} is not a multiple of the page size")
    return v


def _keys(ctx: _Ctx, path: tuple, d: Any, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(d, dict):
        raise ctx.fail(path, f"expected a mapping, got {type(d).__name__}")
    for k in d:
        if k not in allowed:
            raise ctx.fail(path + (k,), f"unknown key {k!r} (expected one of: {', '.join(sorted(allowed))})")
    for k in required:
        if k not in d:
            raise ctx.fail(path, f"missing key {k!r}")
    return d


def _op(ctx: _Ctx, path: tuple, d: Any, cpus: int, mms: int, default_cpu: int | None) -> Op:
    if not isinstance(d, dict):
        raise ctx.fail(path, "an operation is a mapping like {cpu: 0, op: munmap, addr: 0x200000, len: 0x200000}")
    kind = d.get("op")
    if kind not in OP_KINDS:
        raise ctx.fail(path + ("op",), f"unknown operation {kind!r} (known: {', '.join(OP_KINDS)})")
    args = OP_KINDS[kind][0]
    _keys(ctx, path, d, {"cpu", "op", *args}, {"op"} | ({"cpu"} if default_cpu is None else set()))
    cpu = _int(ctx, path + ("cpu",), d.get("cpu", default_cpu), 0, cpus - 1)
    kw: dict[str, Any] = {}
    for a in args:
        if a == "write":
            v = d.get("write", False)
            if not isinstance(v, bool):
                raise ctx.fail(path + ("write",), f"expected true or false, got {v!r}")
            kw["write"] = v
        elif a == "mm":
            if "mm" not in d:
                raise ctx.fail(path, "missing key 'mm' (an mm index, or null for a kernel thread)")
            v = d["mm"]
            kw["mm"] = None if v is None else _int(ctx, path + ("mm",), v, 0, mms - 1)
        elif a == "addr":
            if "addr" not in d:
                raise ctx.fail(path, "missing key 'addr'")
            kw["addr"] = _addr(ctx, path + ("addr",), d["addr"])
        elif a == "len":
            if "len" not in d:
                raise ctx.fail(path, "missing key 'len'")
            kw["len"] = _len(ctx, path + ("len",), d["len"])
    return Op(cpu, kind, **kw)


def _schedule(ctx: _Ctx, raw_sched: Any, raw_choices: Any, cpus: int) -> Schedule | None:
    if raw_sched is None and raw_choices is None:
        return None
    entries: list[SchedEntry] = []
    if raw_sched is not None:
        if not isinstance(raw_sched, list):
            raise ctx.fail(("schedule",), "expected a list of {cpu: N, steps: K} / {cpu: N, until: LABEL} / {rcu: K}")
        for i, e in enumerate(raw_sched):
            p = ("schedule", i)
            if isinstance(e, dict) and "rcu" in e:
                _keys(ctx, p, e, {"rcu"})
                entries.append(SchedEntry(RCU, _int(ctx, p + ("rcu",), e["rcu"], 1, 10**6)))
                continue
            _keys(ctx, p, e, {"cpu", "steps", "until"}, {"cpu"})
            cpu = _int(ctx, p + ("cpu",), e["cpu"], 0, cpus - 1)
            if "until" in e and "steps" in e:
                raise ctx.fail(p, "give either 'steps' or 'until', not both")
            if "until" in e:
                if not isinstance(e["until"], str) or not e["until"]:
                    raise ctx.fail(p + ("until",),
                                   "expected a preemption-point label such as gup_fast:pmd_read or op_end")
                entries.append(SchedEntry(cpu, 1, e["until"]))
            else:
                entries.append(SchedEntry(cpu, _int(ctx, p + ("steps",), e.get("steps", 1), 1, 10**6)))
    flips: list[tuple[str, tuple[bool, ...]]] = []
    if raw_choices is not None:
        _keys(ctx, ("choices",), raw_choices, set(FLIP_LABELS))
        for label in sorted(raw_choices):
            vals = raw_choices[label]
            if not isinstance(vals, list) or not all(isinstance(v, bool) for v in vals):
                raise ctx.fail(("choices", label), "expected a list of true/false")
            flips.append((label, tuple(vals)))
    return Schedule(tuple(entries), tuple(flips))


def _expect(ctx: _Ctx, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    _keys(ctx, ("expect",), raw, set(raw) if isinstance(raw, dict) else set())
    out: dict[str, Any] = {}
    for name, v in raw.items():
        p = ("expect", name)
        if v == "S":
            out[name] = "S"
        elif isinstance(v, list) and v and all(isinstance(c, str) for c in v):
            for c in v:
                if c not in CHECKS:
                    raise ctx.fail(p, f"unknown check {c!r} (known: {', '.join(CHECKS)})")
            out[name] = sorted(v)
        else:
            raise ctx.fail(p, "expected S or a list of the checks that fire, e.g. [table-uaf]")
    return out


TOP_KEYS = {"shootdown", "title", "description", "refs", "found-by", "expect", "signature",
            "platform", "cpus", "mms", "start", "env", "vmas", "setup", "ops", "schedule", "choices"}


def parse(text: str, name: str = "<string>") -> Litmus:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise CorpusError(f"{name}:{line}: not valid YAML: {problem}") from None
    ctx = _Ctx(name, _lines(node) if node is not None else {})
    _keys(ctx, (), data, TOP_KEYS, {"shootdown", "ops"})
    if data["shootdown"] != FORMAT_VERSION:
        raise ctx.fail(("shootdown",), f"unsupported format version {data['shootdown']!r} "
                                       f"(this is version {FORMAT_VERSION})")
    cpus = _int(ctx, ("cpus",), data.get("cpus", 2), 1, MAX_CPUS)
    mms = _int(ctx, ("mms",), data.get("mms", 1), 1, MAX_MMS)
    platform = data.get("platform", "native")
    if not isinstance(platform, str):
        raise ctx.fail(("platform",), "expected a platform name")
    start_raw = data.get("start", [0] * cpus)
    if not isinstance(start_raw, list) or len(start_raw) > cpus:
        raise ctx.fail(("start",), f"expected a list of at most {cpus} entries (an mm index or null per CPU)")
    start = tuple(None if v is None else _int(ctx, ("start", i), v, 0, mms - 1) for i, v in enumerate(start_raw))
    env_raw = _keys(ctx, ("env",), data.get("env") or {}, {"pt_reclaim", "kvm", "iommu", "skip_mmu_notifiers"})
    ptr = env_raw.get("pt_reclaim", "off")
    if ptr is False:
        ptr = "off"
    if ptr is True:
        ptr = "on"
    if ptr not in PT_RECLAIM_MODES:
        raise ctx.fail(("env", "pt_reclaim"), f"expected one of {', '.join(PT_RECLAIM_MODES)}")
    for k in ("kvm", "iommu", "skip_mmu_notifiers"):
        if not isinstance(env_raw.get(k, False), bool):
            raise ctx.fail(("env", k), "expected true or false")
    env = Env(ptr, env_raw.get("kvm", False), env_raw.get("iommu", False), env_raw.get("skip_mmu_notifiers", False))
    vmas = []
    for i, v in enumerate(data.get("vmas") or []):
        p = ("vmas", i)
        _keys(ctx, p, v, {"mm", "start", "len"}, {"start", "len"})
        mm = _int(ctx, p + ("mm",), v.get("mm", 0), 0, mms - 1)
        s, n = _addr(ctx, p + ("start",), v["start"]), _len(ctx, p + ("len",), v["len"])
        if s + n > TASK_SIZE:
            raise ctx.fail(p, "VMA ends above TASK_SIZE")
        for om, os_, on in vmas:
            if om == mm and os_ < s + n and s < os_ + on:
                raise ctx.fail(p, f"overlaps another VMA of mm{mm}")
        vmas.append((mm, s, n))
    for key in ("setup", "ops"):
        if not isinstance(data.get(key) or [], list):
            raise ctx.fail((key,), "expected a list of operations")
    setup = tuple(_op(ctx, ("setup", i), d, cpus, mms, 0) for i, d in enumerate(data.get("setup") or []))
    ops = tuple(_op(ctx, ("ops", i), d, cpus, mms, None) for i, d in enumerate(data["ops"] or []))
    schedule = _schedule(ctx, data.get("schedule"), data.get("choices"), cpus)
    program = Program(cpus, mms, platform, start, tuple(vmas), setup, ops, env, schedule)
    refs = data.get("refs") or []
    if not isinstance(refs, list):
        raise ctx.fail(("refs",), "expected a list of references")
    return Litmus(program, str(data.get("title", "")), str(data.get("description", "")),
                  [str(r) for r in refs], str(data.get("found-by", "")),
                  _expect(ctx, data.get("expect")), name, str(data.get("signature", "")))


def load(path: str | Path) -> Litmus:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except OSError as e:
        raise CorpusError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CorpusError(f"{path}: not a text file") from None
    lit = parse(text, str(path))
    plat = lit.program.platform
    if plat.endswith(".py"):
        # a platform file named in a litmus file is relative to that file
        resolved = Path(plat) if Path(plat).is_absolute() else (p.parent / plat).resolve()
        if not resolved.is_file():
            line = next((i + 1 for i, ln in enumerate(text.splitlines()) if ln.startswith("platform:")), 1)
            raise CorpusError(f"{path}:{line}: platform: no such platform file {plat} (looked for {resolved})")
        lit.program = replace(lit.program, platform=str(resolved))
    return lit


def is_litmus(path: str | Path) -> bool:
    """A YAML file under corpus/ is a litmus program if it declares the
    format (``shootdown: N``); other YAML there (expected-matrix.yaml) is not."""
    try:
        head = Path(path).read_text()[:4096]
    except OSError:
        return False
    return any(line.startswith("shootdown:") for line in head.splitlines())


def litmus_files(root: str | Path, include_crashes: bool = False) -> list[Path]:
    """Every litmus file under ``root``, sorted; unpromoted crashes excluded."""
    return sorted(p for p in Path(root).rglob("*.yaml")
                  if is_litmus(p) and (include_crashes or "crashes" not in p.parts))


def resolve_expect_key(lit: Litmus, key: str) -> str:
    """An ``expect:`` key is a built-in strategy name or a strategy file path
    relative to the litmus file."""
    if key.endswith(".py") and lit.path and not Path(key).is_absolute():
        return str((Path(lit.path).parent / key).resolve())
    return key


# -- writing ----------------------------------------------------------------------

def _hex(v: int) -> str:
    return f"{v:#x}"


def _q(s: str) -> str:
    return yaml.safe_dump(s, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _op_yaml(op: Op, with_cpu: bool = True) -> str:
    parts = [f"cpu: {op.cpu}"] if with_cpu else []
    parts.append(f"op: {op.kind}")
    for a in OP_KINDS[op.kind][0]:
        v = getattr(op, a)
        if a in ("addr", "len"):
            parts.append(f"{a}: {_hex(v)}")
        elif a == "write":
            if v:
                parts.append("write: true")
        elif a == "mm":
            parts.append(f"mm: {'null' if v is None else v}")
    return "{" + ", ".join(parts) + "}"


def dumps(lit: Litmus) -> str:
    p = lit.program
    out = [f"shootdown: {FORMAT_VERSION}"]
    if lit.title:
        out.append(f"title: {_q(lit.title)}")
    if lit.description:
        out.append("description: |")
        out += [f"  {line}".rstrip() for line in lit.description.rstrip().splitlines()]
    if lit.refs:
        out.append("refs:")
        out += [f"  - {_q(r)}" for r in lit.refs]
    if lit.found_by:
        out.append(f"found-by: {_q(lit.found_by)}")
    if lit.signature:
        out.append(f"signature: {_q(lit.signature)}")
    if lit.expect:
        out.append("expect:")
        for name, v in lit.expect.items():
            out.append(f"  {name}: {'S' if v == 'S' else '[' + ', '.join(v) + ']'}")
    out.append(f"platform: {p.platform}")
    out.append(f"cpus: {p.cpus}")
    if p.mms != 1:
        out.append(f"mms: {p.mms}")
    if p.start:
        out.append("start: [" + ", ".join("null" if s is None else str(s) for s in p.start) + "]")
    env = p.env
    if env != Env():
        parts = []
        if env.pt_reclaim != "off":
            parts.append(f"pt_reclaim: {env.pt_reclaim}")
        for k in ("kvm", "iommu", "skip_mmu_notifiers"):
            if getattr(env, k):
                parts.append(f"{k}: true")
        out.append("env: {" + ", ".join(parts) + "}")
    if p.vmas:
        out.append("vmas:")
        out += [f"  - {{mm: {mm}, start: {_hex(s)}, len: {_hex(n)}}}" for mm, s, n in p.vmas]
    if p.setup:
        out.append("setup:")
        out += [f"  - {_op_yaml(op)}" for op in p.setup]
    out.append("ops:" if p.ops else "ops: []")
    out += [f"  - {_op_yaml(op)}" for op in p.ops]
    s = p.schedule
    if s is not None and s.sched:
        out.append("schedule:")
        for e in s.sched:
            if e.agent == RCU:
                out.append(f"  - {{rcu: {e.steps}}}")
            elif e.until is not None:
                out.append(f"  - {{cpu: {e.agent}, until: {_q(e.until)}}}")
            else:
                out.append(f"  - {{cpu: {e.agent}, steps: {e.steps}}}")
    if s is not None and s.flips:
        out.append("choices:")
        for label, vals in s.flips:
            out.append(f"  {label}: [" + ", ".join("true" if v else "false" for v in vals) + "]")
    return "\n".join(out) + "\n"


def save(lit: Litmus, path: str | Path) -> None:
    """Write atomically: a temporary file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(dumps(lit))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a reproducer is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
