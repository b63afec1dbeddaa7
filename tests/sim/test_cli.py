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
