"""benchmarks/gpu_sim_fidelity.py runs end to end (its --smoke mode, CPU, tiny model)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_fidelity_script_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_sim_fidelity.py"), "--device", "cpu",
                           "--model", "tiny-llama", "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "overall median absolute error" in proc.stdout
    results = json.loads((tmp_path / "sim_fidelity_gpu.json").read_text())
    done = [r for r in results["runs"] if "rows" in r]
    assert {r["scheduler"] for r in done} == {"sarathi", "vllm"}
    assert all(r["engine"]["throughput_requests_per_s"] > 0 for r in done)
    # One archive for the profile: the device tool brings back at most 8 files.
    assert (tmp_path / "profile.tar.gz").is_file() and len(list(tmp_path.iterdir())) <= 8
    replay = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sim_fidelity_replay.py"),
                             "--results", str(tmp_path / "sim_fidelity_gpu.json"),
                             "--profile", str(tmp_path / "profile.tar.gz")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert replay.returncode == 0, replay.stderr[-2000:]
    assert "sarathi" in replay.stdout and "vllm" in replay.stdout
