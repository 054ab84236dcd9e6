"""The optional compiled build (tools/compiled.py, `make compiled`): the pure-Python
path is the default, nothing in the default targets depends on the build, the
module set keeps out what must stay interpreted, a build in the tree is never
stale, and (slow) a build from the current sources leaves bench/golden.py's
digests identical."""

from __future__ import annotations

import importlib.machinery
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools import compiled  # noqa: E402

#: what must stay interpreted: strategies and platforms (the planted bugs
#: rebind their functions), plug-in loading, the tests and their mutants;
#: gup.py (planted bugs rebind its functions too), footprint.py (a tracer
#: that patches classes), program.py (Programs are pickled to workers), the
#: packages' __init__.py, and the fuzzer's drivers (fuzz/: all but the generator)
INTERPRETED = ("impls/native/", "impls/xen_semi_rcu/", "impls/pt_reclaim/", "impls/platforms/",
               "impls/registry.py", "impls/__init__.py", "impls/machine/__init__.py",
               "impls/machine/plugin.py", "impls/machine/gup.py", "impls/machine/footprint.py",
               "impls/machine/program.py", "tests/", "fuzz/")
#: ... but for these
COMPILABLE = ("fuzz/generate.py",)


def _tracked() -> list[str] | None:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def _copy_tree(dest: Path) -> None:
    """The work tree as a fresh clone would have it (tracked and new files, no
    ignored ones: no .venv, no build, no extension modules)."""
    files = _tracked()
    if files is None:
        pytest.skip("not a git checkout")
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)


def test_the_module_set_stays_off_what_must_be_interpreted():
    assert compiled.MODULES
    for m in compiled.MODULES:
        assert (ROOT / m).is_file(), m
        assert m in COMPILABLE or not m.startswith(INTERPRETED), f"{m} must stay interpreted"


def test_frozen_values_sent_to_workers_round_trip_through_pickle():
    """Programs, generator configurations and schedules travel to and from the
    workers of a campaign pickled; a compiled frozen dataclass cannot be
    unpickled attribute by attribute, so those of compiled modules pickle by
    value (__reduce__).  Holds in both builds."""
    import copy
    import pickle

    from fuzz.generate import GenConfig, RandomDraw, generate
    from impls.machine.choices import SchedEntry, Schedule

    cfg = GenConfig(platform="native", cpus=(2, 3), length=8, weights={"munmap": 1.0, "access": 2.0})
    sched = Schedule((SchedEntry(1, 2, "x"), SchedEntry(0)), (("irq.defer", (True, False)),))
    prog = generate(RandomDraw(3), cfg).with_schedule(sched)
    for v in (cfg, sched, sched.sched[0], prog):
        assert pickle.loads(pickle.dumps(v)) == v
        assert copy.deepcopy(v) == v


def test_hooks_of_compiled_modules_are_known_generator_functions():
    """The loader wraps a plain-function hook as a generator; a compiled
    function has no code object for inspect.isgeneratorfunction(), so the
    loader reads the function's source: a compiled default hook is used as
    it is (wrapping it would skip it: the boot context switch vanished)."""
    from impls import registry
    from impls.machine import mmu_gather, plugin, tlbflush

    assert plugin.is_generator_function(tlbflush.switch_mm_irqs_off) is True
    assert plugin.is_generator_function(mmu_gather.tlb_finish_mmu) is True
    assert plugin.is_generator_function(tlbflush.enter_lazy_tlb) is False
    assert plugin.is_generator_function(len) is False
    ops = registry.platform("native")
    assert ops.switch_mm_irqs_off is tlbflush.switch_mm_irqs_off
    assert plugin._compiled_is_generator("impls.machine.tlbflush", "switch_mm_irqs_off") is True
    assert plugin._compiled_is_generator("impls.machine.tlbflush", "enter_lazy_tlb") is False
    assert plugin._compiled_is_generator("impls.machine.tlbflush", "no_such_function") is None


def test_no_extension_module_is_committed():
    files = _tracked()
    if files is None:
        pytest.skip("not a git checkout")
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES) + (".so", ".pyd")
    assert [f for f in files if f.endswith(suffixes)] == []


def test_the_default_targets_do_not_build_or_need_it():
    """make test, make fuzz (and the venv they need) and .ci/run never run the
    compiled build: CI is pure Python."""
    make = (ROOT / "Makefile").read_text()
    for target in ("venv", "test", "fuzz", "$(STAMP)"):
        m = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)*)", make, re.M)
        assert m is not None, target
        assert "compiled" not in m.group(0).split("##")[0] + m.group(1), target
    assert "compiled" not in (ROOT / ".ci" / "run").read_text()


def test_a_fresh_clone_runs_pure_python(tmp_path):
    _copy_tree(tmp_path)
    assert not any(p.suffix in (".so", ".pyd") for p in tmp_path.rglob("*") if p.is_file())
    out = subprocess.run([sys.executable, "-c", "from tools import compiled; print(compiled.build_label()); "
                          "print(any(compiled.compiled_modules().values()))"],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith("pure Python"), out
    assert out[1] == "False"


def test_a_compiled_build_in_the_tree_is_not_stale():
    """An extension module shadows its .py: after an edit of a compiled
    module's source, `make compiled` again (or `make clean-compiled`)."""
    if not compiled.artifacts():
        pytest.skip("no compiled build in this tree (the default)")
    assert compiled.stale() == [], "make compiled (or make clean-compiled): these sources changed since"


def _can_compile() -> bool:
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return False
    return shutil.which("cc") is not None or shutil.which("gcc") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _can_compile(), reason="needs mypyc (pip install mypy) and a C compiler")
def test_the_compiled_build_keeps_the_golden_digests(tmp_path):
    """Builds the compiled modules in a copy of the tree: every module of
    MODULES then imports compiled, and bench/golden.py's digests (every event
    of every history, every verdict, the planted bugs' runs) are the pure-Python
    ones.  A minute or two."""
    _copy_tree(tmp_path)
    golden = tmp_path / "golden.json"
    py = [sys.executable]
    subprocess.run([*py, "bench/golden.py", "--record", str(golden)], cwd=tmp_path, check=True,
                   capture_output=True)
    r = subprocess.run([*py, "tools/compiled.py", "build"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = subprocess.run([*py, "-c", "from tools import compiled; print(compiled.build_label())"],
                       cwd=tmp_path, capture_output=True, text=True, check=True)
    assert r.stdout.startswith("compiled (mypyc): all"), r.stdout
    r = subprocess.run([*py, "bench/golden.py", "--check", str(golden)], cwd=tmp_path, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "identical" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
    r = subprocess.run([*py, "tools/compiled.py", "clean"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0
    assert not any(p.suffix == ".so" for p in tmp_path.rglob("*.so")), "make clean-compiled left extension modules"
