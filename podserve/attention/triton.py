"""``triton`` attention backend: the serial baseline (prefill kernel, then decode kernel).

Both kernels write disjoint rows of one output tensor; the KV cache layout may
be paged or contiguous (block_size = max_ctx, one-column block table).
"""
from __future__ import annotations

import os

import torch

from ..kernels import decode_attention, prefill_attention, write_kv
from .base import AttentionBackend, AttentionMetadata


SPLIT_KV_PREFILL = os.environ.get("PODSERVE_SPLIT_PREFILL", "0") == "1"
"""Let the prefill kernels split a chunk's keys when its row tiles cannot fill the GPU
(``kernels.prefill.prefill_split_plan``). Off by default until measured on a GPU: the
kernels pass their tests against the torch reference under Triton's interpreter, but no
GPU was lent since they were written (benchmarks/attention.py ``--sections split`` is
the measurement to run). ``PODSERVE_SPLIT_PREFILL=1`` turns it on."""


def prefill_context_bound(meta: AttentionMetadata) -> int | None:
    """The chunks' longest context (the split-KV plan's input), or None when splitting is off."""
    return max(meta.seq_lens_cpu[meta.num_decodes:]) if SPLIT_KV_PREFILL else None


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
                          max_seq_len=prefill_context_bound(meta))
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
