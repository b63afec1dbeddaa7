"""The attention backend interface: metadata for one hybrid batch and the forward contract.

Token layout of every batch (shared by the engine, the kernels and the simulator's
cost model): the ``num_decodes`` decode sequences come first, one query token each,
followed by the ``num_prefills`` prefill chunks, each a run of consecutive query
tokens. Query token ``i`` of sequence ``s`` sits at absolute position
``seq_lens[s] - query_len[s] + i`` and attends causally to every cached position of
its sequence up to and including itself.

KV cache layout, per layer: ``k_cache``/``v_cache`` of shape
``[num_blocks, block_size, num_kv_heads, head_dim]``. Paged KV addresses it through
``block_tables``; contiguous (virtual-memory) KV is the degenerate case
``[max_batch, max_ctx, num_kv_heads, head_dim]`` with ``block_size = max_ctx`` and a
one-column block table holding each sequence's slot.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class AttentionMetadata:
    """Everything an attention backend needs to know about one batch's layout."""

    num_decodes: int
    """Number of decode sequences; they occupy the first ``num_decodes`` query tokens."""
    num_prefills: int
    """Number of prefill chunks, after the decodes."""
    num_prefill_tokens: int
    """Query tokens belonging to prefill chunks."""
    cu_seqlens_q: torch.Tensor
    """int32 [num_seqs + 1]: prefix sums of query lengths (decodes first)."""
    seq_lens: torch.Tensor
    """int32 [num_seqs]: context length of each sequence including this iteration's tokens."""
    block_tables: torch.Tensor
    """int32 [num_seqs, max_blocks_per_seq]: physical block ids per sequence (padded with 0)."""
    slot_mapping: torch.Tensor
    """int64 [num_tokens]: flat cache slot (block * block_size + offset) for each new token."""
    query_lens_cpu: list[int]
    """Host copy of the query length of each sequence."""
    seq_lens_cpu: list[int]
    """Host copy of ``seq_lens``."""
    max_query_len: int
    """Longest query run in the batch."""
    max_seq_len: int
    """Longest context in the batch."""
    block_tables_cpu: Any = None
    """Optional host copy (numpy) of ``block_tables``: lets a backend read a block id
    without a device-to-host sync."""
    decode_max_seq_len: int | None = None
    """Bound on the decodes' context lengths that sizes the decode split plan; None = the
    longest decode of this batch. A CUDA graph is captured with ``max_model_len`` here, so
    its fixed grid serves every context length (splits past a sequence's end exit at once)."""

    @property
    def decode_split_bound(self) -> int:
        """``decode_max_seq_len``, else the longest decode context of the batch."""
        if self.decode_max_seq_len is not None:
            return self.decode_max_seq_len
        return max(self.seq_lens_cpu[: self.num_decodes])

    @property
    def num_seqs(self) -> int:
        return self.num_decodes + self.num_prefills

    @property
    def num_decode_tokens(self) -> int:
        return self.num_decodes

    @property
    def num_tokens(self) -> int:
        return self.num_decodes + self.num_prefill_tokens


class AttentionBackend:
    """Computes attention for a hybrid batch; one instance is shared by all layers."""

    name: str = "base"

    def prepare(self, meta: AttentionMetadata) -> None:
        """Called once per batch before the first layer: precompute what all layers share."""

    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, num_q_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        v: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [num_tokens, num_q_heads, head_dim]
        """Write this batch's new K/V into the cache at ``slot_mapping``, then attend."""
        raise NotImplementedError
