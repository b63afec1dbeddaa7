"""The engine in its own process (the server's default front end) behaves like the
in-process AsyncEngine: same tokens, aborts free KV, bad input fails alone, a dead engine
fails its requests clearly, and shutdown leaves no process behind."""
from __future__ import annotations

import asyncio
import os
import random
import signal

import pytest

from podserve import LLM, SamplingParams
from podserve.config import CacheConfig, EngineConfig, SchedulerConfig
from podserve.engine.async_engine import EngineDead
from podserve.engine.process_client import EngineProcessClient
from tests.engine.tiny_model import write_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    write_tiny_llama(path, seed=7)
    return path


def _config(path) -> EngineConfig:
    return EngineConfig(model=str(path), dtype="float32", scheduler=SchedulerConfig(chunk_size=16, max_num_seqs=8),
                        cache=CacheConfig(block_size=4, num_blocks=64))


async def _run(client, prompt, params, rid):
    stream = await client.add_request(prompt, params, rid)
    outs = [o async for o in stream]
    return outs


def test_process_client_matches_in_process_engine(tiny):
    rng = random.Random()
    prompts = [[rng.randrange(2, 258) for _ in range(rng.randint(3, 40))] for _ in range(6)]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    ref = LLM(str(tiny), dtype="float32", chunk_size=16, block_size=4).generate(prompts, params, use_tqdm=False)
    client = EngineProcessClient(_config(tiny), threads=1)
    seen = []
    client.output_listeners.append(seen.append)
    client.start()
    try:
        async def main():
            return await asyncio.gather(*(_run(client, p, params, f"r{i}") for i, p in enumerate(prompts)))

        results = asyncio.run(main())
    finally:
        client.shutdown()
    for outs, want in zip(results, ref):
        final = outs[-1]
        assert final.finished and final.outputs[0].finish_reason == "length"
        assert final.outputs[0].token_ids == want.outputs[0].token_ids
        assert sum((o.delta_token_ids for o in outs), []) == want.outputs[0].token_ids  # deltas add up
        assert final.outputs[0].text == want.outputs[0].text
        assert final.metrics.first_token_time >= final.metrics.arrival_time  # one clock for both processes
    assert len(seen) == sum(len(r) for r in results)
    assert not client.is_running and client._proc.exitcode is not None


def test_abort_frees_kv_and_bad_input_fails_alone(tiny):
    client = EngineProcessClient(_config(tiny), threads=1)
    client.start()
    try:
        async def main():
            long = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
            stream = await client.add_request([5, 6, 7, 8], long, "long")
            await stream.__anext__()
            stream.close()  # a disconnected client
            with pytest.raises(ValueError, match="token ids"):
                await client.add_request([10**6], SamplingParams(max_tokens=2), "bad")
            with pytest.raises(ValueError, match="already in use"):
                await client.add_request([3], SamplingParams(max_tokens=1000, ignore_eos=True), "dup")
                await client.add_request([3], SamplingParams(max_tokens=2), "dup")
            client.abort("dup")
            outs = await _run(client, "hi", SamplingParams(max_tokens=3, temperature=0, ignore_eos=True), "ok")
            assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 3
            assert outs[-1].prompt == "hi"
            for _ in range(100):  # the abort reaches the engine before a later step
                if client.stats.num_running == 0 and client.stats.kv_cache_usage == 0:
                    break
                await asyncio.sleep(0.05)
            assert client.stats.num_running == 0 and client.stats.num_waiting == 0
            assert client.stats.kv_cache_usage == 0

        asyncio.run(main())
    finally:
        client.shutdown()


def test_dead_engine_fails_requests_clearly(tiny):
    client = EngineProcessClient(_config(tiny), threads=1)
    client.start()
    try:
        async def main():
            stream = await client.add_request([5, 6], SamplingParams(max_tokens=10**4 - 10, ignore_eos=True), "x")
            await stream.__anext__()
            os.kill(client.pid, signal.SIGKILL)
            with pytest.raises(EngineDead, match="exited"):
                async for _ in stream:
                    pass
            assert not client.is_running
            with pytest.raises(EngineDead):
                await client.add_request([5], SamplingParams(max_tokens=2), "y")

        asyncio.run(main())
    finally:
        client.shutdown()


def test_bad_model_fails_in_constructor(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        EngineProcessClient(EngineConfig(model=str(tmp_path / "missing")))
