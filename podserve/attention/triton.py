"""``triton`` attention backend: the serial baseline (prefill kernel, then decode kernel).

Both kernels write disjoint rows of one output tensor; the KV cache layout may
be paged or contiguous (block_size = max_ctx, one-column block table).
"""
from __future__ import annotations

import torch

from ..kernels import decode_attention, prefill_attention, write_kv
from .base import AttentionBackend, AttentionMetadata


def attend_serial(q: torch.Tensor,  # [num_tokens, num_q_heads, head_dim]
                  k_cache: torch.Tensor, v_cache: torch.Tensor,
                  meta: AttentionMetadata, scale: float,
                  out: torch.Tensor) -> torch.Tensor:  # [num_tokens, num_q_heads, head_dim]
    """Decode kernel over the decodes, then prefill kernel over the chunks (KV already cached)."""
    nd = meta.num_decodes
    if nd:
        decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens,
                         meta.cu_seqlens_q, nd, meta.decode_split_bound, scale, out)
    if meta.num_prefills:
        prefill_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens,
                          meta.cu_seqlens_q, nd, max(meta.query_lens_cpu[nd:]), scale, out,
                          max_seq_len=max(meta.seq_lens_cpu[nd:]))
    return out


class TritonAttention(AttentionBackend):
    """Serial Triton kernels: one launch per side of the hybrid batch."""

    name = "triton"

    def forward(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float):
        """Write this batch's new K/V into the cache at ``slot_mapping``, then attend."""
        n = meta.num_tokens
        write_kv(k[:n], v[:n], k_cache, v_cache, meta.slot_mapping[:n])
        out = torch.empty_like(q)  # [num_tokens, num_q_heads, head_dim]
        return attend_serial(q, k_cache, v_cache, meta, scale, out)
