"""benchmarks/gpu_e2e.py runs end to end on CPU (tiny model, Triton interpreter): every
section writes its JSON and the table prints. Slow (minutes): run with -m slow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_e2e_script_on_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_e2e.py"), "--device", "cpu",
                          "--budget-s", "500", "--out", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_e2e.json").read_text())
    sections = data["sections"]
    assert sections["correctness"]["greedy_all_match"]
    for name in ("correctness", "roofline", "offline", "hf", "online"):
        assert "error" not in sections[name], sections[name].get("traceback")
    assert all("output_tok_s" in r for r in sections["offline"]["runs"])
    assert "targets" in data and "podserve gpu_e2e" in out.stdout
