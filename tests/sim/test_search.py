"""Configuration search: the grid it covers, infeasible deployments, the CLI end to end."""
from __future__ import annotations

import json

import pytest

from podserve.bench.workloads import WorkloadConfig
from podserve.sim.search import SearchPoint, SearchTask, evaluate, grid, pareto_front, run_ray
from podserve.sim.slo_watch import LatencySLO


def test_grid_covers_every_combination_once():
    pts = grid(["m"], ["h100"], [1, 2, 4, 8], [1, 2], [1, 2], ["sarathi", "vllm"], [256, 512, 1024], [64, 128])
    # sarathi: 4 tp x 2 pp x 2 replicas x 3 chunks x 2 seqs; vllm: chunk size is not a knob.
    assert len(pts) == 4 * 2 * 2 * 2 * (3 + 1)
    assert len(set(pts)) == len(pts)
    assert {p.chunk_size for p in pts if p.scheduler == "vllm"} == {1024}
    assert {(p.tp, p.pp, p.num_replicas) for p in pts} == {(t, p, r) for t in (1, 2, 4, 8) for p in (1, 2) for r in (1, 2)}
    capped = grid(["m"], ["h100"], [1, 2, 4, 8], [1, 2], [1, 2], ["sarathi"], [512], [64], tbt_budget=True, max_gpus=8)
    assert all(p.num_gpus <= 8 for p in capped) and any(p.tbt_budget for p in capped)


def test_grid_varies_micro_batches_only_with_pipeline_stages():
    pts = grid(["m"], ["h100"], [1], [1, 2, 4], [1], ["sarathi"], [512], [64], microbatches=("default", "pp+1", "pp"))
    assert [(p.pp, p.pipeline_microbatches) for p in pts] == [
        (1, None), (2, None), (2, 3), (2, 2), (4, None), (4, 5), (4, 4)]
    assert any(" pp2/mb3 " in p.label() for p in pts)
    with pytest.raises(ValueError, match="pipeline-microbatches"):
        grid(["m"], ["h100"], [1], [4], [1], ["sarathi"], [512], [64], microbatches=("3",))
    with pytest.raises(ValueError, match="invalid"):
        grid(["m"], ["h100"], [1], [2], [1], ["sarathi"], [512], [64], microbatches=("many",))


def test_infeasible_deployment_reports_why():
    task = SearchTask(SearchPoint("llama-3-70b", "h100", 1, 1, 1, "sarathi", 512, 128),
                      WorkloadConfig(num_requests=20), LatencySLO(2.0, 0.2))
    r = evaluate(task)
    assert r["feasible"] is False and "weights" in r["reason"]


def test_pareto_front():
    rs = [{"feasible": True, "capacity_qps": 1, "p99_tbt_s": x, "capacity_per_gpu": y, "label": f"{x},{y}"}
          for x, y in ((0.1, 1.0), (0.2, 2.0), (0.15, 0.5), (0.3, 1.5))]
    assert [r["label"] for r in pareto_front(rs)] == ["0.1,1.0", "0.2,2.0"]


def test_ray_is_optional():
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install"):
            run_ray([], "auto", print)
    else:
        pytest.skip("ray is installed")


def test_search_cli_end_to_end(tmp_path, capsys):
    from podserve.entrypoints.cli import main

    rc = main(["search", "--models", "llama-3-70b", "--profiles", "h100", "--tp", "1,4,8", "--pp", "1", "--replicas", "1",
               "--schedulers", "sarathi,vllm", "--chunk-sizes", "512", "--max-num-seqs", "128", "--num-requests", "60",
               "--price-table", "h100=2.5", "--workers", "2", "--output-dir", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "search.json").read_text())
    assert data["num_configs"] == 6 and len(data["results"]) == 6
    feasible = [r for r in data["results"] if r["feasible"]]
    assert {r["point"]["tp"] for r in feasible} == {4, 8}  # tp1 cannot hold 70B's weights
    assert all(r["capacity_qps"] > 0 and "capacity_per_dollar_hour" in r for r in feasible)
    assert data["winner"]["label"] in out and "margin" in out
    assert (tmp_path / "pareto.png").stat().st_size > 0 and (tmp_path / "search.csv").is_file()


def test_larger_batch_cap_that_never_binds_is_not_resimulated():
    from podserve.sim.search import evaluate_group, group_tasks

    points = grid(["llama-3-8b"], ["h100"], [1], [1], [1], ["sarathi"], [512], [64, 4096])
    (task,) = group_tasks(points, workload=WorkloadConfig(num_requests=80), slo=LatencySLO(1.0, 0.05))
    small, big = evaluate_group(task)
    assert small["point"]["max_num_seqs"] == 64 and big["point"]["max_num_seqs"] == 4096
    if small["peak_running"] < 64:
        assert big["same_as"] == small["label"] and big["capacity_qps"] == small["capacity_qps"]
    else:  # the small cap bound: the larger one was simulated, and admits at least as much
        assert "same_as" not in big and big["peak_running"] >= small["peak_running"]
    (t2,) = group_tasks(grid(["llama-3-8b"], ["h100"], [1], [1], [1], ["sarathi"], [512], [2, 4096]),
                        workload=WorkloadConfig(num_requests=80), slo=LatencySLO(1.0, 0.05))
    tiny, _ = evaluate_group(t2)
    assert tiny["peak_running"] == 2  # a cap of 2 binds on this load: no shortcut possible
