"""Each rank's share of the weights: the full checkpoint stream, sliced as it goes by.

Every rank iterates the same Hugging Face-named stream (a checkpoint, a GGUF file, or the
random weights of a preset) and keeps only its slices, renumbering its stage's layers from
0, so the stock ``LlamaForCausalLM.load_weights`` of a model built at the rank's shapes
(``Partition.shard_config``) loads them. Peak extra memory is one full tensor.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from podserve.core.partition import Partition
from podserve.model.config import LlamaConfig

WeightStream = Iterator[tuple[str, torch.Tensor]]


def shard_weights(stream: WeightStream, config: LlamaConfig, part: Partition, tp_rank: int, pp_rank: int) -> WeightStream:
    """Yield ``(hf_name, tensor)`` of ``tp_rank`` in stage ``pp_rank`` from the full ``stream``."""
    hd = config.head_dim
    q0, q1 = part.q_heads(tp_rank)
    k0, k1 = part.kv_heads(tp_rank)
    i0, i1 = part.intermediate(tp_rank, config.intermediate_size)
    v0, v1 = part.vocab(tp_rank)
    first, last = part.layers(pp_rank)
    for hf_name, tensor in stream:
        name = hf_name.removeprefix("model.")
        if "rotary_emb" in name:
            continue
        parts = name.split(".")
        if parts[0] == "layers":
            layer = int(parts[1])
            if not first <= layer < last:
                continue
            name = ".".join(["layers", str(layer - first)] + parts[2:])
            proj = parts[-2]
            if proj == "q_proj":
                tensor = tensor[q0 * hd:q1 * hd]
            elif proj in ("k_proj", "v_proj"):
                tensor = tensor[k0 * hd:k1 * hd]
            elif proj == "o_proj":
                tensor = tensor[:, q0 * hd:q1 * hd]
            elif proj in ("gate_proj", "up_proj"):
                tensor = tensor[i0:i1]
            elif proj == "down_proj":
                tensor = tensor[:, i0:i1]
        elif name in ("embed_tokens.weight", "lm_head.weight"):
            tensor = _vocab_rows(tensor, v0, v1)
        yield name, tensor


def _vocab_rows(tensor: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Rows ``[start, end)`` of a ``[vocab, hidden]`` matrix, zero rows past its end."""
    rows = tensor[start:min(end, tensor.shape[0])]
    if rows.shape[0] == end - start:
        return rows
    pad = torch.zeros(end - start - rows.shape[0], *tensor.shape[1:], dtype=tensor.dtype, device=tensor.device)
    return torch.cat([rows, pad])


def random_weights(config: LlamaConfig, seed: int, device: torch.device, std: float = 0.02) -> WeightStream:
    """The weights ``LlamaForCausalLM.init_random(seed)`` draws, as a Hugging Face-named stream.

    Same parameters, order, generator and device, so a sharded model loads exactly the
    values an unsharded one initialises itself with: random-weight presets give the same
    tokens at any tensor- or pipeline-parallel size. Fused projections are drawn whole,
    then split into their Hugging Face parts.
    """
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, shape in parameter_shapes(config):
        if name.endswith("norm.weight"):
            yield name, torch.ones(shape, device=device)
            continue
        tensor = torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * std
        prefix, _, leaf = name.rpartition(".")
        if prefix.endswith("qkv_proj"):
            base = prefix.removesuffix("qkv_proj")
            for part_name, piece in zip(("q_proj", "k_proj", "v_proj"), tensor.split([q, kv, kv])):
                yield f"{base}{part_name}.{leaf}", piece
        elif prefix.endswith("gate_up_proj"):
            base = prefix.removesuffix("gate_up_proj")
            for part_name, piece in zip(("gate_proj", "up_proj"), tensor.chunk(2)):
                yield f"{base}{part_name}.{leaf}", piece
        else:
            yield name, tensor


def parameter_shapes(config: LlamaConfig) -> list[tuple[str, tuple[int, ...]]]:
    """``LlamaForCausalLM(config).named_parameters()`` as (name, shape), in order, without
    building the model (a test holds the two equal)."""
    h, hd, inter = config.hidden_size, config.head_dim, config.intermediate_size
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    out = [("embed_tokens.weight", (config.vocab_size, h))]
    for i in range(config.num_hidden_layers):
        p = f"layers.{i}."
        out.append((p + "self_attn.qkv_proj.weight", (q + 2 * kv, h)))
        if config.attention_bias:
            out.append((p + "self_attn.qkv_proj.bias", (q + 2 * kv,)))
        out += [(p + "self_attn.o_proj.weight", (h, q)), (p + "mlp.gate_up_proj.weight", (2 * inter, h)),
                (p + "mlp.down_proj.weight", (h, inter)), (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,))]
    out.append(("norm.weight", (h,)))
    if not config.tie_word_embeddings:
        out.append(("lm_head.weight", (config.vocab_size, h)))
    return out


def rank_weights(weights: Callable[[], WeightStream] | None, config: LlamaConfig, part: Partition,
                 tp_rank: int, pp_rank: int, seed: int, device: torch.device) -> Callable[[], WeightStream]:
    """The weight callable a rank's ModelRunner loads: its slices of the checkpoint, or of
    the preset's random weights when ``weights`` is None."""

    def stream() -> WeightStream:
        full = weights() if weights is not None else random_weights(config, seed, device)
        return shard_weights(full, config, part, tp_rank, pp_rank)

    return stream
