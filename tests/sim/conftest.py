"""Shared fixtures: a derived H100 profile (no torch needed) and a fake cost model."""
from __future__ import annotations

import pytest

from podserve.sim.cost_model import IterationCost


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Cost-model fits go to a per-session temp cache, never the user's ~/.cache."""
    monkeypatch.setenv("PODSERVE_CACHE", str(tmp_path_factory.getbasetemp() / "podserve-cache"))


@pytest.fixture(scope="session")
def h100_8b():
    """(profile, fitted, config) of Llama-3-8B on the derived H100 profile."""
    from podserve.model.presets import preset_config
    from podserve.sim.derive import derive_profile
    from podserve.sim.predictors import fit_profile

    config = preset_config("llama-3-8b")
    profile = derive_profile("llama-3-8b", config)
    return profile, fit_profile(profile), config


class LinearCost:
    """Fake cost model: ``per_token`` seconds per token plus ``fixed`` per iteration, split
    evenly over ``pp`` stages. Makes simulated timelines computable by hand."""

    def __init__(self, per_token: float = 1e-3, fixed: float = 0.0, pp: int = 1):
        self.per_token, self.fixed, self.pp = per_token, fixed, pp

    def iteration_cost(self, batch) -> IterationCost:
        return IterationCost(0.0, (self.fixed + self.per_token * batch.num_tokens) / self.pp, 0.0)


@pytest.fixture
def linear_cost():
    return LinearCost
