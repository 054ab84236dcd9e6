"""Loading strategies and platforms: a module (built-in or one user file)
becomes a table of function pointers, the way ``struct pv_mmu_ops`` is one.

Hooks the machine calls with ``yield from`` must be generator functions; a
user may write a plain function for a hook that never blocks, and the loader
wraps it.  A missing required hook, an unknown public hook-like name, or a
hook that is not callable is a :class:`PluginError` with a one-line message.
"""

from __future__ import annotations

import ast
import difflib
import functools
import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import BuiltinFunctionType, ModuleType
from typing import TYPE_CHECKING, Any


class PluginError(Exception):
    """A strategy or platform file that does not implement its protocol."""


class PluginFailure(PluginError):
    """A hook of a strategy or platform file raised (or called sys.exit())
    while the machine ran it: that file's error, with its file and line."""

    def __init__(self, message: str, path: str = "", line: int = 0, error: str = "") -> None:
        super().__init__(message)
        self.path = path      # the plug-in file
        self.line = line      # its innermost line on the stack
        self.error = error    # the exception's type name, or "SystemExit"


#: source file of every module loaded by path -> (kind, path as given)
_FILES: dict[str, tuple[str, str]] = {}


def blame(exc: BaseException, plugins: list[Ops]) -> PluginFailure | None:
    """If ``exc`` was raised with code of a plug-in file on the stack (the
    hook itself, or code it called), a :class:`PluginFailure` naming the
    innermost line of that file and the hook the machine called; otherwise
    None (a crash of the simulator itself, to be shown as such)."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code, tb.tb_lineno))
        tb = tb.tb_next
    mine = [(code, line) for code, line in frames if code.co_filename in _FILES]
    if not mine:
        return None
    code, line = mine[-1]
    kind, path = _FILES[code.co_filename]
    ops = next((o for o in plugins if o.kind == kind and str(Path(o.source).resolve()) == code.co_filename), None)
    who = f"{kind} {ops.name!r}" if ops is not None else kind
    hook = mine[0][0].co_name
    if isinstance(exc, SystemExit):
        what = f"called sys.exit({exc.code!r})"
    else:
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        what = f"raised {type(exc).__name__}" + (f": {text}" if text else "")
    inner_code, inner_line = frames[-1]
    where = "" if inner_code.co_filename == code.co_filename else \
        f" (in {inner_code.co_filename}:{inner_line}, {inner_code.co_name}())"
    return PluginFailure(f"{path}:{line}: {who}: {hook}() {what}{where}", path, line, type(exc).__name__)


class Hook:
    __slots__ = ("name", "required", "generator", "default", "doc")

    def __init__(self, name: str, required: bool, generator: bool, default: Any, doc: str) -> None:
        self.name = name
        self.required = required
        self.generator = generator
        self.default = default
        self.doc = doc


class Ops:
    """A filled-in function table.  Attributes are the hook names (kernel
    names, ``__tlb_remove_page_size`` included), plus ``name``, ``doc``,
    ``source`` and protocol-specific metadata."""

    def __init__(self, kind: str, name: str, doc: str, source: str) -> None:
        self.kind = kind
        self.name = name
        self.doc = doc
        self.source = source
        self.meta: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name} from {self.source}>"

    if TYPE_CHECKING:
        # the hooks are set by build_ops(), one attribute per name of the
        # protocol's HOOKS: for the type checker (and mypyc, which compiles
        # the machine modules that call them) each is a dynamic value
        def __getattr__(self, name: str) -> Any: ...


def is_generator_function(fn: Any) -> bool | None:
    """:func:`inspect.isgeneratorfunction`, which also knows the functions of
    the optional compiled build (tools/compiled.py): a mypyc-compiled function
    is a builtin function, with no code object and so no CO_GENERATOR flag;
    whether it is a generator function is read from its source, which the
    build leaves next to the extension module.  None: a compiled function
    whose source is not there (unknown)."""
    if inspect.isgeneratorfunction(fn):
        return True
    if type(fn) is not BuiltinFunctionType:
        return False
    modname = getattr(fn, "__module__", None) or ""
    file = getattr(sys.modules.get(modname), "__file__", None) or ""
    if not file or file.endswith(".py"):
        return False  # a builtin of CPython's own, or of a C extension
    return _compiled_is_generator(modname, getattr(fn, "__qualname__", ""))


@functools.cache
def _compiled_is_generator(modname: str, qualname: str) -> bool | None:
    """Does the def of ``qualname`` in the source of module ``modname`` yield?
    The source is found next to its package's ``__init__.py`` (interpreted):
    the ``__file__`` mypyc gives a module of a shared build library is not
    always where the module is."""
    package, _, leaf = modname.rpartition(".")
    pkg_file = getattr(sys.modules.get(package), "__file__", None) if package else None
    if not pkg_file:
        return None
    try:
        tree: ast.AST = ast.parse((Path(pkg_file).parent / f"{leaf}.py").read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    for part in qualname.split("."):
        body = getattr(tree, "body", [])
        found = [n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part]
        if not found:
            return None
        tree = found[-1]
    if not isinstance(tree, ast.FunctionDef):
        return None
    todo: list[ast.AST] = list(tree.body)
    while todo:  # a yield in its own scope (not in a nested def, lambda or class)
        node = todo.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))
    return False


def as_generator(fn: Callable[..., Any]) -> Callable[..., Any]:
    gen = is_generator_function(fn)
    if gen:
        return fn
    if gen is None:  # a compiled function of unknown kind: decided per call
        def adaptive(*args: Any) -> Any:
            r = fn(*args)
            if hasattr(r, "send") and hasattr(r, "throw"):
                return (yield from r)
            return r

        adaptive.__name__ = getattr(fn, "__name__", "hook")
        adaptive.__doc__ = fn.__doc__
        adaptive.__wrapped__ = fn  # type: ignore[attr-defined]
        return adaptive

    def wrapper(*args: Any) -> Any:
        return fn(*args)
        yield  # pragma: no cover  (makes this a generator function)

    wrapper.__name__ = getattr(fn, "__name__", "hook")
    wrapper.__doc__ = fn.__doc__
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def build_ops(kind: str, module: ModuleType, hooks: list[Hook], source: str,
              not_hooks: frozenset[str] = frozenset()) -> Ops:
    """``not_hooks``: kernel function names a module may well define that are
    close to a hook's name but are not one (``tlb_remove_table_one()`` vs
    the ``tlb_remove_table_sync_one`` hook)."""
    name = getattr(module, "NAME", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"{source}: a {kind} must define NAME = \"...\" (a non-empty string)")
    names = [h.name for h in hooks]
    _check_misspelt_hooks(kind, module, names, source, not_hooks)
    ops = Ops(kind, name, inspect.getdoc(module) or "", source)
    for hook in hooks:
        fn = getattr(module, hook.name, None)
        if fn is None:
            if hook.required:
                raise PluginError(f"{source}: {kind} {name!r} does not define {hook.name}() ({hook.doc})")
            fn = hook.default
        elif not callable(fn):
            raise PluginError(f"{source}: {kind} {name!r}: {hook.name} is not a function")
        elif not hook.generator and is_generator_function(fn):
            raise PluginError(f"{source}: {kind} {name!r}: {hook.name}() must be a plain function "
                              "(the machine calls it directly, not with `yield from`)")
        if fn is not None and hook.generator:
            fn = as_generator(fn)
        setattr(ops, hook.name, fn)
    return ops


def _check_misspelt_hooks(kind: str, module: ModuleType, hooks: list[str], source: str,
                          not_hooks: frozenset[str] = frozenset()) -> None:
    """A public function defined in the file whose name is one letter or so away
    from a hook is almost certainly a misspelt hook that would be silently
    ignored."""
    for attr, value in vars(module).items():
        if attr in hooks or attr in not_hooks or attr.startswith("_") and not attr.startswith("__tlb"):
            continue
        if not inspect.isfunction(value) or getattr(value, "__module__", None) != module.__name__:
            continue
        close = difflib.get_close_matches(attr, hooks, n=1, cutoff=0.88)
        if close:
            raise PluginError(f"{source}: {attr}() is not a {kind} hook; did you mean {close[0]}()?")


#: lists that :func:`load_module_file` appends every file it loads to: a
#: plug-in is its file plus the helper files it loads by path (fuzz.work ships
#: them together to the workers of a campaign, by content)
LOAD_RECORDERS: list[list[Path]] = []


def load_module_file(path: str | Path, kind: str) -> ModuleType:
    p = Path(path)
    if not p.is_file():
        raise PluginError(f"{path}: no such {kind} file")
    for rec in LOAD_RECORDERS:
        rec.append(p.resolve())
    digest = hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:10]
    modname = f"_shootdown_{kind}_{p.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(modname, p.resolve())
    if spec is None or spec.loader is None:
        raise PluginError(f"{path}: cannot load as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    _FILES[str(p.resolve())] = (kind, str(path))
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise PluginError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except (Exception, SystemExit) as e:  # a user file failing at import: report, don't trace or exit
        failure = blame(e, [])
        where = failure.args[0].split(": ", 1)[0] if failure is not None else str(path)
        what = f"called sys.exit({e.code!r})" if isinstance(e, SystemExit) else f"{type(e).__name__}: {e}"
        raise PluginError(f"{where}: importing the {kind} failed: {what}") from None
    return module
