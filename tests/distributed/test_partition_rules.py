"""The partition rules shared by the engine's workers and the simulator (no torch)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from podserve.core.partition import Partition, rank_of
from podserve.model.presets import preset_config


def test_smollm2_at_tp3_gets_three_heads_and_one_kv_head_per_rank():
    cfg = preset_config("smollm2-135m")  # 9 query heads, 3 KV heads, 30 layers
    part = Partition.of(cfg, tp=3)
    assert (part.num_heads, part.num_kv_heads, part.kv_replicas) == (3, 1, 1)
    assert [part.q_heads(r) for r in range(3)] == [(0, 3), (3, 6), (6, 9)]
    assert [part.kv_heads(r) for r in range(3)] == [(0, 1), (1, 2), (2, 3)]
    assert part.intermediate_size == 512 and part.vocab_size == 49152 // 3
    shard = part.shard_config(cfg, 1, 0)
    assert (shard.num_attention_heads, shard.num_key_value_heads, shard.head_dim) == (3, 1, 64)
    assert shard.hidden_size == cfg.hidden_size and shard.num_hidden_layers == 30


def test_kv_heads_replicate_when_fewer_than_ranks():
    cfg = preset_config("tiny-llama")  # 4 query heads, 2 KV heads
    part = Partition.of(cfg, tp=4)
    assert (part.num_heads, part.num_kv_heads, part.kv_replicas) == (1, 1, 2)
    # Query head r reads KV head r // 2 (GQA groups of 2): each rank keeps that one.
    assert [part.kv_heads(r) for r in range(4)] == [(0, 1), (0, 1), (1, 2), (1, 2)]


def test_llama3_8b_pipeline_and_tensor_shapes():
    cfg = preset_config("llama-3-8b")
    part = Partition.of(cfg, tp=2, pp=2)
    assert (part.num_heads, part.num_kv_heads, part.num_layers) == (16, 4, 16)
    assert [part.layers(s) for s in range(2)] == [(0, 16), (16, 32)]
    assert part.vocab(1) == (64128, 128256)
    assert [rank_of(t, s, 2) for s in range(2) for t in range(2)] == [0, 1, 2, 3]


def test_uneven_mlp_and_vocab_slices_cover_everything():
    cfg = replace(preset_config("tiny-llama"), vocab_size=10, intermediate_size=10, num_attention_heads=3,
                  num_key_value_heads=3, head_dim=8)
    part = Partition.of(cfg, tp=3)
    assert part.intermediate_size == 4 and part.vocab_size == 4
    assert [part.intermediate(r, 10) for r in range(3)] == [(0, 4), (4, 8), (8, 10)]
    assert part.shard_config(cfg, 2, 0).intermediate_size == 2
    assert part.vocab(2) == (8, 12)  # rows 10 and 11 are padding


@pytest.mark.parametrize("tp,pp,match", [
    (2, 1, "does not divide the model's 9 attention heads; choose one of 1, 3, 9"),
    (1, 4, "pp=4 does not divide the model's 30 layers"),
    (0, 1, "integer >= 1"),
])
def test_invalid_splits_are_named(tp, pp, match):
    with pytest.raises(ValueError, match=match):
        Partition.of(preset_config("smollm2-135m"), tp, pp)


def test_kv_heads_that_neither_split_nor_replicate_are_refused():
    cfg = replace(preset_config("tiny-llama"), num_attention_heads=24, num_key_value_heads=8, head_dim=8)
    with pytest.raises(ValueError, match="6 and the model's 8 KV heads do not divide one another"):
        Partition.of(cfg, 6)


def test_simulator_uses_the_same_per_rank_shapes():
    from podserve.sim.memory import kv_bytes_per_token
    from podserve.sim.roofline import LayerShapes

    cfg = preset_config("smollm2-135m")
    shapes, part = LayerShapes.of(cfg, 3), Partition.of(cfg, 3)
    assert (shapes.num_heads, shapes.num_kv_heads) == (part.num_heads, part.num_kv_heads)
    assert shapes.linear["down"] == (part.intermediate_size, cfg.hidden_size)
    assert shapes.lm_head == (cfg.hidden_size, part.vocab_size)
    # One rank's KV: its KV heads over its stage's layers (what a worker's pool holds per token).
    assert kv_bytes_per_token(cfg, 2, tp=3, pp=2) == 2 * 15 * 1 * 64 * 2
    with pytest.raises(ValueError, match="attention heads"):
        LayerShapes.of(cfg, 2)
