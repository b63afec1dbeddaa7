"""``--attention sdpa --kv virtual`` (SDPA prefill on each request's contiguous slot, Triton
decode) gives the torch reference backend's greedy tokens, chunked prefills included."""
from __future__ import annotations

import random

from podserve import LLM, SamplingParams
from podserve.config import CacheConfig, EngineConfig, SchedulerConfig
from tests.engine.tiny_model import write_tiny_llama


def test_sdpa_over_virtual_kv_matches_torch_backend(tmp_path):
    write_tiny_llama(tmp_path, seed=7, hidden_size=256, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    rng = random.Random(2)
    prompts = [[rng.randrange(2, 250) for _ in range(n)] for n in (70, 9, 130, 33)]
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    common = dict(model=str(tmp_path), device="cpu", dtype="float32", max_model_len=512,
                  scheduler=SchedulerConfig(max_num_seqs=4, chunk_size=48),  # prompts span several chunks
                  cache=CacheConfig(kv_layout="virtual", num_blocks=8))
    ref = LLM.from_config(EngineConfig(**common, attention="torch"))
    got = LLM.from_config(EngineConfig(**common, attention="sdpa"))
    a = [o.outputs[0].token_ids for o in ref.generate(prompts, params, use_tqdm=False)]
    b = [o.outputs[0].token_ids for o in got.generate(prompts, params, use_tqdm=False)]
    assert a == b
