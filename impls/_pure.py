"""``SHOOTDOWN_PURE=1``: import the project's ``.py`` files even where the
optional compiled build (``make compiled``, ``tools/compiled.py``) left an
extension module beside them.

The compiled build is a faster copy of the same code (``bench/golden.py``
proves the histories identical), but two tools look *inside* the running
Python code and see nothing of a compiled module:

* the exhaustive explorer's footprint tracer (``impls/machine/footprint.py``)
  patches ``__getattribute__``/``__setattr__`` of the machine's classes, which
  compiled (native) classes neither allow nor consult;
* ``explore``'s guidance and report use coverage.py's line and arc tracing of
  ``impls/`` and ``oracle/``, which compiled functions do not emit.

So ``shootdown explore`` and ``run --exhaustive --reduction sleep`` (the
only exhaustive mode that installs the tracer; the default, no reduction, runs
compiled) re-execute themselves with ``SHOOTDOWN_PURE=1`` when compiled modules are
loaded (:func:`reexec_pure`, called by ``fuzz.cli.main``), and anyone can set
the variable to run everything interpreted without removing the build.

:func:`install` runs when ``impls``, ``oracle`` or ``fuzz`` is first imported
(their ``__init__``), before any module that may be compiled: a meta-path
finder that returns the source file's spec for a module of these packages.
Package ``__init__`` files are never compiled, so the finder only has to
handle plain modules.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

ENV = "SHOOTDOWN_PURE"
PACKAGES = ("impls", "oracle", "fuzz")
ROOT = Path(__file__).resolve().parent.parent


def wanted() -> bool:
    """Is ``SHOOTDOWN_PURE`` set (to anything but empty or ``0``)?"""
    return os.environ.get(ENV, "") not in ("", "0")


class PureFinder:
    """A meta-path finder: for a module of :data:`PACKAGES`, the spec of its
    ``.py`` file, so that an extension module beside it is not imported."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if path is None or name.partition(".")[0] not in PACKAGES or "." not in name:
            return None
        leaf = name.rpartition(".")[2]
        for d in path:
            src = Path(d) / f"{leaf}.py"
            if src.is_file():
                return importlib.util.spec_from_file_location(name, src)
        return None  # a package, or not ours: the default machinery


def install() -> None:
    """Put :class:`PureFinder` first on ``sys.meta_path`` if :func:`wanted`."""
    if wanted() and not any(isinstance(f, PureFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, PureFinder())  # type: ignore[arg-type]


def compiled_loaded() -> list[str]:
    """The modules of :data:`PACKAGES` imported so far from an extension module."""
    out = []
    for name, mod in list(sys.modules.items()):
        if name.partition(".")[0] in PACKAGES:
            f = getattr(mod, "__file__", None) or ""
            if f.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
                out.append(name)
    return sorted(out)


def reexec_pure(argv: Sequence[str], why: str) -> None:
    """Replace this process by ``python -m fuzz ARGV`` with ``SHOOTDOWN_PURE=1``
    if compiled modules are loaded and the variable is not set yet (no return
    then); otherwise return and let the caller go on.  ``why`` names the tool
    that needs the interpreted modules, for the one-line notice on stderr."""
    if wanted() or not compiled_loaded():
        return
    sys.stderr.write(f"shootdown: {why} needs the interpreted modules: running with {ENV}=1 "
                     "(the compiled build is used by fuzz and matrix)\n")
    sys.stderr.flush()
    env = dict(os.environ, **{ENV: "1"})
    os.execve(sys.executable, [sys.executable, "-m", "fuzz", *argv], env)
