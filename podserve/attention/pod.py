"""``pod`` attention backend: prefill chunks and decodes in one POD-Attention launch.

Selection rule (``should_fuse``). Fusing can at best turn ``t_p + t_d`` into
``max(t_p, t_d)``, so its gain is bounded by ``(t_p + t_d) / max(t_p, t_d)``;
the fused kernel also pays a price (smaller prefill tiles so that a prefill and
a decode program share an SM, the ticket/claim atomics). The rule estimates
``t_p`` from the chunk FLOPs at the prefill kernel's measured rate and ``t_d``
from the decodes' KV bytes at the decode kernel's measured bandwidth, and fuses
only when the bound reaches ``FUSE_MIN_GAIN``, set between the measured bounds at
which POD tied the serial pair (1.06) and first beat it (1.21) on the H100 sweep
(docs/benchmarks-attention.md).
Batches with only one side, or with a side too small to hide, run the serial
kernels.
"""
from __future__ import annotations

import torch

from ..kernels import pod_attention, write_kv
from .base import AttentionBackend, AttentionMetadata
from .triton import attend_serial, prefill_context_bound

# Measured on one H100 SXM (benchmarks/attention.py; see docs/benchmarks-attention.md).
PREFILL_FLOPS = 3.2e14
"""Chunked-prefill rate of the standalone prefill kernel (FLOP/s; 320-380 measured)."""
DECODE_BYTES_PER_S = 2.9e12
"""KV read rate of the standalone decode kernel, paged (bytes/s; 2.9-3.0 measured)."""
FUSE_MIN_GAIN = 1.15
"""Smallest estimated (t_p + t_d) / max(t_p, t_d) at which the fused kernel is used:
on the H100 sweep POD vs serial was 1.00x at a measured bound of 1.06, 1.05x at
1.21 and 1.09-1.33x from 1.28 up."""


def estimate_times(meta: AttentionMetadata, num_q_heads: int, num_kv_heads: int,
                   head_dim: int, elem_bytes: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of a batch from its shape alone."""
    nd = meta.num_decodes
    flops = 0.0
    for qlen, slen in zip(meta.query_lens_cpu[nd:], meta.seq_lens_cpu[nd:]):
        prefix = slen - qlen
        # QK^T and PV: 2 matmuls x 2 FLOP per MAC over the causal (prefix + triangle) area.
        flops += 4.0 * num_q_heads * head_dim * qlen * (prefix + (qlen + 1) / 2)
    kv_bytes = 2.0 * num_kv_heads * head_dim * elem_bytes * sum(meta.seq_lens_cpu[:nd])
    return flops / PREFILL_FLOPS, kv_bytes / DECODE_BYTES_PER_S


def should_fuse(meta: AttentionMetadata, num_q_heads: int, num_kv_heads: int,
                head_dim: int, elem_bytes: int) -> bool:
    """True when the batch has both sides and the fusion bound exceeds ``FUSE_MIN_GAIN``."""
    if meta.num_decodes == 0 or meta.num_prefills == 0:
        return False
    t_p, t_d = estimate_times(meta, num_q_heads, num_kv_heads, head_dim, elem_bytes)
    return (t_p + t_d) / max(t_p, t_d) >= FUSE_MIN_GAIN


class PodAttention(AttentionBackend):
    """Fused POD kernel for hybrid batches; serial kernels where fusing cannot pay."""

    name = "pod"

    def __init__(self, policy: str = "even", always_fuse: bool = False) -> None:
        self.policy = policy
        """Role policy of the POD kernel: ``"even"``, ``"proportional"`` or ``"occupancy"``."""
        self.always_fuse = always_fuse
        """Skip the selection rule (fuse every hybrid batch); for tests and benchmarks."""

    def forward(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float):
        """Write this batch's new K/V into the cache at ``slot_mapping``, then attend."""
        n = meta.num_tokens
        write_kv(k[:n], v[:n], k_cache, v_cache, meta.slot_mapping[:n])
        out = torch.empty_like(q)  # [num_tokens, num_q_heads, head_dim]
        hybrid = meta.num_decodes > 0 and meta.num_prefills > 0
        fuse = hybrid and (self.always_fuse or should_fuse(
            meta, q.shape[1], k_cache.shape[2], q.shape[2], k_cache.element_size()))
        if not fuse:
            return attend_serial(q, k_cache, v_cache, meta, scale, out)
        nd = meta.num_decodes
        return pod_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens,
                             meta.cu_seqlens_q, nd, max(meta.query_lens_cpu[nd:]),
                             meta.decode_split_bound, scale, out, policy=self.policy,
                             max_prefill_seq_len=prefill_context_bound(meta))
