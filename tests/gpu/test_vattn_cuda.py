"""--kv virtual equals --kv paged on a random tiny Llama whose requests cross pages, under a
page budget that forces preemption; on CUDA (device tool) and, for the test's own sake, CPU."""
from __future__ import annotations

import random

import pytest
import torch

from podserve import LLM, SamplingParams
from podserve.config import CacheConfig, EngineConfig, SchedulerConfig
from tests.engine.tiny_model import write_tiny_llama

_CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
# CPU once (the default-model equality lives in tests/kv); CUDA in both mapping modes.
CASES = [("cpu", True), pytest.param("cuda", False, marks=_CUDA), pytest.param("cuda", True, marks=_CUDA)]


@pytest.mark.parametrize("device,background", CASES)
def test_virtual_greedy_matches_paged_across_pages(tmp_path, device, background):
    # 4 KV heads of 128 in float32: 2 KiB per token and layer, so a 2 MiB CUDA page holds
    # 1024 tokens (CPU: 32 tokens per 64 KiB page); prompts span 1 to 3 pages.
    write_tiny_llama(tmp_path, seed=13, hidden_size=512, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096)
    page = 1024 if device == "cuda" else 32
    rng = random.Random(5)
    lengths = [page + page // 2, page // 4, 2 * page - 10, page // 2, page + 7, page // 3]
    prompts = [[rng.randrange(2, 258) for _ in range(n)] for n in lengths]
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    sched = SchedulerConfig(max_num_seqs=4, chunk_size=4096)
    common = dict(model=str(tmp_path), device=device, dtype="float32", max_model_len=4096, scheduler=sched)
    paged = LLM.from_config(EngineConfig(**common, cache=CacheConfig(block_size=page, num_blocks=6)))
    virt = LLM.from_config(EngineConfig(**common, cache=CacheConfig(kv_layout="virtual", num_blocks=6, kv_background_map=background)))
    assert virt.engine.runner.kv_pool.tokens_per_page == page
    a = [o.outputs[0].token_ids for o in paged.generate(prompts, params, use_tqdm=False)]
    b = [o.outputs[0].token_ids for o in virt.generate(prompts, params, use_tqdm=False)]
    assert a == b
    kv = virt.engine.kv
    assert virt.engine.scheduler.num_preemptions > 0 and kv.num_slot_reuses > 0 and kv.num_pages_unmapped_total > 0
    assert kv.num_requests() == 0 and kv.num_free_blocks == kv.num_blocks


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_virtual_kv_decodes_replay_cuda_graphs(tmp_path):
    # Graph capture happens before any request holds a page: the anchor slot keeps every
    # tensor's base mapped so Triton accepts the pointers. Replayed graphs give the eager tokens.
    write_tiny_llama(tmp_path, seed=3, hidden_size=512, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
    rng = random.Random(1)
    prompts = [[rng.randrange(2, 258) for _ in range(n)] for n in (700, 40, 1500, 9)]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    common = dict(model=str(tmp_path), device="cuda", dtype="bfloat16", attention="triton", max_model_len=4096,
                  scheduler=SchedulerConfig(max_num_seqs=8, chunk_size=512),
                  cache=CacheConfig(kv_layout="virtual", num_blocks=16))
    graphed = LLM.from_config(EngineConfig(**common))
    runner = graphed.engine.runner
    assert runner.graphs is not None, runner.startup_errors
    a = [o.outputs[0].token_ids for o in graphed.generate(prompts, params, use_tqdm=False)]
    del graphed, runner
    eager = LLM.from_config(EngineConfig(**common, enforce_eager=True))
    b = [o.outputs[0].token_ids for o in eager.generate(prompts, params, use_tqdm=False)]
    assert a == b
