"""benchmarks/gpu_parallel.py's bubbles part runs on CPU (gloo, tiny preset, --smoke) at the
default depth and at pp + 1 micro-batches, and records which in its JSON and labels."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bubbles_part_runs_each_depth(tmp_path):
    out_json = tmp_path / "parallel.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_parallel.py"), "--device", "cpu",
                          "--model", "tiny-llama", "--smoke", "--parts", "bubbles", "--schedulers", "sarathi",
                          "--pipeline-microbatches", "default,pp+1", "--out", str(out_json)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = json.loads(out_json.read_text())["runs"]
    assert [(r["label"], r["pipeline_microbatches"], r["pipeline_microbatches_default"]) for r in runs] == [
        ("bubbles pp2 sarathi", 2, True), ("bubbles pp2 mb3 sarathi", 3, False)]
    assert all(r["summary"]["num_completed"] == 8 and r["bubble_fraction"] is not None for r in runs)
    assert "bubbles pp2 mb3 sarathi" in out.stdout
