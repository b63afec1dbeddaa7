"""Greedy tokens agree with Hugging Face transformers, and chunking never shows in the output."""
from __future__ import annotations

import random

import pytest

from podserve import LLM, SamplingParams

from tests.engine.tiny_model import hf_greedy, write_tiny_llama

GREEDY = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)


def _prompts(seed: int, lengths, vocab: int = 258) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(2, vocab) for _ in range(n)] for n in lengths]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    model = write_tiny_llama(path, seed=random.randrange(1 << 30))
    return path, model


@pytest.fixture(scope="module")
def tiny_reference(tiny_dir):
    path, model = tiny_dir
    prompts = _prompts(random.randrange(1 << 30), [1, 5, 16, 17, 40, 97, 130])
    return prompts, [hf_greedy(model, p, 32) for p in prompts]


def test_tiny_llama_matches_transformers(tiny_dir, tiny_reference):
    prompts, ref = tiny_reference
    llm = LLM(str(tiny_dir[0]), block_size=8)
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == ref
    assert all(o.outputs[0].finish_reason == "length" for o in outs)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 100_000])
def test_chunk_size_is_invisible(tiny_dir, tiny_reference, chunk_size):
    prompts, ref = tiny_reference
    llm = LLM(str(tiny_dir[0]), chunk_size=chunk_size, block_size=4)
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == ref


@pytest.mark.parametrize("max_num_seqs", [1, 3, 128])
def test_batch_composition_is_invisible(tiny_dir, tiny_reference, max_num_seqs):
    prompts, ref = tiny_reference
    llm = LLM(str(tiny_dir[0]), chunk_size=24, max_num_seqs=max_num_seqs, block_size=4)
    # Reversed order: each request meets different neighbours than in the other tests.
    outs = llm.generate(prompts[::-1], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == ref[::-1]


def test_preemption_under_kv_pressure_keeps_tokens(tiny_dir, tiny_reference):
    prompts, ref = tiny_reference
    # 48 blocks of 4 tokens: far less than the 7 requests need together, enough for the longest.
    llm = LLM(str(tiny_dir[0]), chunk_size=32, block_size=4, num_kv_blocks=48)
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == ref
    engine = llm.engine
    assert engine.scheduler.num_preemptions > 0
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


@pytest.mark.parametrize("kind", ["qwen2", "tied"])
def test_architecture_variants_match_transformers(tmp_path, kind):
    model = write_tiny_llama(tmp_path, seed=random.randrange(1 << 30), qwen2=kind == "qwen2", tie=kind == "tied")
    prompts = _prompts(random.randrange(1 << 30), [3, 33])
    llm = LLM(str(tmp_path))
    outs = llm.generate(prompts, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [hf_greedy(model, p, 16) for p in prompts]


def test_llama3_rope_scaling_matches_transformers(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    model = write_tiny_llama(tmp_path, seed=random.randrange(1 << 30), rope_theta=500000.0, rope_scaling=scaling)
    prompts = _prompts(random.randrange(1 << 30), [90])
    llm = LLM(str(tmp_path))
    outs = llm.generate(prompts, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True), use_tqdm=False)
    assert outs[0].outputs[0].token_ids == hf_greedy(model, prompts[0], 16)


def test_smollm2_gguf_matches_transformers(default_llm, hf_default_model):
    model, tok = hf_default_model
    texts = [
        "The quick brown fox",
        "Write a haiku about the sea.",
        "def fibonacci(n):\n    ",
        "In 1492, Columbus sailed across the Atlantic Ocean and reached the islands of the Caribbean, "
        "which he believed to be part of Asia. His voyages",
        "1, 2, 3, 5, 8,",
    ]
    prompt_ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
    ref = [hf_greedy(model, p, 32) for p in prompt_ids]
    outs = default_llm.generate(texts, GREEDY, use_tqdm=False)
    assert [o.prompt_token_ids for o in outs] == prompt_ids
    assert [o.outputs[0].token_ids for o in outs] == ref
