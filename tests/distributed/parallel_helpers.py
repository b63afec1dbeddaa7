"""Shared constants and helpers of the tensor/pipeline-parallel tests."""
from __future__ import annotations

from podserve.request import SamplingParams

PROMPTS = [[2, 7, 9, 11, 13], list(range(3, 40)), [42] * 21, [5, 9] * 6]
"""Lengths 5..37 with chunk_size 16: chunked prefills, hybrid batches and decodes all occur."""
GREEDY = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
ENGINE = dict(chunk_size=16, num_kv_blocks=128, max_model_len=256)


def generate_tokens(llm, prompts=PROMPTS, params=GREEDY) -> list[list[int]]:
    return [out.outputs[0].token_ids for out in llm.generate(prompts, params, use_tqdm=False)]


def assert_gone(pids: list[int], timeout: float = 10.0) -> None:
    """Every worker process has exited (zombies reaped by Popen count as gone)."""
    import time

    import psutil

    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.05)
    assert not alive, f"worker processes still running: {alive}"
