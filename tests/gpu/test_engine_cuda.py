"""The engine on CUDA agrees with the CPU engine (run through the device tool; skipped on CPU)."""
from __future__ import annotations

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
    from podserve.core.batch import ScheduledBatch, ScheduledSeq

    write_tiny_llama(tmp_path, seed=12)
    ref = LLM(str(tmp_path), device="cuda", dtype="float32", block_size=16, kv_cache_memory=256 << 20)
    bf = LLM(str(tmp_path), device="cuda", dtype="bfloat16", block_size=16, kv_cache_memory=256 << 20)
    ids = [random.randrange(2, 258) for _ in range(40)]
    logits = []
    for llm in (ref, bf):
        runner = llm.engine.runner
        seq = ScheduledSeq("r", ids, 0, True, True, [0, 1, 2], SamplingParams(), 0)
        batch = ScheduledBatch(iteration=0, seqs=[seq], num_decodes=0)
        tokens, positions, meta, sample_idx = runner.prepare(batch)
        with torch.inference_mode():
            runner.backend.prepare(meta)
            hidden = runner.model(tokens, positions, runner.kv_pool.caches, meta, runner.backend)
            logits.append(runner.model.compute_logits(hidden[sample_idx]).float())
    err = (logits[0] - logits[1]).abs().max() / logits[0].abs().max()
    assert err < 3e-2, err
