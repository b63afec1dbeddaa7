"""benchmarks/vattn_mapping_overhead.py runs end to end (--smoke, CPU, tiny model)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mapping_overhead_script_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vattn_mapping_overhead.py"), "--device", "cpu",
                           "--model", "tiny-llama", "--smoke", "--modes", "enqueue,sync", "--repeats", "2",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    modes = json.loads((tmp_path / "vattn_mapping.json").read_text())["modes"]
    for mode in ("enqueue", "sync"):
        runs = modes[mode]["runs"]
        assert [r["run"] for r in runs] == ["mapping", "premapped"] * 2
        # Mapping runs map pages (reclaimed before each); premapped runs land on mapped slots.
        assert all(r["pool"]["pages_mapped"] > 0 for r in runs if r["run"] == "mapping")
        assert all(r["pool"]["pages_mapped"] < runs[0]["pool"]["pages_mapped"] for r in runs if r["run"] == "premapped")
