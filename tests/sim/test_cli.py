"""`podserve simulate` writes what `podserve bench` writes; `podserve profile --import-vidur`."""
from __future__ import annotations

import json

from podserve.entrypoints.cli import main
from podserve.sim.profile_io import load_profile


def test_simulate_writes_bench_outputs(tmp_path, capsys):
    rc = main(["simulate", "--profile", "h100", "--model", "llama-3-8b", "--num-requests", "80", "--qps", "4",
               "--output-dir", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "results.json").read_text())
    s = data["summary"]
    # The keys MetricsCollector.summary() gives `podserve bench` too.
    for key in ("ttft", "tbt", "e2e", "scheduling_delay", "throughput_requests_per_s", "iterations"):
        assert key in s
    assert s["num_completed"] == 80 and data["simulated"] and data["deployment"]["num_gpus"] == 1
    for name in ("requests.csv", "iterations.csv", "latency_cdf.png", "batch_composition.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "TTFT" in capsys.readouterr().out


def test_simulate_bad_input_is_one_line(capsys):
    assert main(["simulate", "--profile", "nowhere", "--num-requests", "5"]) == 2
    assert "neither a profile directory" in capsys.readouterr().err


def test_profile_import_vidur(tmp_path):
    from podserve.sim.derive import VIDUR_DIR

    assert main(["profile", "--import-vidur", str(VIDUR_DIR), "--model", "llama-3-70b", "--output-dir", str(tmp_path)]) == 0
    p = load_profile(tmp_path)
    assert p.meta["model"] == "llama-3-70b" and p.meta["source"] == "derived"
    assert {"linear", "attention_prefill", "all_reduce", "send_recv"} <= set(p.tables)


def test_profile_with_the_engines_own_all_reduce(tmp_path):
    """--add-all-reduce: the one-shot times up to the engine's 4 MB cap, NCCL's above, replace
    the imported table for that world size only; the fitted cost follows them."""
    import json

    from podserve.sim.cache import fitted_profile
    from podserve.sim.derive import VIDUR_DIR

    bench = {"world": 2, "calls": 64, "dtype": "bfloat16", "us_per_call": [
        {"kb": kb, "nccl_graph_us": nccl, "one_shot_graph_us": one}
        for kb, nccl, one in ((256, 15.0, 9.5), (2048, 37.5, 21.5), (8192, 55.0, 62.3), (16384, 88.3, 134.5))]}
    path = tmp_path / "allreduce.json"
    path.write_text(json.dumps(bench))
    out = tmp_path / "profile"
    assert main(["profile", "--import-vidur", str(VIDUR_DIR), "--model", "llama-3-8b", "--add-all-reduce", str(path),
                 "--output-dir", str(out)]) == 0
    p = load_profile(out)
    two = sorted((r["size_bytes"], r["time_s"]) for r in p.tables["all_reduce"] if int(r["num_workers"]) == 2)
    import pytest

    assert [s for s, _ in two] == [256 << 10, 2048 << 10, 8192 << 10, 16384 << 10]
    assert [t for _, t in two] == pytest.approx([9.5e-6, 21.5e-6, 55.0e-6, 88.3e-6])
    assert {int(r["num_workers"]) for r in p.tables["all_reduce"]} == {2, 4, 8}  # Vidur's 4 and 8 kept
    assert "allreduce.json" in p.meta["all_reduce"]
    import numpy as np

    from podserve.sim import features as F
    size = np.array([2048 << 10], dtype=float)
    predicted = fitted_profile(out).all_reduce[2].predict(F.collective_features(size), size[:, None])[0]
    assert 15e-6 < predicted < 30e-6  # near the measured 21.5 us, not Vidur's NCCL time
