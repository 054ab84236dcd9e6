"""``SHOOTDOWN_PURE=1`` (impls/_pure.py): the interpreted modules even beside a
compiled build, and the commands that trace interpreted code (explore, the
exhaustive explorer's sleep-set reduction) asking for it themselves.

A real compiled build is not needed to show the finder works: an extension
module that cannot load (garbage bytes under the extension suffix) shadows its
``.py`` file for the default import machinery, so an import either fails (the
extension was chosen) or succeeds from the ``.py`` file (the finder chose it).
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
PROBE = "import impls.machine.tlb as t, oracle.stale as s; print(t.__file__); print(s.__file__)"


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory) -> Path:
    """A copy of the packages with an unloadable 'compiled' tlb.py and stale.py."""
    d = tmp_path_factory.mktemp("shadowed")
    for pkg in ("impls", "oracle", "fuzz"):
        shutil.copytree(ROOT / pkg, d / pkg, ignore=shutil.ignore_patterns("__pycache__", f"*{SUFFIX}"))
    (d / "impls" / "machine" / f"tlb{SUFFIX}").write_bytes(b"not an ELF object\n")
    (d / "oracle" / f"stale{SUFFIX}").write_bytes(b"not an ELF object\n")
    return d


def _probe(d: Path, pure: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SHOOTDOWN_PURE", "PYTHONPATH")}
    if pure is not None:
        env["SHOOTDOWN_PURE"] = pure
    return subprocess.run([sys.executable, "-c", PROBE], cwd=d, env=env, capture_output=True, text=True,
                          timeout=120)


def test_without_the_variable_the_extension_module_wins(shadowed):
    """The control: the default machinery picks the extension over the .py
    (so the next test's success is the finder's doing)."""
    r = _probe(shadowed, None)
    assert r.returncode != 0 and "ImportError" in r.stderr, r.stdout + r.stderr


@pytest.mark.parametrize("value", ["0", ""])
def test_zero_or_empty_is_off(shadowed, value):
    assert _probe(shadowed, value).returncode != 0


def test_shootdown_pure_imports_the_py_files(shadowed):
    r = _probe(shadowed, "1")
    assert r.returncode == 0, r.stderr
    files = r.stdout.split()
    assert files == [str(shadowed / "impls" / "machine" / "tlb.py"), str(shadowed / "oracle" / "stale.py")]


def test_reexec_only_when_compiled_modules_are_loaded(monkeypatch):
    from impls import _pure
    calls = []
    monkeypatch.setattr(_pure.os, "execve", lambda *a: calls.append(a))
    monkeypatch.delenv("SHOOTDOWN_PURE", raising=False)
    monkeypatch.setattr(_pure, "compiled_loaded", lambda: [])
    _pure.reexec_pure(["explore", "--budget", "5"], "explore")
    assert calls == []  # nothing compiled: go on in this process
    monkeypatch.setattr(_pure, "compiled_loaded", lambda: ["impls.machine.tlb"])
    _pure.reexec_pure(["explore", "--budget", "5"], "explore")
    (exe, argv, env), = calls
    assert argv == [sys.executable, "-m", "fuzz", "explore", "--budget", "5"] and env["SHOOTDOWN_PURE"] == "1"
    calls.clear()
    monkeypatch.setenv("SHOOTDOWN_PURE", "1")  # already the re-executed process: no loop
    _pure.reexec_pure(["explore"], "explore")
    assert calls == []


@pytest.mark.parametrize("argv, needs", [
    (["explore", "--budget", "1"], "explore"),
    (["run", "--exhaustive", "--reduction", "sleep", "corpus/x.yaml"], "run --exhaustive --reduction sleep"),
    (["run", "--exhaustive", "corpus/x.yaml"], None),  # no reduction, no tracer: the compiled build is fine
    (["matrix", "--exhaustive"], None),
    (["fuzz", "--runs", "1"], None),
    (["matrix"], None),
])
def test_the_cli_asks_for_the_interpreted_modules_where_it_traces(monkeypatch, argv, needs):
    from fuzz import cli

    class Asked(Exception):
        pass

    def fake(args, why):
        raise Asked(args, why)

    monkeypatch.setattr(cli, "reexec_pure", fake)
    monkeypatch.setattr(sys, "argv", ["shootdown", *argv])
    parser = cli.build_parser()
    func = parser.parse_args(argv).func
    monkeypatch.setattr(cli, "build_parser", lambda: _Stub(parser, func))
    if needs is None:
        assert cli.main() == 0
    else:
        with pytest.raises(Asked) as e:
            cli.main()
        assert e.value.args == (argv, needs)
    # a test calling main([...]) is never re-executed (it would replace pytest)
    assert cli.main(argv) == 0


class _Stub:
    """The real parser, with the command replaced by one that succeeds."""

    def __init__(self, parser, func):
        self.parser = parser

    def parse_args(self, argv=None):
        ns = self.parser.parse_args(argv)
        ns.func = lambda _args: 0
        return ns


def test_the_tracer_refuses_compiled_machine_modules(monkeypatch):
    from impls.machine import footprint
    monkeypatch.setattr(footprint, "compiled_loaded", lambda: ["impls.machine.page_alloc", "oracle.check"])
    with pytest.raises(RuntimeError, match="SHOOTDOWN_PURE=1"):
        footprint.Tracer().install()
    monkeypatch.setattr(footprint, "compiled_loaded", lambda: ["oracle.check"])  # the oracle is not traced
    t = footprint.Tracer()
    t.install()
    t.uninstall()
