"""Llama-family decoder over flat varlen batches (Llama-2/3, Mistral, Qwen2, SmolLM2).

The model sees one flat run of tokens per iteration (decodes first, then prefill
chunks) and delegates attention, including the KV-cache write, to a backend.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from podserve.attention.base import AttentionBackend, AttentionMetadata
from podserve.model.config import LlamaConfig
from podserve.model.layers import RMSNorm, RotaryEmbedding, SwiGLU


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig, rope: RotaryEmbedding):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim ** -0.5
        # q, k and v in one matmul: one weight read per iteration instead of three.
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False)
        self.rope = rope

    def project_qkv(self, positions, x):
        """Token-wise half before attention: q, k, v with RoPE applied.

        x [num_tokens, hidden] -> q [num_tokens, num_heads, head_dim],
        k and v [num_tokens, num_kv_heads, head_dim]. Piecewise CUDA graphs capture it."""
        n = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(n, self.num_heads, self.head_dim)
        k = k.view(n, self.num_kv_heads, self.head_dim)
        v = v.view(n, self.num_kv_heads, self.head_dim)
        q, k = self.rope(positions, q, k)
        return q, k, v

    def forward(self, positions, x, kv_cache, meta: AttentionMetadata, backend: AttentionBackend):
        n = x.shape[0]
        q, k, v = self.project_qkv(positions, x)
        out = backend.forward(q, k, v, kv_cache[0], kv_cache[1], meta, self.scale)
        return self.o_proj(out.reshape(n, self.q_size))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, rope: RotaryEmbedding):
        super().__init__()
        self.self_attn = LlamaAttention(config, rope)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions, x, residual, kv_cache, meta, backend):
        """x [num_tokens, hidden]: the previous layer's MLP output (its residual add not yet
        done), or the embeddings for the first layer (``residual`` None); returns this
        layer's MLP output and the residual stream. Each residual add happens inside the
        next norm (one fused kernel; on tensor-parallel ranks the all-reduce too)."""
        if residual is None:
            residual = x
            h = self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(positions, h, kv_cache, meta, backend)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class LlamaForCausalLM(nn.Module):
    """Decoder plus LM head. Parameters follow Hugging Face names except the fused
    ``qkv_proj`` and ``gate_up_proj``, which ``load_weights`` assembles."""

    def __init__(self, config: LlamaConfig, max_positions: int | None = None):
        super().__init__()
        self.config = config
        rope = RotaryEmbedding(
            config.head_dim, max_positions or config.max_position_embeddings, config.rope_theta, config.rope_scaling
        )
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, rope) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens]
        positions: torch.Tensor,  # [num_tokens]
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
        backend: AttentionBackend,
    ) -> torch.Tensor:  # [num_tokens, hidden]
        x, residual = self.embed_tokens(input_ids), None
        for layer, kv_cache in zip(self.layers, kv_caches):
            x, residual = layer(positions, x, residual, kv_cache, meta, backend)
        return self.norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, hidden] -> [n, vocab] float32
        return self.lm_head(hidden).float()

    # --- weights -------------------------------------------------------------------------
    @torch.no_grad()
    def init_random(self, seed: int, std: float = 0.02) -> None:
        """Random weights for benchmarking real shapes without a checkpoint."""
        device = self.embed_tokens.weight.device
        # Drawn on the weights' own device: 8B parameters from a CPU generator take a minute.
        gen = torch.Generator(device=device).manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, device=device) * std)

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load Hugging Face-named tensors; every parameter must be covered."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        cfg = self.config
        q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        fused = {
            "q_proj": ("qkv_proj", 0, q),
            "k_proj": ("qkv_proj", q, kv),
            "v_proj": ("qkv_proj", q + kv, kv),
            "gate_proj": ("gate_up_proj", 0, cfg.intermediate_size),
            "up_proj": ("gate_up_proj", cfg.intermediate_size, cfg.intermediate_size),
        }
        for hf_name, tensor in weights:
            name = hf_name.removeprefix("model.")
            if "rotary_emb" in name:
                continue
            parts = name.split(".")
            target, offset, size = name, None, None
            if len(parts) >= 2 and parts[-2] in fused:
                fused_name, offset, size = fused[parts[-2]]
                target = ".".join(parts[:-2] + [fused_name, parts[-1]])
            if target not in params:
                if name == "lm_head.weight" and cfg.tie_word_embeddings:
                    continue
                raise ValueError(f"checkpoint tensor {hf_name!r} has no place in the model")
            param = params[target]
            dest = param if offset is None else param.narrow(0, offset, size)
            if dest.shape != tensor.shape:
                raise ValueError(f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}")
            dest.copy_(tensor.to(dest.dtype))
            loaded.add(target if offset is None else f"{target}#{offset}")
        expected = set()
        for name in params:
            if name.endswith("qkv_proj.weight") or name.endswith("qkv_proj.bias"):
                expected |= {f"{name}#0", f"{name}#{q}", f"{name}#{q + kv}"}
            elif name.endswith("gate_up_proj.weight"):
                expected |= {f"{name}#0", f"{name}#{cfg.intermediate_size}"}
            elif not (name == "lm_head.weight" and cfg.tie_word_embeddings):
                expected.add(name)
        missing = sorted(expected - loaded)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
