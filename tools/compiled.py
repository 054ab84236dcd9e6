"""The optional compiled build: the modules listed in :data:`MODULES` (the
oracle's checks, the machine core, the program generator), compiled with mypyc
into extension modules that sit next to their ``.py`` files and shadow them on
import.

    .venv/bin/python tools/compiled.py build    # `make compiled` (needs mypy and a C compiler)
    .venv/bin/python tools/compiled.py clean    # `make clean-compiled`: the pure-Python path again
    .venv/bin/python tools/compiled.py status   # which of MODULES import compiled

Nothing else depends on it: without the build every module is the ``.py``
file, as on a fresh clone.  Which modules are in :data:`MODULES`, and why the
others are not, is in ARCHITECTURE.md ("The optional compiled build").
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: the modules compiled by `make compiled`, as paths relative to the root
MODULES: tuple[str, ...] = (
    "oracle/base.py",
    "oracle/shadow.py",
    "oracle/stale.py",
    "oracle/table_uaf.py",
    "oracle/bad_walk.py",
    "oracle/pins.py",
    "oracle/ordering.py",
    "oracle/accounting.py",
    "oracle/behaviours.py",
    "oracle/check.py",
    "oracle/divergence.py",
    "impls/machine/choices.py",
    "impls/machine/cpu.py",
    "impls/machine/fault.py",
    "impls/machine/filemap.py",
    "impls/machine/history.py",
    "impls/machine/huge_memory.py",
    "impls/machine/hugetlb.py",
    "impls/machine/kernel.py",
    "impls/machine/khugepaged.py",
    "impls/machine/machine.py",
    "impls/machine/memory.py",
    "impls/machine/mmap.py",
    "impls/machine/mmu_gather.py",
    "impls/machine/mmu_notifier.py",
    "impls/machine/mremap.py",
    "impls/machine/page_alloc.py",
    "impls/machine/paravirt.py",
    "impls/machine/pfnmap.py",
    "impls/machine/pgtable.py",
    "impls/machine/pgtable_generic.py",
    "impls/machine/platform.py",
    "impls/machine/pt_reclaim.py",
    "impls/machine/rcu.py",
    "impls/machine/sched_core.py",
    "impls/machine/smp.py",
    "impls/machine/strategy.py",
    "impls/machine/tlb.py",
    "impls/machine/tlbflush.py",
    "fuzz/generate.py",
)

#: where setuptools builds (the objects and the generated C); removed by clean
BUILD_DIR = ROOT / "build" / "mypyc"
#: module path -> sha256 of the source it was compiled from (written by build)
MANIFEST = BUILD_DIR / "manifest.json"

_SETUP = """\
import sys
from setuptools import setup
from mypyc.build import mypycify

setup(name="shootdown_compiled", packages=[], py_modules=[],
      ext_modules=mypycify({modules!r}, opt_level="3", target_dir={target!r},
                            group_name="impls.compiled"))
"""


def module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def artifacts() -> list[Path]:
    """The extension modules a build leaves in the tree (and its shared library)."""
    out: list[Path] = []
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for top in ("impls", "oracle", "fuzz"):
            out.extend((ROOT / top).rglob(f"*{suffix}"))
        out.extend(ROOT.glob(f"*__mypyc{suffix}"))  # (where a plain `mypyc` run leaves it)
    return sorted(set(out))


def clean() -> int:
    for p in artifacts():
        p.unlink()
        print(f"removed {p.relative_to(ROOT)}")
    shutil.rmtree(BUILD_DIR, ignore_errors=True)
    return 0


def build(modules: tuple[str, ...] = MODULES) -> int:
    try:
        import mypyc  # noqa: F401
    except ImportError:
        print("mypyc is not installed (pip install mypy)", file=sys.stderr)
        return 1
    clean()
    out = BUILD_DIR / "out"
    for m in ("impls/compiled", *modules):
        (out / m).parent.mkdir(parents=True, exist_ok=True)
    setup = BUILD_DIR / "setup.py"
    setup.write_text(_SETUP.format(modules=[str(ROOT / m) for m in modules], target=str(BUILD_DIR / "c")))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # built in build/mypyc/out (not in the root, where setuptools would read
    # pyproject.toml), then copied next to the sources; mypy names the modules
    # after their packages (oracle/__init__.py), so absolute paths are fine
    rc = subprocess.call([sys.executable, str(setup), "-q", "build_ext", "--inplace",
                          "--build-temp", str(BUILD_DIR / "tmp")], cwd=out, env=env)
    if rc != 0:
        return rc
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        built = [*out.glob(f"impls/compiled__mypyc{suffix}"),
                 *(so for m in modules for so in (out / m).parent.glob(Path(m).stem + suffix))]
        for so in built:
            dest = ROOT / so.relative_to(out)
            shutil.copy2(so, dest)
            print(f"built {dest.relative_to(ROOT)}")
    MANIFEST.write_text(json.dumps({m: _digest(m) for m in modules}, indent=1, sort_keys=True) + "\n")
    return status()


def _digest(path: str) -> str:
    return hashlib.sha256((ROOT / path).read_bytes()).hexdigest()


def stale() -> list[str]:
    """Modules whose extension module in the tree was not built from the
    source next to it (edited since `make compiled`): the extension would
    shadow the edit.  Every module counts if the build's manifest is gone."""
    try:
        built = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        built = {}
    out = []
    for so in artifacts():
        rel = so.relative_to(ROOT)
        if rel.name.startswith("compiled__mypyc") or rel.parent == Path("."):
            continue  # the shared library: its modules are checked one by one
        src = (rel.parent / (rel.name.split(".", 1)[0] + ".py")).as_posix()
        if built.get(src) != (_digest(src) if (ROOT / src).exists() else None):
            out.append(src)
    return out


def compiled_modules(names: list[str] | None = None) -> dict[str, bool]:
    """module name -> is the imported module an extension module (compiled)?"""
    out = {}
    for name in names if names is not None else [module_name(m) for m in MODULES]:
        mod = importlib.import_module(name)
        out[name] = not (getattr(mod, "__file__", "") or "").endswith(".py")
    return out


def build_label() -> str:
    """One line for benchmark output: which build ran."""
    st = compiled_modules()
    done = [n for n, c in st.items() if c]
    old = stale()
    if old:
        return f"STALE compiled build ({', '.join(old)} edited since `make compiled`): figures are not comparable"
    if not done:
        return "pure Python (no compiled modules; `make compiled` builds them)"
    if len(done) == len(st):
        return f"compiled (mypyc): all {len(st)} modules of tools/compiled.py MODULES"
    return f"PARTLY compiled (mypyc): {len(done)} of {len(st)} modules: {', '.join(done)}"


def status() -> int:
    sys.path.insert(0, str(ROOT))
    st = compiled_modules()
    for name, c in st.items():
        print(f"{'compiled' if c else 'pure Python':<12} {name}")
    old = stale()
    for src in old:
        print(f"STALE: {src} was edited after `make compiled`: its extension module shadows the edit "
              f"(make compiled again, or make clean-compiled)", file=sys.stderr)
    return 1 if old else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cmd = args[0] if args else "status"
    if cmd == "build":
        return build(tuple(args[1:]) or MODULES)
    if cmd == "clean":
        return clean()
    if cmd == "status":
        return status()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
