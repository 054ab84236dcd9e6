"""Test configuration: Hypothesis profiles, a guard against leaked global
RNG use (the simulator must never touch the global `random`), and the
``interpreted`` marker's skip under a compiled build."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import random

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=200)
settings.register_profile("fuzz", deadline=None, max_examples=20_000,
                          suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _no_global_random(request):
    """Hypothesis' trick: the global RNG state must be the same after a test.
    Tests marked ``dask`` are exempt: the Dask client (not the simulator, which
    runs in the cluster's workers) draws from the global RNG."""
    state = random.getstate()
    yield
    if request.node.get_closest_marker("dask") is None:
        assert random.getstate() == state, "the simulator used the global random module"


def _machine_compiled() -> bool:
    """Does ``impls.machine.machine`` import from an extension module (the
    optional compiled build, and SHOOTDOWN_PURE not set)?"""
    spec = importlib.util.find_spec("impls.machine.machine")
    return bool(spec and spec.origin and spec.origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``interpreted`` watch the machine's Python code run (the
    exhaustive explorer's footprint tracer, explore's coverage.py arcs), which a
    compiled module does not show: under a compiled build they are skipped, and
    the pure run (CI's, or ``SHOOTDOWN_PURE=1 make test``) covers them."""
    if not _machine_compiled():
        return
    skip = pytest.mark.skip(reason="traces the interpreted machine: the compiled build is active "
                                   "(run with SHOOTDOWN_PURE=1 or after make clean-compiled)")
    for item in items:
        if item.get_closest_marker("interpreted") is not None:
            item.add_marker(skip)
