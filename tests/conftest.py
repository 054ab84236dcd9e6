"""Test configuration: Hypothesis profiles, and a guard against leaked global
RNG use (the simulator must never touch the global `random`)."""

from __future__ import annotations

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
