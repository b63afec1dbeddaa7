"""Engine equality: greedy outputs with --kv virtual are identical to --kv paged on the
default model (SmolLM2 GGUF on CPU), under page budgets small enough to force slot reuse,
reclamation of idle pages and preemption."""
from __future__ import annotations

import random

import pytest

from podserve.config import CacheConfig, EngineConfig, SchedulerConfig
from podserve.engine.llm import LLM
from podserve.request import SamplingParams

# 5 requests, 3 slots: later requests land on finished requests' slots. Prompt + output
# tokens need up to 3 pages of 16 each; 6 pages for 3 running requests force preemption.
PROMPT_LENS = [20, 9, 30, 14, 25]
MAX_TOKENS = 10
SCHED = SchedulerConfig(max_num_seqs=3, chunk_size=64)


def prompts() -> list[list[int]]:
    rng = random.Random(7)
    return [[rng.randrange(100, 40_000) for _ in range(n)] for n in PROMPT_LENS]


def generate(cache: CacheConfig):
    llm = LLM.from_config(EngineConfig(scheduler=SCHED, cache=cache))
    outs = llm.generate(prompts(), SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs], llm.engine


@pytest.fixture(scope="module")
def paged_tokens():
    tokens, engine = generate(CacheConfig(kv_layout="paged", block_size=16, num_blocks=6))
    assert engine.scheduler.num_preemptions > 0
    return tokens


def test_virtual_with_background_mapping_equals_paged(paged_tokens):
    # 16-token pages (12 KiB per layer K/V for SmolLM2's 3 x 64 fp32 heads), 6 of them.
    tokens, engine = generate(CacheConfig(kv_layout="virtual", page_size=16 * 768, num_blocks=6, kv_background_map=True, kv_lookahead=8))
    assert tokens == paged_tokens
    kv, pool = engine.kv, engine.runner.kv_pool
    assert engine.scheduler.num_preemptions > 0  # physical pages ran out
    assert kv.num_slot_reuses > 0  # admissions onto finished requests' mapped pages
    assert kv.num_pages_unmapped_total > 0  # idle pages reclaimed under pressure
    assert pool.stats["background_map_s"] > 0 and pool.stats["pages_unmapped"] > 0
    assert kv.num_requests() == 0 and kv.num_free_blocks == kv.num_blocks  # nothing leaked
    slots = range(kv.first_slot, kv.first_slot + kv.max_batch)
    assert kv.first_slot == 1 and pool.mapped_pages(0) == 1  # the anchor page stays, outside the accounting
    assert [pool.mapped_pages(s) for s in slots] == [kv.mapped_pages(s) for s in slots]


def test_virtual_with_synchronous_mapping_and_default_pages_equals_paged(paged_tokens):
    # Default CPU pages (80 tokens): two pages for three slots.
    tokens, engine = generate(CacheConfig(kv_layout="virtual", num_blocks=2, kv_background_map=False))
    assert tokens == paged_tokens
    assert engine.runner.kv_pool.tokens_per_page == 80
    assert engine.kv.num_slot_reuses > 0 and engine.runner.kv_pool.stats["background_map_s"] == 0
