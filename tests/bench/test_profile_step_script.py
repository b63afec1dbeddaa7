"""benchmarks/profile_step.py runs on CPU (tiny preset) and writes each rank's breakdown."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("tp", [1, 2])
def test_profile_step_smoke(tmp_path, tp):
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, str(root / "benchmarks" / "profile_step.py"), "--device", "cpu", "--model", "tiny-llama",
                    "--batch", "3", "--prompt-tokens", "8", "--steps", "2", "--tp", str(tp), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=300, cwd=root)
    data = json.loads((tmp_path / f"profile_step_tp{tp}.json").read_text())
    assert data["batch"] == 3 and len(data["ranks"]) == tp
    for rank in data["ranks"]:
        assert rank["steps"] >= 2 and rank["kernels"] and rank["total_us_per_step"] > 0
        assert "gemm" in rank["families_us_per_step"] or "other" in rank["families_us_per_step"]
