"""The litmus/reproducer file format (YAML, ``shootdown: 1``).

A file is a :class:`~impls.machine.program.Program` plus a header: title,
description, kernel references, how it was found, and the expected verdict
per strategy.  See docs/litmus-format.md for the reference.

Reproducers are shared (mailing lists, bug reports), so reading one must be
as safe as reading any text: every mistake is reported as one line naming
the file, the line, the place in the document and what is wrong
(:class:`CorpusError`), never as a traceback, and nothing a file says costs
more than its size.

- The YAML is parsed once, with libyaml's C parser where PyYAML has it
  (``CSafeLoader``), and only the safe constructors.
- Anchors and aliases are refused: a litmus file never needs them, and
  aliases are how a few lines of YAML expand into billions of nodes.
- Every value is type-checked before it is used; libyaml caps nesting at
  1,000 levels (the pure-Python parser's RecursionError is caught).
- A ``.py`` file the header names (``platform:``, ``expect:`` keys) is only
  *named* here, resolved relative to the litmus file; whether it may be
  imported is the command line's decision (fuzz.cli.litmus_plugins).
"""

from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from impls import registry
from impls.machine.choices import FLIP_LABELS, RCU, SchedEntry, Schedule
from impls.machine.pgtable import PAGE_SIZE, TASK_SIZE
from impls.machine.program import FILE_KINDS, OP_KINDS, OPTIONAL_ARGS, PT_RECLAIM_MODES, Env, Op, Program
from oracle.verdict import CHECKS

try:  # libyaml: parses large files an order of magnitude faster
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover  (PyYAML built without libyaml)
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

FORMAT_VERSION = 1
MAX_CPUS = 8
MAX_MMS = 4
#: larger files are refused before parsing (a reproducer is a few KiB)
MAX_FILE_BYTES = 64 << 20


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
    #: the line of each entry a command may have to point at: ("platform",),
    #: ("expect", key) of a file key, ("schedule", i) of an ``until`` entry
    lines: dict[tuple, int] = field(default_factory=dict, repr=False, compare=False)
    #: strategy NAME -> resolved file, for the strategy files a command loaded
    #: (so that ``expect:`` keys naming files match without importing anything)
    bound: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def expected_checks(self, strategy: str) -> list[str] | None:
        """The checks expected to fire for ``strategy`` (a built-in name, an
        ``expect:`` key, or the NAME of a strategy file bound with
        :meth:`bind`), [] for S, None if the header says nothing about it."""
        e = self.expect.get(strategy)
        if e is None and strategy in self.bound:
            want = self.bound[strategy]
            for key, val in self.expect.items():
                if key.endswith(".py") and resolve_expect_key(self, key) == want:
                    e = val
                    break
        if e is None:
            return None
        return [] if e == "S" else sorted(e)

    def bind(self, strategies: list[Any]) -> None:
        """Note which loaded strategy (an Ops with ``name`` and ``source``)
        came from which file, for :meth:`expected_checks`."""
        for s in strategies:
            src = str(getattr(s, "source", "") or "")
            if src.endswith(".py"):
                self.bound[s.name] = str(Path(src).resolve())

    def strategy_files(self) -> list[str]:
        """Strategy files named in the expect: header, resolved (not loaded)."""
        return [resolve_expect_key(self, k) for k in self.expect if k.endswith(".py")]

    def line_of(self, *path: Any) -> int:
        return self.lines.get(tuple(path), 1)


# -- reading ------------------------------------------------------------------------


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """The safe loader; a value its constructor cannot build (``!!timestamp
    notadate``, ``!!int x``) is a YAML error at that value's line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception:  # noqa: BLE001  (any constructor failure is the file's fault)
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            raise yaml.constructor.ConstructorError(
                None, None, f"{str(node.value)[:40]!r} is not a valid {tag}",
                node.start_mark) from None


class _Ctx:
    """Locates errors: the line of a place in the document, found by walking
    the composed node tree along that place only when there is an error."""

    def __init__(self, name: str, root: yaml.Node | None) -> None:
        self.name = name
        self.root = root

    def line(self, path: tuple) -> int:
        node, line = self.root, 1
        if node is None:
            return 1
        line = node.start_mark.line + 1
        for x in path:
            nxt = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == str(x):
                        line = k.start_mark.line + 1
                        nxt = v
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(x, int) and 0 <= x < len(node.value):
                nxt = node.value[x]
                line = nxt.start_mark.line + 1
            if nxt is None:
                break
            node = nxt
        return line

    def fail(self, path: tuple, msg: str) -> CorpusError:
        where = "".join(f"[{x}]" if isinstance(x, int) else (f".{x}" if i else str(x))
                        for i, x in enumerate(path))
        return CorpusError(f"{self.name}:{self.line(path)}: {where or 'document'}: {msg}")


def _type(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false", int: "an integer",
            float: "a number", type(None): "nothing (null)", set: "a set", bytes: "binary data",
            datetime.date: "a date", datetime.datetime: "a timestamp"}.get(type(v), type(v).__name__)


def _int(ctx: _Ctx, path: tuple, v: Any, lo: int, hi: int, fmt: str = "d") -> int:
    """An integer in [lo, hi]; ``fmt`` "x": say so in hex (addresses)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ctx.fail(path, f"expected an integer, got {_type(v)}")
    if v < lo or v > hi:
        f = "#x" if fmt == "x" else "d"
        raise ctx.fail(path, f"{v:{f}} is out of range [{lo:{f}}, {hi:{f}}]")
    return v


def _addr(ctx: _Ctx, path: tuple, v: Any, what: str = "address") -> int:
    v = _int(ctx, path, v, 0, TASK_SIZE - PAGE_SIZE, "x")
    if v % PAGE_SIZE:
        raise ctx.fail(path, f"{what} {v:#x} is not page-aligned")
    return v


def _len(ctx: _Ctx, path: tuple, v: Any) -> int:
    v = _int(ctx, path, v, PAGE_SIZE, TASK_SIZE, "x")
    if v % PAGE_SIZE:
        raise ctx.fail(path, f"length {v:#x} is not a multiple of the page size")
    return v


def _text(ctx: _Ctx, path: tuple, v: Any) -> str:
    """A one-value header field: a string (numbers and dates are taken as written)."""
    if v is None:
        return ""
    if isinstance(v, bool) or not isinstance(v, (str, int, float, datetime.date)):
        raise ctx.fail(path, f"expected a string, got {_type(v)}")
    return str(v)


def _keys(ctx: _Ctx, path: tuple, d: Any, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(d, dict):
        raise ctx.fail(path, f"expected a mapping, got {_type(d)}")
    for k in d:
        if not isinstance(k, str) or k not in allowed:
            raise ctx.fail(path + (k,), f"unknown key {k!r} (expected one of: {', '.join(sorted(allowed))})")
    for k in sorted(required):
        if k not in d:
            raise ctx.fail(path, f"missing key {k!r}")
    return d


def _list(ctx: _Ctx, path: tuple, v: Any, what: str) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ctx.fail(path, f"expected {what}, got {_type(v)}")
    return v


def _op(ctx: _Ctx, path: tuple, d: Any, cpus: int, mms: int, default_cpu: int | None,
        nfiles: int = 0) -> Op:
    if not isinstance(d, dict):
        raise ctx.fail(path, "an operation is a mapping like {cpu: 0, op: munmap, addr: 0x200000, len: 0x200000}")
    kind = d.get("op")
    if not isinstance(kind, str):
        raise ctx.fail(path + ("op",), f"expected an operation name ({', '.join(OP_KINDS)}), got {_type(kind)}")
    if kind not in OP_KINDS:
        raise ctx.fail(path + ("op",), f"unknown operation {kind!r} (known: {', '.join(OP_KINDS)})")
    args = OP_KINDS[kind][0]
    optional = OPTIONAL_ARGS.get(kind, ())
    _keys(ctx, path, d, {"cpu", "op", *args, *optional}, {"op"} | ({"cpu"} if default_cpu is None else set()))
    cpu = _int(ctx, path + ("cpu",), d.get("cpu", default_cpu), 0, cpus - 1)
    kw: dict[str, Any] = {}
    for a in args + tuple(x for x in optional if x in d):
        if a == "write":
            v = d.get("write", False)
            if not isinstance(v, bool):
                raise ctx.fail(path + ("write",), f"expected true or false, got {_type(v)}")
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
        elif a == "new_addr":
            if "new_addr" not in d:
                raise ctx.fail(path, "missing key 'new_addr'")
            kw["new_addr"] = _addr(ctx, path + ("new_addr",), d["new_addr"])
        elif a == "file":
            if "file" not in d:
                raise ctx.fail(path, "missing key 'file' (an index into files:)")
            if nfiles == 0:
                raise ctx.fail(path + ("file",), "the program declares no files (files: [shmem, ...])")
            kw["file"] = _int(ctx, path + ("file",), d["file"], 0, nfiles - 1)
        elif a == "offset":
            if "offset" not in d:
                raise ctx.fail(path, "missing key 'offset' (a byte offset into the file)")
            kw["offset"] = _addr(ctx, path + ("offset",), d["offset"], "offset")
    if "addr" in kw and "len" in kw and kw["addr"] + kw["len"] > TASK_SIZE:
        raise ctx.fail(path, f"{kind} [{kw['addr']:#x}, {kw['addr'] + kw['len']:#x}) runs past "
                             f"TASK_SIZE ({TASK_SIZE:#x})")
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
    if not isinstance(raw, dict):
        raise ctx.fail(("expect",), f"expected a mapping of strategy -> verdict, got {_type(raw)}")
    out: dict[str, Any] = {}
    for name, v in raw.items():
        p = ("expect", name)
        if not isinstance(name, str) or not (name in registry.STRATEGY_MODULES or name.endswith(".py")):
            raise ctx.fail(p, f"unknown strategy {name!r} (built-ins: {', '.join(registry.STRATEGIES)}; "
                              "or the path of a strategy file ending in .py)")
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
            "platform", "cpus", "mms", "start", "env", "files", "vmas", "setup", "ops", "schedule",
            "choices"}
MAX_FILES = 4


def _first_anchor(text: str, name: str) -> CorpusError | None:
    """An anchor (``&a``) or alias (``*a``) anywhere in the document, found
    from libyaml's events (without composing anything)."""
    loader = _Loader(text)
    try:
        while loader.check_event():
            ev = loader.get_event()
            if isinstance(ev, yaml.AliasEvent):
                return CorpusError(f"{name}:{ev.start_mark.line + 1}: YAML aliases (*{ev.anchor}) are not "
                                   "allowed in a litmus file: write the value out")
            if getattr(ev, "anchor", None) is not None:
                return CorpusError(f"{name}:{ev.start_mark.line + 1}: YAML anchors (&{ev.anchor}) are not "
                                   "allowed in a litmus file: write the value out")
    except yaml.YAMLError:
        return None  # the real parse reports it
    finally:
        loader.dispose()
    return None


def _yaml_error(e: yaml.YAMLError, name: str) -> CorpusError:
    mark = getattr(e, "problem_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return CorpusError(f"{name}:{line}: not valid YAML: {problem}")


EMPTY = ("empty file: a litmus file is a YAML mapping with at least `shootdown: 1` and `ops:` "
         "(docs/litmus-format.md)")


def _platform_options(ctx, platform: str, raw: Any) -> tuple[tuple[str, str], ...]:
    """``env.options``: the platform's options by name; a built-in platform's
    are checked here (a platform file's when the machine boots)."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ctx.fail(("env", "options"), f"expected a mapping {{option: value}}, got {_type(raw)}")
    declared = registry.platform(platform).meta["options"] if platform in registry.PLATFORM_MODULES else None
    # YAML reads a bare on/off as a boolean
    raw = {k: ("on" if v else "off") if isinstance(v, bool) else v for k, v in raw.items()}
    for k, v in raw.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ctx.fail(("env", "options"), "expected option names and values as strings")
        if declared is not None:
            if k not in declared:
                raise ctx.fail(("env", "options", k), f"platform {platform} has no option {k!r} "
                               f"(its options: {', '.join(sorted(declared)) or 'none'})")
            if v not in declared[k][1]:
                raise ctx.fail(("env", "options", k), f"expected one of {', '.join(declared[k][1])}")
    return tuple(sorted(raw.items()))


def parse(text: str, name: str = "<string>", base: str | Path | None = None) -> Litmus:
    """Parse a litmus document.  ``base``: the directory a ``.py`` platform
    named in it is relative to (it must exist there; nothing is imported)."""
    if "&" in text:  # an anchor is possible: look for one before composing anything
        err = _first_anchor(text, name)
        if err is not None:
            raise err
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as e:
        raise _yaml_error(e, name) from None
    except RecursionError:  # the pure-Python parser on deep nesting
        raise CorpusError(f"{name}:1: not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    if root is None:
        raise CorpusError(f"{name}:1: {EMPTY}")
    ctx = _Ctx(name, root)
    _keys(ctx, (), data, TOP_KEYS, {"shootdown", "ops"})
    version = data["shootdown"]
    if isinstance(version, bool) or version != FORMAT_VERSION or not isinstance(version, int):
        shown = (str(version).lower() if isinstance(version, bool) else repr(version)
                 if isinstance(version, (str, int, float)) else _type(version))
        raise ctx.fail(("shootdown",), f"unsupported format version {shown} (this is version {FORMAT_VERSION})")
    cpus = _int(ctx, ("cpus",), data.get("cpus", 2), 1, MAX_CPUS)
    mms = _int(ctx, ("mms",), data.get("mms", 1), 1, MAX_MMS)
    platform = data.get("platform", "native")
    if not isinstance(platform, str):
        raise ctx.fail(("platform",), f"expected a platform name, got {_type(platform)}")
    if platform.endswith(".py"):
        if base is not None:
            resolved = (Path(base) / platform).resolve()  # an absolute path stays itself
            if not resolved.is_file():
                raise ctx.fail(("platform",), f"no such platform file {platform} (looked for {resolved})")
            platform = str(resolved)
    elif platform not in registry.PLATFORM_MODULES:
        raise ctx.fail(("platform",), f"unknown platform {platform!r} (built-ins: {', '.join(registry.PLATFORMS)}; "
                                      "or the path of a platform file ending in .py)")
    start_raw = data.get("start", [0] * cpus)
    if not isinstance(start_raw, list) or len(start_raw) > cpus:
        raise ctx.fail(("start",), f"expected a list of at most {cpus} entries (an mm index or null per CPU)")
    start = tuple(None if v is None else _int(ctx, ("start", i), v, 0, mms - 1) for i, v in enumerate(start_raw))
    env_raw = data.get("env")
    env_raw = _keys(ctx, ("env",), {} if env_raw is None else env_raw,
                    {"pt_reclaim", "kvm", "iommu", "skip_mmu_notifiers", "options", "thp"})
    ptr = env_raw.get("pt_reclaim", "off")
    if ptr is False:
        ptr = "off"
    if ptr is True:
        ptr = "on"
    if not isinstance(ptr, str) or ptr not in PT_RECLAIM_MODES:
        raise ctx.fail(("env", "pt_reclaim"), f"expected one of {', '.join(PT_RECLAIM_MODES)}")
    for k in ("kvm", "iommu", "skip_mmu_notifiers", "thp"):
        if not isinstance(env_raw.get(k, False), bool):
            raise ctx.fail(("env", k), "expected true or false")
    options = _platform_options(ctx, platform, env_raw.get("options"))
    env = Env(ptr, env_raw.get("kvm", False), env_raw.get("iommu", False), env_raw.get("skip_mmu_notifiers", False),
              options, env_raw.get("thp", False))
    files_raw = _list(ctx, ("files",), data.get("files"), f"a list of file kinds ({', '.join(FILE_KINDS)})")
    if len(files_raw) > MAX_FILES:
        raise ctx.fail(("files",), f"at most {MAX_FILES} files")
    files: list[str] = []
    for i, k in enumerate(files_raw):
        if not isinstance(k, str) or k not in FILE_KINDS:
            raise ctx.fail(("files", i), f"unknown file kind {k!r} (known: {', '.join(FILE_KINDS)})")
        files.append(k)
    vmas: list[tuple[int, int, int]] = []
    file_vmas: list[tuple[int, int, int, int, int]] = []
    taken: list[tuple[int, int, int]] = []
    for i, v in enumerate(_list(ctx, ("vmas",), data.get("vmas"),
                                "a list of {mm: N, start: ADDR, len: LEN[, file: F, offset: OFF]}")):
        p = ("vmas", i)
        _keys(ctx, p, v, {"mm", "start", "len", "file", "offset"}, {"start", "len"})
        mm = _int(ctx, p + ("mm",), v.get("mm", 0), 0, mms - 1)
        s, n = _addr(ctx, p + ("start",), v["start"]), _len(ctx, p + ("len",), v["len"])
        if s + n > TASK_SIZE:
            raise ctx.fail(p, f"VMA [{s:#x}, {s + n:#x}) ends above TASK_SIZE ({TASK_SIZE:#x})")
        for om, os_, on in taken:
            if om == mm and os_ < s + n and s < os_ + on:
                raise ctx.fail(p, f"[{s:#x}, {s + n:#x}) overlaps another VMA of mm{mm} "
                                  f"[{os_:#x}, {os_ + on:#x})")
        taken.append((mm, s, n))
        if "file" in v:
            if not files:
                raise ctx.fail(p + ("file",), "the program declares no files (files: [shmem, ...])")
            fid = _int(ctx, p + ("file",), v["file"], 0, len(files) - 1)
            off = _addr(ctx, p + ("offset",), v.get("offset", 0), "offset")
            file_vmas.append((mm, s, n, fid, off))
        elif "offset" in v:
            raise ctx.fail(p + ("offset",), "an offset needs a file")
        else:
            vmas.append((mm, s, n))
    setup_raw = _list(ctx, ("setup",), data.get("setup"), "a list of operations")
    ops_raw = _list(ctx, ("ops",), data["ops"], "a list of operations")
    setup = tuple(_op(ctx, ("setup", i), d, cpus, mms, 0, len(files)) for i, d in enumerate(setup_raw))
    ops = tuple(_op(ctx, ("ops", i), d, cpus, mms, None, len(files)) for i, d in enumerate(ops_raw))
    schedule = _schedule(ctx, data.get("schedule"), data.get("choices"), cpus)
    program = Program(cpus, mms, platform, start, tuple(vmas), setup, ops, env, schedule,
                      tuple(files), tuple(file_vmas))
    refs = [_text(ctx, ("refs", i), r)
            for i, r in enumerate(_list(ctx, ("refs",), data.get("refs"), "a list of references"))]
    expect = _expect(ctx, data.get("expect"))
    lines = {("platform",): ctx.line(("platform",))}
    lines.update({("expect", k): ctx.line(("expect", k)) for k in expect if k.endswith(".py")})
    if schedule is not None:
        lines.update({("schedule", i): ctx.line(("schedule", i))
                      for i, e in enumerate(schedule.sched) if e.until is not None})
    return Litmus(program, _text(ctx, ("title",), data.get("title")),
                  _text(ctx, ("description",), data.get("description")), refs,
                  _text(ctx, ("found-by",), data.get("found-by")), expect, name,
                  _text(ctx, ("signature",), data.get("signature")), lines)


def load(path: str | Path) -> Litmus:
    """Read and parse a litmus file; a ``.py`` platform it names is resolved
    relative to it (and must exist), never imported."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except OSError as e:
        raise CorpusError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise CorpusError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB: not a litmus file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise CorpusError(f"{path}:{line}: not a text file (not UTF-8)") from None
    return parse(text, str(path), base=p.parent)


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
    optional = OPTIONAL_ARGS.get(op.kind, ()) if op.file is not None else ()
    for a in OP_KINDS[op.kind][0] + optional:
        v = getattr(op, a)
        if a in ("addr", "len", "offset", "new_addr"):
            parts.append(f"{a}: {_hex(v)}")
        elif a == "file":
            parts.append(f"file: {v}")
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
        for k in ("kvm", "iommu", "skip_mmu_notifiers", "thp"):
            if getattr(env, k):
                parts.append(f"{k}: true")
        if env.options:
            parts.append("options: {" + ", ".join(f"{k}: {v}" for k, v in env.options) + "}")
        out.append("env: {" + ", ".join(parts) + "}")
    if p.files:
        out.append("files: [" + ", ".join(p.files) + "]")
    if p.vmas or p.file_vmas:
        out.append("vmas:")
        out += [f"  - {{mm: {mm}, start: {_hex(s)}, len: {_hex(n)}}}" for mm, s, n in p.vmas]
        out += [f"  - {{mm: {mm}, start: {_hex(s)}, len: {_hex(n)}, file: {f}, offset: {_hex(o)}}}"
                for mm, s, n, f, o in p.file_vmas]
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
    """Write atomically: a temporary file in the same directory, then rename.
    A place that cannot be written is a :class:`CorpusError` (one line)."""
    path = Path(path)
    try:
        _save(lit, path)
    except OSError as e:
        raise CorpusError(f"{path}: cannot write: {e.strerror or e}") from None


def _save(lit: Litmus, path: Path) -> None:
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
