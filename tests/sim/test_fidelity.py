"""CPU fidelity: profile the model here, run one trace-driven workload through the engine
and through the simulator, compare P50/P90 TTFT, TBT, E2E and throughput.

Timings on a shared 2-core machine are noisy; both runs use one torch thread (multi-
threaded GEMMs stall whenever a sibling thread is descheduled)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from podserve.bench.workloads import WorkloadConfig, generate  # noqa: E402
from podserve.config import SchedulerConfig  # noqa: E402
from podserve.sim.fidelity import run_fidelity  # noqa: E402
from podserve.sim.profiler import ProfileGrid  # noqa: E402


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_fidelity_tiny_model_fast(one_thread, tmp_path):
    """Default suite: a tiny random-weight Llama, where per-iteration host overhead matters most.
    Profile and engine are timed in their thread's CPU time (``podserve.bench.clock``): on the
    shared test machine, wall time swings with other jobs far more than the model errs."""
    grid = ProfileGrid(tokens=(1, 4, 16, 64, 256, 1024), lm_head_tokens=(1, 4, 16, 64), prefill_q=(16, 64, 256),
                       prefill_prefix=(0, 256, 768), decode_batch=(1, 4, 16, 32), decode_ctx=(64, 256, 1024),
                       overhead_batches=(1, 8, 24), time_budget_s=0.005, passes=3)
    # All requests at t=0: the engine never sleeps between arrivals, so timer wake-up latency
    # on a loaded machine (milliseconds, as long as this model's iterations) stays out of it.
    workload = generate(WorkloadConfig(num_requests=48, trace="arxiv", length_scale=0.1, max_prompt_tokens=512,
                                       max_output_tokens=48, arrival="static", seed=1))
    report = run_fidelity("tiny-llama", workload, scheduler=SchedulerConfig(chunk_size=256, max_num_seqs=32),
                          grid=grid, profile_dir=tmp_path / "profile", progress=None, clock="cpu", engine_runs=3)
    print(report.format())
    assert (tmp_path / "profile" / "meta.json").is_file()
    assert report.median_abs_error < 0.25, report.format()


@pytest.mark.slow
@pytest.mark.parametrize("clock", [
    "cpu",
    pytest.param("wall", marks=pytest.mark.xfail(strict=False, reason="wall time on the shared 2-core box swings with "
                                                 "other jobs (46% error at load average 4, docs/benchmarks-sim.md)")),
])
def test_fidelity_default_model_arxiv(one_thread, clock):
    """SmolLM2-135M on a shrunken arxiv trace; target: median absolute error < 10%."""
    workload = generate(WorkloadConfig(num_requests=32, trace="arxiv", length_scale=0.05, qps=0.8, seed=0))
    report = run_fidelity(None, workload, scheduler=SchedulerConfig(chunk_size=256, max_num_seqs=32), progress=None,
                          clock=clock)
    print(report.format())
    assert report.median_abs_error < 0.10, report.format()
