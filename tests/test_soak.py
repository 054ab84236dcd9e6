"""bench/soak.py, the gate for model and oracle changes: it runs every
built-in on every SAFE_ON environment, reports per cell, writes what it finds
and fails on a violation."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _soak():
    spec = importlib.util.spec_from_file_location("soak_bench", ROOT / "bench" / "soak.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_soak_runs_every_safe_on_cell_and_reports(tmp_path: Path, capsys):
    rc = _soak().main(["--seeds", "2", "--programs", "3", "--jobs", "1", "--first-seed", "11",
                       "--lengths", "8", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0, out
    for env in ("native", "xen-pv", "broadcast", "native+lazy", "native+pt-reclaim+batch-fail",
                "native+file", "xen-pv+file", "broadcast+file",
                "native+thp", "native+thp+lazy", "xen-pv+thp", "broadcast+thp"):
        assert f"\n{env} " in out
    from fuzz.safe_on import safe_on_cells
    from impls import registry
    cells = len(safe_on_cells([registry.strategy(s) for s in registry.STRATEGIES]))
    assert f"total: {cells * 2 * 3} programs, 0 violations" in out  # cells x 2 seeds x 3 programs
    assert "seed 11" in out and "seed 12" in out


def test_soak_fails_and_writes_a_reproducer_on_a_violation(tmp_path: Path, capsys, monkeypatch):
    """Soaking a strategy that is not safe where it claims to be: exit 1 and a
    reproducer on disk."""
    soak = _soak()
    sys.path.insert(0, str(ROOT / "tests"))
    bad = str(ROOT / "tests" / "mutants" / "flush_mmu_free_before_flush.py")
    monkeypatch.setattr(soak, "BUILTINS", (bad,))
    rc = soak.main(["--seeds", "2", "--programs", "40", "--jobs", "1", "--first-seed", "0",
                    "--lengths", "32", "--out", str(tmp_path / "out"), "--minimize-attempts", "50"])
    out = capsys.readouterr().out
    assert rc == 1, out
    # one file per seed: the same race found from two seeds has the same name, and
    # the second seed's file must not replace the first's
    for seed in (0, 1):
        assert list((tmp_path / "out" / f"seed-{seed}").glob("*.yaml")), out
        assert f"/seed-{seed}/" in out


def test_soak_env_filter_runs_only_those_cells(tmp_path: Path, capsys):
    soak = _soak()
    rc = soak.main(["--seeds", "1", "--programs", "2", "--jobs", "1", "--first-seed", "3",
                    "--lengths", "8", "--out", str(tmp_path / "out"), "--env", "native+hugetlb,arm64+hugetlb"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "soak: 2 cells" in out and "\nnative+hugetlb " in out and "\narm64+hugetlb " in out
    assert "\nnative " not in out and "total: 4 programs, 0 violations" in out
    assert "--env native+hugetlb,arm64+hugetlb" in out


def test_soak_env_filter_refuses_an_unclaimed_environment(tmp_path: Path, capsys):
    import pytest
    with pytest.raises(SystemExit):
        _soak().main(["--env", "no-such-env", "--out", str(tmp_path / "out")])
    assert "no built-in claims no-such-env" in capsys.readouterr().err
