"""Engine.start_profile / stop_profile: a kernel summary per rank, and the run is unchanged."""
from __future__ import annotations

import pytest

from podserve.config import CacheConfig, EngineConfig, ParallelConfig, SchedulerConfig
from podserve.engine.engine import Engine
from podserve.request import SamplingParams


def _engine(async_scheduling):
    return Engine(EngineConfig(model="tiny-llama", device="cpu", attention="torch", max_model_len=256,
                               scheduler=SchedulerConfig(chunk_size=32, max_num_seqs=8),
                               parallel=ParallelConfig(async_scheduling=async_scheduling),
                               cache=CacheConfig(num_blocks=256)))


def _run(engine, profile_at: int | None):
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    ids = [engine.add_request([3 + (5 * i + j) % 90 for j in range(10 + 7 * i)], params) for i in range(5)]
    tokens, summaries, steps = {}, None, 0
    while engine.has_unfinished_requests():
        if steps == profile_at:
            engine.start_profile()
        if profile_at is not None and steps == profile_at + 3:
            summaries = engine.stop_profile()
        for out in engine.step():
            tokens[out.request_id] = list(out.outputs[0].token_ids)
        steps += 1
    return [tokens[r.request_id] for r in ids], summaries


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_profile_window_keeps_outputs(async_scheduling):
    plain, _ = _run(_engine(async_scheduling), None)
    profiled, summaries = _run(_engine(async_scheduling), profile_at=2)
    assert profiled == plain and all(len(t) == 12 for t in profiled)
    assert len(summaries) == 1
    summary = summaries[0]
    assert summary["steps"] >= 3 and summary["timer"] == "cpu-operator"
    assert summary["total_us_per_step"] > 0 and summary["kernels"]
    assert abs(sum(summary["families_us_per_step"].values()) - summary["total_us_per_step"]) < 1e-6 * summary["total_us_per_step"] + 1e-6


def test_profile_misuse_is_an_error():
    engine = _engine(False)
    with pytest.raises(RuntimeError, match="not running"):
        engine.stop_profile()
    engine.start_profile()
    with pytest.raises(RuntimeError, match="already running"):
        engine.start_profile()
    engine.close()  # discards the window left open
    assert not engine.runner.profiler.active


def test_a_profile_left_running_does_not_crash_the_exit():
    import subprocess
    import sys

    code = ("from tests.engine.test_profile import _engine\n"
            "e = _engine(False)\n"
            "e.start_profile()\n"
            "print('left running')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "left running" in done.stdout, done.stderr[-2000:]
