"""The SLO-aware token budget in the engine (``SchedulerConfig.tbt_slo`` + a profile): the
same hook, cost model and batches as in the simulator; clear errors when it cannot apply."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

pytest.importorskip("torch")

from podserve.bench.runner import run_workload  # noqa: E402
from podserve.bench.workloads import WorkloadConfig, generate  # noqa: E402
from podserve.config import EngineConfig, SchedulerConfig  # noqa: E402
from podserve.engine.engine import Engine  # noqa: E402
from podserve.entrypoints import bench_cli  # noqa: E402
from podserve.model.presets import preset_config  # noqa: E402
from podserve.sim.derive import derive_profile  # noqa: E402
from podserve.sim.simulator import ClusterConfig, Simulator  # noqa: E402
from podserve.sim.token_budget import SLOTokenBudget  # noqa: E402

MODEL = "tiny-llama"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Cost-model fits go to a temp cache, never the user's ~/.cache."""
    monkeypatch.setenv("PODSERVE_CACHE", str(tmp_path_factory.getbasetemp() / "podserve-cache"))


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory):
    """A CPU/float32 profile of the tiny preset's shape. Its numbers are derived (H100 GEMMs
    through the roofline), not measured: the test checks the wiring, not the timings."""
    profile = derive_profile(MODEL, preset_config(MODEL))
    profile.meta.update(device="cpu", dtype="float32", dtype_bytes=4)
    return profile.save(tmp_path_factory.mktemp("profile"))


def _config(profile_dir, tbt_slo, policy="sarathi", chunk_size=512):
    return EngineConfig(model=MODEL, max_model_len=1024, profile=str(profile_dir),
                        scheduler=SchedulerConfig(policy=policy, chunk_size=chunk_size, max_num_seqs=16, tbt_slo=tbt_slo))


def test_engine_budget_matches_the_simulator_batch_for_batch(profile_dir):
    engine = Engine(_config(profile_dir, tbt_slo=None))
    cost = SLOTokenBudget.for_engine(profile_dir, engine.model_config, "cpu", "float32", 1.0).cost_model
    # An SLO that a 96-token prefill chunk alone just meets: 300-token prompts must be split.
    slo = cost.estimate(0, 0, 0, [(96, 0)], 1).total_pp1
    engine.set_tbt_slo(slo)
    assert engine.scheduler.token_budget is engine.token_budget and engine.config.scheduler.tbt_slo == slo
    engine.token_budget.adaptive = False  # measured times would (rightly) rescale this derived profile's predictions
    # Arrivals at t=0: batch shapes depend only on the scheduler and the cost model, so the
    # engine and the simulator (same config, same profile) must form identical batches.
    workload = generate(WorkloadConfig(num_requests=10, lengths="uniform", min_prompt_tokens=200, max_prompt_tokens=300,
                                       max_output_tokens=12, arrival="static", seed=3))
    run = run_workload(engine, workload)
    sim = Simulator(ClusterConfig(scheduler=engine.config.scheduler, block_size=engine.config.cache.block_size,
                                  watermark=engine.config.cache.watermark), cost, engine.kv.num_blocks).run(workload)
    shapes = [(it.num_decodes, it.num_prefill_tokens) for it in run.collector.iterations]
    assert shapes == [(it.num_decodes, it.num_prefill_tokens) for it in sim.collector.iterations]
    assert max(n for _, n in shapes) < 200 and len({n for _, n in shapes}) > 3  # chunks shrink as decodes ride along
    assert run.collector.summary()["num_completed"] == 10
    engine.set_tbt_slo(None)
    assert engine.scheduler.token_budget is None and engine.config.scheduler.tbt_slo is None


def test_errors_name_the_remedy(profile_dir, tmp_path):
    with pytest.raises(ValueError, match="--profile"):
        Engine(replace(_config(profile_dir, 0.1), profile=None))
    with pytest.raises(ValueError, match="sarathi"):
        Engine(_config(profile_dir, 0.1, policy="vllm", chunk_size=1024))
    other = derive_profile("llama-3-8b", preset_config("llama-3-8b"))
    other.meta.update(device="cpu", dtype="float32", dtype_bytes=4)
    other.save(tmp_path / "other")
    with pytest.raises(ValueError, match="another model shape"):
        Engine(replace(_config(profile_dir, 0.1), profile=str(tmp_path / "other")))
    with pytest.raises(ValueError, match="tbt_slo"):
        SchedulerConfig(tbt_slo=0)


def test_bench_tbt_slo_uses_the_budget(profile_dir, tmp_path, capsys):
    args = ["bench", "--model", MODEL, "--max-model-len", "512", "--chunk-size", "256", "--lengths", "uniform",
            "--min-prompt-tokens", "100", "--max-prompt-tokens", "200", "--max-output-tokens", "4",
            "--num-requests", "4", "--qps", "50", "--no-plots", "--tbt-slo", "0.5"]
    assert bench_cli.main([*args, "--output-dir", str(tmp_path / "a")]) == 2
    assert "--profile" in capsys.readouterr().err
    assert bench_cli.main([*args, "--profile", str(profile_dir), "--output-dir", str(tmp_path / "b")]) == 0
    engine = json.loads((tmp_path / "b" / "results.json").read_text())["engine"]
    assert engine["scheduler"]["tbt_slo"] == 0.5 and engine["profile"] == str(profile_dir)
