"""``podserve bench`` / ``capacity`` end to end on the tiny random-weight preset (CPU, seconds)."""
from __future__ import annotations

import csv
import json

from podserve.bench.runner import run_workload
from podserve.bench.workloads import WorkloadConfig, generate
from podserve.config import EngineConfig, SchedulerConfig
from podserve.entrypoints import bench_cli

TINY = ["--model", "tiny-llama", "--max-model-len", "256", "--chunk-size", "64", "--lengths", "uniform",
        "--min-prompt-tokens", "8", "--max-prompt-tokens", "48", "--min-output-tokens", "2", "--max-output-tokens", "6"]


def test_runner_yields_exact_output_lengths_at_arrival_times():
    from podserve.engine.engine import Engine

    engine = Engine(EngineConfig(model="tiny-llama", max_model_len=256, scheduler=SchedulerConfig(policy="vllm")))
    workload = generate(WorkloadConfig(num_requests=6, lengths="uniform", min_prompt_tokens=4, max_prompt_tokens=40,
                                       max_output_tokens=5, qps=20.0, seed=1))
    run = run_workload(engine, workload)
    done = sorted(run.collector.completed(), key=lambda r: int(r.request_id.split("-")[1]))
    assert [(r.num_prompt_tokens, r.num_output_tokens) for r in done] == [(w.num_prompt_tokens, w.num_output_tokens) for w in workload]
    t0 = done[0].arrival
    assert [round(r.arrival - t0, 9) for r in done] == [round(w.arrival_time, 9) for w in workload]
    assert all(r.scheduling_delay >= 0 and r.ttft >= r.scheduling_delay for r in done)
    assert sum(it.num_prefill_tokens + it.num_decode_tokens for it in run.collector.iterations) == \
        sum(w.num_prompt_tokens + w.num_output_tokens - 1 for w in workload)
    assert not engine.has_unfinished_requests() and engine.kv.num_free_blocks == engine.kv.num_blocks


def test_bench_writes_results_csvs_and_plots(tmp_path, capsys):
    assert bench_cli.main(["bench", *TINY, "--num-requests", "5", "--qps", "50", "--output-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["summary"]["num_completed"] == 5 and results["engine"]["scheduler"]["policy"] == "sarathi"
    assert len(list(csv.DictReader(open(tmp_path / "requests.csv")))) == 5
    assert (tmp_path / "latency_cdf.png").stat().st_size > 0 and (tmp_path / "batch_composition.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "TBT" in out and "p99" in out and "piggybacking" in out
    # Roofline: measured rates, an efficiency per iteration, host time per iteration.
    assert results["roofline"]["rates"]["matmul_flops"] > 0 and "MFU" in out and "host until enqueued" in out
    rows = list(csv.DictReader(open(tmp_path / "iterations_roofline.csv")))
    assert len(rows) == results["summary"]["iterations"]["count"] and all(float(r["efficiency_wall"]) > 0 for r in rows)
    assert results["summary"]["iterations"]["cpu_time"]["count"] == len(rows)


def test_capacity_side_by_side(tmp_path, capsys):
    # An impossible TBT SLO: every probe fails early, halving the load down to --min-qps.
    args = ["capacity", *TINY, "--scheduler", "sarathi,vllm", "--num-requests", "6", "--qps", "4", "--min-qps", "1",
            "--tbt-slo", "1e-6", "--output-dir", str(tmp_path)]
    assert bench_cli.main(args) == 0
    data = json.loads((tmp_path / "capacity.json").read_text())
    for policy in ("sarathi", "vllm"):
        result = data["results"][policy]
        assert result["capacity_qps"] == 0.0 and [p["qps"] for p in result["probes"]] == [4, 2, 1]
        assert all(not p["passed"] for p in result["probes"])
    assert (tmp_path / "capacity.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert out.count("-> fail") == 6 and "capacity (QPS)" in out


def test_capacity_calibrated_slo_passes_light_load(tmp_path, capsys):
    # 1000x a decode iteration is a loose SLO: a light load must pass, and the search doubles.
    args = ["capacity", *TINY, "--scheduler", "sarathi", "--num-requests", "4", "--qps", "1", "--max-probes", "2",
            "--tbt-slo", "1000x", "--delay-slo", "30", "--no-plots", "--output-dir", str(tmp_path)]
    assert bench_cli.main(args) == 0
    data = json.loads((tmp_path / "capacity.json").read_text())
    assert data["slo"]["factor"] == 1000 and data["slo"]["tbt_s"] == 1000 * data["slo"]["decode_iteration_s"]
    assert [p["qps"] for p in data["results"]["sarathi"]["probes"]] == [1, 2]
    assert data["results"]["sarathi"]["probes"][0]["passed"]


def test_unknown_scheduler_is_a_clear_error(tmp_path, capsys):
    assert bench_cli.main(["capacity", *TINY, "--scheduler", "sarathi,fifo", "--output-dir", str(tmp_path)]) == 2
    assert "fifo" in capsys.readouterr().err


def test_calibration_batch_decodes_together_under_a_small_chunk():
    from podserve.bench.capacity import decode_iteration_time
    from podserve.engine.engine import Engine

    engine = Engine(EngineConfig(model="tiny-llama", max_model_len=256, scheduler=SchedulerConfig(chunk_size=16)))
    # 6 x 60 prompt tokens take ~36 iterations of 16 tokens: far more than 16 output tokens.
    assert decode_iteration_time(engine, batch_size=6, prompt_tokens=60, output_tokens=4) > 0
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
