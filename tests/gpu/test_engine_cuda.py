"""The engine on CUDA agrees with the CPU engine (run through the device tool; skipped on CPU)."""
from __future__ import annotations

import gc
import random

import pytest
import torch

from podserve import LLM, SamplingParams
from tests.engine.tiny_model import write_tiny_llama

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("chunk_size,max_num_seqs", [(16, 2), (64, 8), (4096, 128)])
def test_cuda_greedy_matches_cpu(tmp_path, chunk_size, max_num_seqs):
    write_tiny_llama(tmp_path, seed=11)
    rng = random.Random()
    prompts = [[rng.randrange(2, 258) for _ in range(n)] for n in (3, 17, 64, 150)]
    p = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    cpu = LLM(str(tmp_path), chunk_size=chunk_size, max_num_seqs=max_num_seqs)
    gpu = LLM(str(tmp_path), device="cuda", dtype="float32", chunk_size=chunk_size, max_num_seqs=max_num_seqs)
    a = [o.outputs[0].token_ids for o in cpu.generate(prompts, p, use_tqdm=False)]
    b = [o.outputs[0].token_ids for o in gpu.generate(prompts, p, use_tqdm=False)]
    assert a == b


def test_cuda_bf16_logits_close_to_float32(tmp_path):
    """bf16 logits of a tiny random Llama within bf16's reach of float32's, over ten seeded
    prompts. On an H100 (2026-12-07, 40 prompts) max|diff| / max|logit| had median 2.2e-2,
    P90 3.4e-2, max 4.6e-2 -- with the fused norm/add kernels and without them alike, so
    one unseeded prompt against 3e-2 (the old check) failed one run in five."""
    from podserve.core.batch import ScheduledBatch, ScheduledSeq

    write_tiny_llama(tmp_path, seed=12)
    ref = LLM(str(tmp_path), device="cuda", dtype="float32", block_size=16, kv_cache_memory=256 << 20)
    bf = LLM(str(tmp_path), device="cuda", dtype="bfloat16", block_size=16, kv_cache_memory=256 << 20)
    errors = []
    for s in range(10):
        rng = random.Random(s)
        ids = [rng.randrange(2, 258) for _ in range(rng.choice([5, 40, 100]))]
        logits = []
        for llm in (ref, bf):
            runner = llm.engine.runner
            seq = ScheduledSeq("r", ids, 0, True, True, list(range(8)), SamplingParams(), 0)
            batch = ScheduledBatch(iteration=0, seqs=[seq], num_decodes=0)
            tokens, positions, meta, sample_idx = runner.prepare(batch)
            with torch.inference_mode():
                runner.backend.prepare(meta)
                hidden = runner.model(tokens, positions, runner.kv_pool.caches, meta, runner.backend)
                logits.append(runner.model.compute_logits(hidden[sample_idx]).float())
        errors.append(((logits[0] - logits[1]).abs().max() / logits[0].abs().max()).item())
    errors.sort()
    assert errors[len(errors) // 2] < 3.5e-2 and errors[-1] < 6e-2, errors


@pytest.mark.parametrize("kv_layout", ["paged", "virtual"])
def test_piecewise_graphs_give_the_eager_tokens(tmp_path, kv_layout):
    # Steps with prefill tokens replay the captured layer pieces (attention eager between
    # them), padded to token buckets; float32 so that the eager run is an exact reference.
    from podserve.config import CacheConfig, EngineConfig, SchedulerConfig

    write_tiny_llama(tmp_path, seed=5, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    rng = random.Random(2)
    prompts = [[rng.randrange(2, 258) for _ in range(n)] for n in (300, 17, 64, 150, 5, 90)]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    common = dict(model=str(tmp_path), device="cuda", dtype="float32", attention="triton", max_model_len=2048,
                  scheduler=SchedulerConfig(max_num_seqs=4, chunk_size=100),
                  cache=CacheConfig(kv_layout=kv_layout, num_blocks=64 if kv_layout == "paged" else None))
    graphed = LLM.from_config(EngineConfig(**common))
    runner = graphed.engine.runner
    assert runner.hybrid_graphs is not None and runner.hybrid_graphs.captured, runner.startup_errors
    steps = []
    run = runner.hybrid_graphs.run
    runner.hybrid_graphs.run = lambda inputs: steps.append(inputs.num_tokens) or run(inputs)
    a = [o.outputs[0].token_ids for o in graphed.generate(prompts, params, use_tqdm=False)]
    assert len(set(steps)) > 2, steps  # several buckets, hybrid and prefill-only steps
    del graphed, runner, run
    gc.collect()  # the first engine's KV pool must be gone before the second sizes its own
    torch.cuda.empty_cache()
    eager = LLM.from_config(EngineConfig(**common, enforce_eager=True))
    b = [o.outputs[0].token_ids for o in eager.generate(prompts, params, use_tqdm=False)]
    assert a == b
