"""Every scheduling policy drives the real engine to the same greedy tokens as transformers.

A policy decides only *when* each token is computed; what is computed must not change,
whether prompts are chunked, batched whole, serialised by KV reservations or preempted
and recomputed.
"""
from __future__ import annotations

import random

import pytest

from podserve import LLM
from podserve.core.scheduler import SCHEDULERS

from tests.engine.test_parity import GREEDY, _prompts
from tests.engine.tiny_model import hf_greedy, write_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-policies")
    model = write_tiny_llama(path, seed=random.randrange(1 << 30))
    prompts = _prompts(random.randrange(1 << 30), [1, 5, 17, 40, 97, 130])
    return path, prompts, [hf_greedy(model, p, GREEDY.max_tokens) for p in prompts]


@pytest.mark.parametrize("policy,decode_maximal", [(p, False) for p in SCHEDULERS] + [("sarathi", True)])
def test_policy_matches_transformers_under_kv_pressure(tiny, policy, decode_maximal):
    path, prompts, ref = tiny
    # 80 blocks of 4 tokens: one 256-token reservation (orca, fastertransformer) at a time,
    # and too few for all six requests at once, so recomputing policies must preempt.
    llm = LLM(str(path), scheduler=policy, decode_maximal=decode_maximal, chunk_size=32, max_model_len=256,
              block_size=4, num_kv_blocks=80)
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == ref
    engine = llm.engine
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    if policy in ("orca", "fastertransformer"):
        assert engine.scheduler.num_preemptions == 0
    elif not decode_maximal:  # one prefill per iteration admits too slowly to exhaust this cache
        assert engine.scheduler.num_preemptions > 0
