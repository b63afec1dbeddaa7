"""The simulator against a recorded H100 run (Llama-3-8B, sarathi and vllm at 1 and 2 req/s):
benchmarks/sim_fidelity_replay.py re-simulates its workloads on its GPU profile and compares
with its recorded engine numbers. Guards the GPU fidelity of the cost model on CPU."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "docs" / "data" / "gpu-2026-11-22b"


def test_replay_of_the_recorded_h100_run_stays_under_5_percent():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sim_fidelity_replay.py"),
                           "--results", str(DATA / "sim_fidelity_gpu_run12.json"),
                           "--profile", str(DATA / "profile-llama-3-8b-h100"), "--trace", "arxiv"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = re.findall(r"^(\w+)\s+([\d.]+) req/s: median abs error ([\d.]+)%", proc.stdout, re.M)
    assert len(runs) == 4
    overall = float(re.search(r"overall median absolute error: ([\d.]+)%", proc.stdout).group(1))
    assert overall < 5.0, proc.stdout
