"""Tensor parallelism over gloo: sharded workers give the unsharded engine's greedy tokens."""
from __future__ import annotations

from podserve import LLM
from tests.distributed.parallel_helpers import ENGINE, assert_gone, generate_tokens


def test_tp2_matches_tp1_and_leaves_no_process(tiny_llama_dir, reference_tokens):
    llm = LLM(tiny_llama_dir, tensor_parallel_size=2, **ENGINE)
    pids = llm.engine.runner.pids
    try:
        assert len(pids) == 2
        assert generate_tokens(llm) == reference_tokens
        assert llm.engine.pipeline_stats.summary()["num_micro_batches"] > 0
    finally:
        llm.close()
    assert_gone(pids)


def test_tp4_replicates_kv_heads_and_matches_tp1(tiny_llama_dir, reference_tokens):
    # 2 KV heads over 4 ranks: each KV head lives on the two ranks whose query heads read it.
    with LLM(tiny_llama_dir, tensor_parallel_size=4, **ENGINE) as llm:
        assert llm.engine.runner.partition.kv_replicas == 2
        assert generate_tokens(llm) == reference_tokens
        pids = llm.engine.runner.pids
    assert_gone(pids)


def test_random_weight_preset_is_the_same_model_at_any_tp():
    # Workers slice the stream of the weights init_random draws: same values as TP=1.
    prompts = [[1, 5, 7, 9, 11], list(range(3, 30))]
    one = generate_tokens(LLM("tiny-llama", **ENGINE), prompts)
    with LLM("tiny-llama", tensor_parallel_size=2, **ENGINE) as llm:
        assert generate_tokens(llm, prompts) == one


def test_parameter_shapes_match_the_model():
    import torch

    from podserve.distributed.weights import parameter_shapes
    from podserve.model.llama import LlamaForCausalLM
    from podserve.model.presets import preset_config

    for name in ("tiny-llama", "smollm2-135m", "qwen2-7b"):
        config = preset_config(name)
        with torch.device("meta"):
            model = LlamaForCausalLM(config, max_positions=2)
        assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == parameter_shapes(config), name


def test_tp2_async_scheduling_stops_where_tp1_stops(tiny_llama_dir, reference_tokens):
    # Two steps in flight: a request that stops early (a stop token sampled mid-way) has one
    # more decode already scheduled; its token is dropped and the outputs equal TP=1's.
    from podserve.request import SamplingParams
    from tests.distributed.parallel_helpers import PROMPTS

    stops = sorted({toks[3] for toks in reference_tokens})
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True, stop_token_ids=stops)
    expected = generate_tokens(LLM(tiny_llama_dir, **ENGINE), PROMPTS, params)
    assert any(len(t) < 10 for t in expected)
    with LLM(tiny_llama_dir, tensor_parallel_size=2, **ENGINE) as llm:
        assert llm.engine.async_scheduling
        assert generate_tokens(llm, PROMPTS, params) == expected
        assert not llm.engine.has_unfinished_requests()
    from podserve.config import CacheConfig, EngineConfig, ParallelConfig, SchedulerConfig

    config = EngineConfig(model=tiny_llama_dir, max_model_len=256,
                          scheduler=SchedulerConfig(chunk_size=16), cache=CacheConfig(num_blocks=128),
                          parallel=ParallelConfig(tensor_parallel_size=2, async_scheduling=False))
    with LLM.from_config(config) as llm:
        assert not llm.engine.async_scheduling
        assert generate_tokens(llm, PROMPTS, params) == expected
