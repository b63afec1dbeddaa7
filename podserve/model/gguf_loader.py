"""Read a llama.cpp GGUF file: LlamaConfig from metadata, float32 weights under Hugging Face names."""
from __future__ import annotations

import math
import re
from collections.abc import Iterator

import gguf
import numpy as np
import torch

from podserve.model.config import LlamaConfig
from podserve.model.gguf_metadata import gguf_architecture, gguf_field

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")

# llama.cpp tensor names -> Hugging Face LlamaForCausalLM names ({} = layer index).
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")
_GLOBAL_RE = re.compile(r"(\w+)\.(weight|bias)$")
# Tensors llama.cpp stores that are not weights of the HF model (precomputed RoPE factors).
_SKIPPED = {"rope_freqs.weight"}


def hf_tensor_name(gguf_name: str) -> str:
    """Hugging Face name of a GGUF tensor, e.g. ``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    if m := _LAYER_RE.match(gguf_name):
        layer, part, kind = m.groups()
        if part in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    elif (m := _GLOBAL_RE.match(gguf_name)) and m.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no Hugging Face Llama counterpart")


def gguf_config(reader: gguf.GGUFReader) -> LlamaConfig:
    """LlamaConfig from ``{arch}.*`` metadata (llama, qwen2)."""
    arch = gguf_architecture(reader)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; expected one of {SUPPORTED_ARCHITECTURES}")
    key = lambda k, default=None: gguf_field(reader, f"{arch}.{k}", default)  # noqa: E731
    names = {t.name for t in reader.tensors}
    num_heads = key("attention.head_count")
    hidden = key("embedding_length")
    vocab = key("vocab_size") or len(gguf_field(reader, "tokenizer.ggml.tokens", [])) or _embedding_rows(reader)
    head_dim = key("attention.key_length") or hidden // num_heads
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=key("feed_forward_length"),
        num_hidden_layers=key("block_count"),
        num_attention_heads=num_heads,
        num_key_value_heads=key("attention.head_count_kv") or num_heads,
        head_dim=head_dim,
        rms_norm_eps=key("attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=key("rope.freq_base", 10000.0),
        rope_scaling=_rope_scaling(reader, arch, head_dim, key("rope.freq_base", 10000.0)),
        max_position_embeddings=key("context_length", 4096),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        bos_token_id=gguf_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=gguf_field(reader, "tokenizer.ggml.eos_token_id"),
    )


def iter_gguf_weights(reader: gguf.GGUFReader, config: LlamaConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, float32 tensor)`` one at a time, dequantised and in HF layout.

    Peak extra memory is one dequantised tensor. For the llama architecture q_proj/k_proj rows
    are un-permuted back to HF's rotate-half order (convert_hf_to_gguf interleaves them).
    """
    permuted = gguf_architecture(reader) == "llama"
    for t in reader.tensors:
        if t.name in _SKIPPED:
            continue
        name = hf_tensor_name(t.name)
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims fastest-first
        array = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not array.flags.writeable:  # F32 tensors come straight from the read-only memory map
            array = array.copy()
        weight = torch.from_numpy(array)
        if permuted and ".self_attn.q_proj." in name:
            weight = unpermute_rotary(weight, config.num_attention_heads)
        elif permuted and ".self_attn.k_proj." in name:
            weight = unpermute_rotary(weight, config.num_key_value_heads)
        yield name, weight


def unpermute_rotary(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Invert convert_hf_to_gguf's ``permute``: per head, rows (pairs interleaved) -> (halves).

    llama.cpp's rope rotates adjacent pairs (x0,x1),(x2,x3)...; HF rotates (x_i, x_{i+d/2}).
    The converter reorders rows as reshape(h, 2, d/2).swapaxes(1, 2); we apply the inverse.
    """
    rows = weight.shape[0]
    head_dim = rows // num_heads
    return (
        weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:])
        .transpose(1, 2)
        .reshape(weight.shape)
        .contiguous()
    )


def _embedding_rows(reader: gguf.GGUFReader) -> int:
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            return int(t.shape[-1])
    raise ValueError("GGUF file has no token_embd.weight")


def _rope_scaling(reader: gguf.GGUFReader, arch: str, head_dim: int, theta: float) -> dict | None:
    """HF rope_scaling from GGUF: explicit ``rope.scaling.*`` keys, or Llama-3.1 ``rope_freqs`` factors."""
    kind = gguf_field(reader, f"{arch}.rope.scaling.type")
    if kind == "linear":
        return {"rope_type": "linear", "factor": gguf_field(reader, f"{arch}.rope.scaling.factor")}
    rope_freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if rope_freqs is None:
        return None
    # Llama-3.x GGUFs store the per-frequency divisors, not the parameters that produced them;
    # recover them by matching the known Meta settings (3.1: factor 8, 3.2: factor 32).
    stored = np.asarray(gguf.quants.dequantize(rope_freqs.data, rope_freqs.tensor_type), dtype=np.float64).ravel()
    for factor in (8.0, 32.0, 16.0, 4.0):
        params = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}
        if np.allclose(stored, _llama3_rope_divisors(params, head_dim, theta), rtol=1e-4):
            return params
    raise ValueError("GGUF rope_freqs do not match any known Llama-3 rope scaling; cannot rebuild rope_scaling")


def _llama3_rope_divisors(p: dict, head_dim: int, theta: float) -> np.ndarray:
    # Same rule as llama.cpp's convert_hf_to_gguf (LlamaModel.generate_extra_tensors).
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    low_wavelen = p["original_max_position_embeddings"] / p["low_freq_factor"]
    high_wavelen = p["original_max_position_embeddings"] / p["high_freq_factor"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(p["factor"])
        else:
            smooth = (p["original_max_position_embeddings"] / wavelen - p["low_freq_factor"]) / (
                p["high_freq_factor"] - p["low_freq_factor"])
            out.append(1 / ((1 - smooth) / p["factor"] + smooth))
    return np.array(out)
