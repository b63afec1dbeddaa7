"""SLO-aware token budget: iterations stay under the TBT SLO, and capacity under that SLO
is at least the best fixed chunk size's (in simulation)."""
from __future__ import annotations

import pytest

from podserve.bench.workloads import WorkloadConfig, generate
from podserve.config import SchedulerConfig
from podserve.sim.cost_model import CostModel
from podserve.sim.search import SearchPoint, SearchTask, evaluate
from podserve.sim.simulator import ClusterConfig, Simulator
from podserve.sim.slo_watch import LatencySLO
from podserve.sim.token_budget import SLOTokenBudget


def test_budget_keeps_predicted_iterations_under_the_slo(h100_8b):
    _, fitted, config = h100_8b
    cost = CostModel(fitted, config)
    slo = 0.025
    sched = SchedulerConfig(chunk_size=4096, max_num_seqs=128, max_model_len=8192)
    sim = Simulator(ClusterConfig(scheduler=sched), cost, 20000, token_budget=SLOTokenBudget(cost, slo))
    res = sim.run(generate(WorkloadConfig(num_requests=150, qps=8.0, seed=2)))
    its = res.collector.iterations
    hybrid = [it for it in its if it.num_prefill_tokens > SLOTokenBudget(cost, slo).min_chunk]
    assert hybrid and max(it.duration for it in hybrid) <= slo * 1.0001
    # It adapts: chunks vary with the number of decodes riding along.
    assert len({it.num_prefill_tokens for it in hybrid}) > 10
    assert res.collector.summary()["num_completed"] == 150


def test_budget_needs_sarathi(h100_8b):
    _, fitted, config = h100_8b
    cost = CostModel(fitted, config)
    with pytest.raises(ValueError, match="needs the sarathi scheduler"):
        Simulator(ClusterConfig(scheduler=SchedulerConfig(policy="vllm", max_model_len=8192)), cost, 1000,
                  token_budget=SLOTokenBudget(cost, 0.05))


def test_slo_budget_capacity_at_least_best_fixed_chunk(h100_8b):
    slo = LatencySLO(ttft_s=1.0, tbt_s=0.03)
    workload = WorkloadConfig(num_requests=150, seed=0)

    def capacity(chunk: int, budget: bool = False) -> float:
        point = SearchPoint("llama-3-8b", "h100", 1, 1, 1, "sarathi", chunk, 128, tbt_budget=budget)
        result = evaluate(SearchTask(point, workload, slo, tolerance=0.05, qps_start=4.0))
        assert result["feasible"], result
        return result["capacity_qps"]

    fixed = {c: capacity(c) for c in (256, 512, 1024, 2048)}
    adaptive = capacity(4096, budget=True)
    assert max(fixed.values()) > 0
    assert adaptive >= max(fixed.values()), (adaptive, fixed)


def test_measured_iterations_rescale_the_budget(h100_8b):
    """In the engine, iterations running 25% over their prediction shrink the budget so its
    predicted-and-rescaled time meets the SLO again; the simulator (no observations) keeps 1."""
    from podserve.core.batch import ScheduledBatch, ScheduledSeq
    from podserve.request import SamplingParams

    _, fitted, config = h100_8b
    cost = CostModel(fitted, config)
    budget = SLOTokenBudget(cost, 0.03)
    sched = SchedulerConfig(chunk_size=4096, max_num_seqs=128, max_model_len=8192)
    sim = Simulator(ClusterConfig(scheduler=sched), cost, 20000, token_budget=budget)
    scheduler = sim.replicas[0].scheduler
    from podserve.request import Request

    scheduler.add_request(Request("a", list(range(3000)), SamplingParams(max_tokens=4), 0.0))
    before = budget(scheduler, [])
    for i in range(20):
        seq = ScheduledSeq(f"p{i}", list(range(512)), 0, True, True, [0], SamplingParams(), 0)
        batch = ScheduledBatch(iteration=i, seqs=[seq], num_decodes=0)
        budget.observe(batch, 1.25 * cost.iteration_cost(batch).total_pp1)
    assert budget.scale == pytest.approx(1.25)
    after = budget(scheduler, [])
    assert after < before
    assert budget._time(0, 0, 0, [(3000, 0)], after) <= 0.03 + 1e-9  # scaled prediction meets the SLO
    decode_only = ScheduledBatch(iteration=99, seqs=[ScheduledSeq("d", [1], 10, False, True, [0], SamplingParams(), 1)], num_decodes=1)
    budget.observe(decode_only, 100.0)  # decode-only iterations are not what the budget sizes
    assert budget.scale == pytest.approx(1.25)
