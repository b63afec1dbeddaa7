"""benchmarks/profile_step.py runs on CPU (tiny preset) and writes its breakdown."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_profile_step_smoke(tmp_path):
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, str(root / "benchmarks" / "profile_step.py"), "--device", "cpu", "--model", "tiny-llama",
                    "--batch", "3", "--prompt-tokens", "8", "--steps", "2", "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=300, cwd=root)
    data = json.loads((tmp_path / "profile_step.json").read_text())
    assert data["batch"] == 3 and data["kernels_us"] and data["device_ms"] > 0
