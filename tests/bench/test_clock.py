"""The thread-CPU clock: counts this thread's work, skips idle time on request."""
from __future__ import annotations

import time

import pytest

from podserve.bench.clock import ThreadCPUClock, make_clock


def test_cpu_clock_ignores_sleep_and_advances_on_request():
    clock = ThreadCPUClock()
    t0 = clock()
    time.sleep(0.05)
    assert clock() - t0 < 0.02  # sleeping is not this thread's work
    clock.advance_to(t0 + 10.0)
    assert 10.0 <= clock() - t0 < 10.05
    clock.advance_to(t0)  # the past: no-op
    assert clock() - t0 >= 10.0
    x = 0
    start = clock()
    while clock() - start < 0.01:  # busy work does count
        x += 1
    assert x > 0


def test_make_clock():
    assert make_clock("wall") is time.perf_counter
    assert isinstance(make_clock("cpu"), ThreadCPUClock)
    with pytest.raises(ValueError, match="wall or cpu"):
        make_clock("gpu")


def test_runner_on_the_cpu_clock_skips_idle_gaps():
    pytest.importorskip("torch")
    from podserve.bench.runner import run_workload
    from podserve.bench.workloads import WorkloadRequest
    from podserve.config import EngineConfig, SchedulerConfig
    from podserve.engine.engine import Engine

    engine = Engine(EngineConfig(model="tiny-llama", max_model_len=256, scheduler=SchedulerConfig(chunk_size=64)))
    engine.clock = ThreadCPUClock()
    workload = [WorkloadRequest(0.0, 8, 3), WorkloadRequest(30.0, 8, 3)]  # 30 s apart
    run = run_workload(engine, workload)
    assert run.wall_s < 10  # the gap was skipped, not slept through
    done = sorted(run.collector.completed(), key=lambda r: r.arrival)
    assert done[1].arrival - done[0].arrival == pytest.approx(30.0)
    assert all(r.ttft is not None and 0 < r.ttft < 5 for r in done)
