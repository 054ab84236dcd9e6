"""The import contract: strategies never import each other, the machine and
the oracle never import a strategy or a platform (import-linter contracts in
pyproject.toml, checked here so `pytest` alone enforces them)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.fail("import-linter is not installed (pip install -e '.[dev]')")
    r = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 kept, 0 broken" in r.stdout


def test_contract_catches_a_forbidden_import(tmp_path):
    """The contract is not vacuous: a machine module importing a strategy breaks it."""
    import importlib.util
    spec = importlib.util.find_spec("importlinter")
    assert spec is not None
    bad = ROOT / "impls" / "machine" / "_contract_probe.py"
    bad.write_text("import impls.native.mmu_gather  # noqa\n")
    try:
        exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
        r = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode != 0
        assert "broken" in r.stdout
    finally:
        bad.unlink()
