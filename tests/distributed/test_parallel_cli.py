"""``podserve generate`` on the default model (SmolLM2-135M: 9 query heads, 3 KV heads,
30 layers) at TP=3 and PP=2 prints the text of the unsharded engine."""
from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from podserve.request import SamplingParams

PROMPTS = ["The capital of France is", "Write a haiku about the sea"]
MAX_TOKENS = 12


def _worker_pids() -> set[int]:
    pids = set()
    for p in psutil.process_iter(["cmdline"]):
        if "podserve.distributed.worker" in " ".join(p.info["cmdline"] or []):
            pids.add(p.pid)
    return pids


@pytest.fixture(scope="module")
def expected(default_llm):
    outs = default_llm.generate(PROMPTS, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0), use_tqdm=False)
    return "".join(f"### {p}\n{o.outputs[0].text}\n" for p, o in zip(PROMPTS, outs))


@pytest.mark.parametrize("flags", [["--tensor-parallel-size", "3"], ["-pp", "2"]], ids=["tp3", "pp2"])
def test_generate_cli_matches_one_device(flags, expected):
    before = _worker_pids()
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run(
        [sys.executable, "-m", "podserve.entrypoints.cli", "generate", *PROMPTS, "--max-tokens", str(MAX_TOKENS),
         "--temperature", "0", "--max-model-len", "2048", *flags],
        capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected
    assert _worker_pids() <= before  # the CLI stopped its workers


def test_generate_cli_refuses_tp2_on_nine_heads():
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-m", "podserve.entrypoints.cli", "generate", "hi", "-tp", "2"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert "tensor-parallel size 2 does not divide the model's 9 attention heads; choose one of 1, 3, 9" in out.stderr
