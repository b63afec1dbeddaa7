"""Operator shapes and roofline quantities (FLOPs, bytes) of a Llama-family layer.

The cost model's features come from here, so a predictor fitted on one shape extrapolates
to another (a bigger model, a tensor-parallel shard) through FLOPs and bytes moved.
"""
from __future__ import annotations

from dataclasses import dataclass

from podserve.core.partition import Partition

LINEAR_OPS = ("qkv", "o", "gate_up", "down")
"""The GEMMs of one decoder layer; the LM head runs once per iteration on sampled tokens."""


@dataclass(frozen=True)
class LayerShapes:
    """Per-rank GEMM shapes ``(in_features, out_features)`` under tensor parallelism ``tp``.

    Column-parallel (qkv, gate_up, lm_head) split their outputs, row-parallel (o, down)
    their inputs, as Megatron-LM and vLLM shard Llama.
    """

    linear: dict[str, tuple[int, int]]
    lm_head: tuple[int, int]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    @classmethod
    def of(cls, config, tp: int = 1) -> "LayerShapes":
        """The shapes one rank computes, by the engine's own partition rules
        (``podserve.core.partition``; raises ValueError when ``tp`` cannot split the model)."""
        part = Partition.of(config, tp)
        h, hd = config.hidden_size, config.head_dim
        q_heads, kv_heads, inter = part.num_heads, part.num_kv_heads, part.intermediate_size
        return cls(
            linear={
                "qkv": (h, (q_heads + 2 * kv_heads) * hd),
                "o": (q_heads * hd, h),
                "gate_up": (h, 2 * inter),
                "down": (inter, h),
            },
            lm_head=(h, part.vocab_size),
            num_heads=q_heads,
            num_kv_heads=kv_heads,
            head_dim=hd,
            hidden_size=h,
        )


def linear_flops(n, in_f, out_f):
    """Multiply-adds of ``[n, in] @ [in, out]`` counted as 2 FLOPs each."""
    return 2.0 * n * in_f * out_f


def linear_bytes(n, in_f, out_f, dtype_bytes: int):
    """Weights read once, activations read and written: (weight, activation) bytes."""
    return dtype_bytes * in_f * out_f, dtype_bytes * n * (in_f + out_f)


def prefill_attention_quantities(q_len, kv_len, num_heads: int, num_kv_heads: int, head_dim: int, dtype_bytes: int):
    """(causal FLOPs, dense FLOPs, bytes) of one chunk of ``q_len`` queries over ``kv_len`` keys.

    Causal: query i of the chunk sees ``kv_len - q_len + i + 1`` keys. Dense: the full
    ``q_len x kv_len`` score matrix, what a masked (non-causal-aware) kernel computes.
    """
    seen = q_len * (kv_len - q_len) + q_len * (q_len + 1) / 2.0
    causal = 4.0 * num_heads * head_dim * seen
    dense = 4.0 * num_heads * head_dim * q_len * kv_len
    nbytes = dtype_bytes * head_dim * (2.0 * q_len * num_heads + 2.0 * kv_len * num_kv_heads)
    return causal, dense, nbytes


def decode_attention_bytes(sum_kv, num_kv_heads: int, head_dim: int, dtype_bytes: int):
    """Bytes of K and V read by a decode batch whose contexts sum to ``sum_kv`` tokens."""
    return 2.0 * dtype_bytes * num_kv_heads * head_dim * sum_kv


def weight_bytes(config, dtype_bytes: int) -> int:
    """Bytes of every parameter (embedding and LM head counted once if tied)."""
    h, hd = config.hidden_size, config.head_dim
    per_layer = h * (config.num_attention_heads + 2 * config.num_key_value_heads) * hd
    per_layer += config.num_attention_heads * hd * h + 3 * h * config.intermediate_size + 2 * h
    embed = config.vocab_size * h * (1 if config.tie_word_embeddings else 2)
    return dtype_bytes * (config.num_hidden_layers * per_layer + embed + h)
