"""``sdpa`` attention backend: unchanged, non-paged kernels for prefill over virtual KV.

vAttention's point is that with KV in contiguous virtual memory, a request's cached K and V
are one ordinary strided tensor, so the attention kernels everyone already has --
FlashAttention, cuDNN, memory-efficient attention, all behind torch's
``scaled_dot_product_attention`` -- run on it without block tables. This backend does that:

- prefill chunks: one SDPA call per chunk on the request's slot view
  ``k_cache[slot, :seq_len]`` (``[seq_len, kv_heads, head_dim]``, no copy). A chunk after a
  cached prefix is causal *aligned to the bottom right* (query ``i`` sees keys up to
  ``prefix + i``): ``torch.nn.attention.bias.causal_lower_right`` expresses that and keeps the
  fused kernels eligible, where a boolean mask would force the slow math path. Grouped-query
  heads go through ``enable_gqa`` (no K/V expansion);
- decodes: the contiguous-layout Triton decode kernel (flash-decoding with split KV, GQA
  packed), which CUDA graphs capture like the ``triton`` backend's;
- new K/V: the Triton KV-write kernel on CUDA (padding rows of a graphed batch write nothing).

Meant for ``--kv virtual``. With paged KV it still works: a prefill whose context spans
several blocks is gathered into a contiguous copy first (correct, slower). Needs CUDA, or
``TRITON_INTERPRET=1`` for CPU testing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from ..kernels import decode_attention, write_kv
from .base import AttentionMetadata
from .torch_ref import TorchAttentionBackend, write_kv_torch


class SdpaAttention(TorchAttentionBackend):
    """Prefill through torch SDPA on contiguous per-request K/V; decode through Triton."""

    name = "sdpa"

    def forward(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float):
        """Write this batch's new K/V into the cache at ``slot_mapping``, then attend."""
        n = meta.num_tokens
        if q.is_cuda:
            write_kv(k[:n], v[:n], k_cache, v_cache, meta.slot_mapping[:n])
        else:  # the interpreter's KV write is slow; index_copy_ does the same on CPU
            write_kv_torch(k[:n], v[:n], k_cache, v_cache, meta.slot_mapping[:n])
        out = torch.empty_like(q)  # [num_tokens, num_q_heads, head_dim]
        nd = meta.num_decodes
        if nd:
            decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens,
                             meta.cu_seqlens_q, nd, meta.decode_split_bound, scale, out)
        for i, start, q_len, seq_len in self._shared.get("prefills", ()):
            keys, vals = self._seq_kv(i, seq_len, k_cache, v_cache, meta)  # [seq_len, kv_heads, head_dim]
            qq = q[start:start + q_len].transpose(0, 1).unsqueeze(0)  # [1, heads, q_len, head_dim]
            kk = keys.transpose(0, 1).unsqueeze(0)  # [1, kv_heads, seq_len, head_dim]
            vv = vals.transpose(0, 1).unsqueeze(0)
            if q_len == seq_len:
                o = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, scale=scale, enable_gqa=True)
            else:
                o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=causal_lower_right(q_len, seq_len), scale=scale,
                                                   enable_gqa=True)
            out[start:start + q_len] = o[0].transpose(0, 1)
        return out
