"""Worker lifecycle: clear errors before anything starts, failures surface instead of hangs,
and no worker process outlives its engine."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from podserve import LLM
from podserve.distributed.executor import WorkerError
from tests.distributed.parallel_helpers import ENGINE, GREEDY, assert_gone


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_tp_that_does_not_divide_the_heads_fails_before_starting_workers(tiny_llama_dir):
    before = _children()
    with pytest.raises(ValueError, match="tensor-parallel size 3 does not divide the model's 8 attention heads"):
        LLM(tiny_llama_dir, tensor_parallel_size=3, **ENGINE)
    with pytest.raises(ValueError, match="pp=3 does not divide the model's 4 layers"):
        LLM(tiny_llama_dir, pipeline_parallel_size=3, **ENGINE)
    with pytest.raises(ValueError, match="--kv virtual is not supported"):
        LLM(tiny_llama_dir, tensor_parallel_size=2, kv_layout="virtual", **ENGINE)
    assert _children() == before


def test_bad_input_found_by_a_worker_is_a_value_error(tiny_llama_dir):
    # Each rank sizes its own KV pool: a budget too small for one block is reported as such.
    from podserve.config import CacheConfig, EngineConfig, ParallelConfig
    from podserve.engine.engine import Engine

    config = EngineConfig(model=tiny_llama_dir, cache=CacheConfig(kv_cache_memory=16),
                          parallel=ParallelConfig(tensor_parallel_size=2))
    before = _children()
    with pytest.raises(ValueError, match="worker rank 0: KV cache budget too small"):
        Engine(config)
    assert_gone(list(_children() - before))


def test_a_dead_worker_is_reported_not_waited_for(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, tensor_parallel_size=2, **ENGINE)
    pids = llm.engine.runner.pids
    os.kill(pids[1], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"worker rank 1 \(pid \d+\) exited with code -9"):
        llm.generate([[1, 2, 3, 4]], GREEDY, use_tqdm=False)
    assert time.monotonic() - start < 15
    assert_gone(pids)  # the surviving rank was stopped too
    with pytest.raises(WorkerError, match="failed earlier"):
        llm.generate([[1, 2, 3]], GREEDY, use_tqdm=False)


def test_workers_die_with_an_engine_process_that_is_killed(tiny_llama_dir):
    script = (
        "import sys, time\n"
        "from podserve import LLM\n"
        f"llm = LLM({tiny_llama_dir!r}, pipeline_parallel_size=2, chunk_size=16, num_kv_blocks=64, max_model_len=256)\n"
        "print(*llm.engine.runner.pids, flush=True)\n"
        "time.sleep(600)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
    finally:
        proc.kill()
        proc.wait()
    assert_gone(pids)


def test_an_unresponsive_worker_times_out(tiny_llama_dir):
    from podserve.config import CacheConfig, EngineConfig, ParallelConfig, SchedulerConfig
    from podserve.engine.engine import Engine

    config = EngineConfig(model=tiny_llama_dir, max_model_len=256, scheduler=SchedulerConfig(chunk_size=16),
                          cache=CacheConfig(num_blocks=64),
                          parallel=ParallelConfig(pipeline_parallel_size=2, worker_timeout_s=3.0))
    engine = Engine(config)
    pids = engine.runner.pids
    os.kill(pids[1], signal.SIGSTOP)  # alive, never answering
    engine.add_request([1, 2, 3, 4], GREEDY)
    with pytest.raises(WorkerError, match=r"worker rank 1 sent no 'done' within 3s"):
        while engine.has_unfinished_requests():
            engine.step()
    assert_gone(pids)
