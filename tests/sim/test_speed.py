"""Simulator speed: arxiv-trace requests on one replica from a cached profile, fit included."""
from __future__ import annotations

import time

import pytest

from podserve.bench.workloads import WorkloadConfig, generate
from podserve.config import SchedulerConfig
from podserve.sim.cache import fitted_profile
from podserve.sim.cost_model import CostModel
from podserve.sim.memory import num_kv_blocks
from podserve.sim.simulator import ClusterConfig, Simulator


def _simulate(profile, config, num_requests: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    fitted = fitted_profile(profile)  # the session cache is cold the first time: fitting is timed
    sched = SchedulerConfig(chunk_size=512, max_num_seqs=128, max_model_len=8192)
    sim = Simulator(ClusterConfig(scheduler=sched), CostModel(fitted, config), num_kv_blocks(config, fitted.meta))
    res = sim.run(generate(WorkloadConfig(num_requests=num_requests, trace="arxiv", qps=6.0)))
    assert res.collector.summary()["num_completed"] == num_requests
    return time.perf_counter() - t0, res.num_iterations


def test_2000_requests_in_seconds(h100_8b):
    profile, _, config = h100_8b
    wall, iters = _simulate(profile, config, 2000)
    assert iters > 5000
    assert wall < 8.0, f"{wall:.1f}s for 2,000 requests ({iters} iterations)"


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="load-dependent on the shared 2-core box: 6.4-7.0 s at load average 2-2.5, "
                                        "9.4-10.8 s beside a memory-heavy job (docs/benchmarks-sim.md)")
def test_10000_requests_under_10s(h100_8b):
    profile, _, config = h100_8b
    wall, _ = _simulate(profile, config, 10000)
    assert wall < 10.0, f"{wall:.1f}s"
