"""Random hybrid batches for kernel tests and benchmarks: decodes first, then prefill chunks."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    q: torch.Tensor  # [num_tokens, num_q_heads, head_dim]
    k: torch.Tensor  # [num_tokens, num_kv_heads, head_dim] new keys of this batch
    v: torch.Tensor  # [num_tokens, num_kv_heads, head_dim]
    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # int32 [num_seqs, max_blocks_per_seq]
    seq_lens: torch.Tensor  # int32 [num_seqs]
    cu_seqlens_q: torch.Tensor  # int32 [num_seqs + 1]
    slot_mapping: torch.Tensor  # int64 [num_tokens]
    num_decodes: int
    query_lens: list[int]
    seq_lens_list: list[int]

    @property
    def max_query_len(self) -> int:
        return max(self.query_lens[self.num_decodes:], default=0)

    @property
    def max_decode_len(self) -> int:
        return max(self.seq_lens_list[:self.num_decodes], default=0)


def make_batch(decode_lens: list[int], chunks: list[tuple[int, int]], num_q_heads: int,
               num_kv_heads: int, head_dim: int, block_size: int | None,
               dtype=torch.float32, device="cpu", fill_cache: bool = True) -> Batch:
    """A batch of decodes (context lengths ``decode_lens``) then chunks ``(prefix, chunk_len)``.

    ``block_size=None`` gives the contiguous layout ``[num_seqs, max_ctx, Hkv, D]``
    with a one-column block table of shuffled slots; otherwise blocks are drawn
    in random order from a pool with spare blocks. The cache holds random
    values everywhere (including this batch's own rows) unless ``fill_cache`` is
    False, in which case it is NaN so that only written rows are finite.
    """
    seq_lens = list(decode_lens) + [p + c for p, c in chunks]
    query_lens = [1] * len(decode_lens) + [c for _, c in chunks]
    num_seqs = len(seq_lens)
    max_len = max(seq_lens)
    if block_size is None:
        bs = max_len
        slots = torch.randperm(num_seqs + 1)[:num_seqs]
        block_tables = slots.view(num_seqs, 1).to(torch.int32)
        num_blocks = num_seqs + 1
    else:
        bs = block_size
        per_seq = -(-max_len // bs)
        num_blocks = num_seqs * per_seq + 3
        perm = torch.randperm(num_blocks)[:num_seqs * per_seq]
        block_tables = perm.view(num_seqs, per_seq).to(torch.int32)
    dev = torch.device(device)
    shape = (num_blocks, bs, num_kv_heads, head_dim)
    if fill_cache:
        k_cache = torch.randn(shape, device=dev, dtype=dtype)
        v_cache = torch.randn(shape, device=dev, dtype=dtype)
    else:
        k_cache = torch.full(shape, float("nan"), dtype=dtype, device=dev)
        v_cache = torch.full(shape, float("nan"), dtype=dtype, device=dev)
    num_tokens = sum(query_lens)
    q = torch.randn(num_tokens, num_q_heads, head_dim, device=dev, dtype=dtype)
    k = torch.randn(num_tokens, num_kv_heads, head_dim, device=dev, dtype=dtype)
    v = torch.randn(num_tokens, num_kv_heads, head_dim, device=dev, dtype=dtype)
    slots = []
    for s, (qlen, slen) in enumerate(zip(query_lens, seq_lens)):
        for pos in range(slen - qlen, slen):
            slots.append(int(block_tables[s, pos // bs]) * bs + pos % bs)
    cu = torch.zeros(num_seqs + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(query_lens).cumsum(0)
    return Batch(q, k, v, k_cache, v_cache,
                 block_tables.to(dev), torch.tensor(seq_lens, dtype=torch.int32, device=dev),
                 cu.to(dev), torch.tensor(slots, dtype=torch.int64, device=dev),
                 len(decode_lens), query_lens, seq_lens)


def to_layout(b: Batch, block_size: int | None) -> Batch:
    """The same logical batch (same K/V per position) in another cache layout."""
    from podserve.kernels.reference import gather_kv

    num_seqs = len(b.seq_lens_list)
    max_len = max(b.seq_lens_list)
    hkv, d = b.k_cache.shape[2:]
    bs = max_len if block_size is None else block_size
    per_seq = 1 if block_size is None else -(-max_len // bs)
    num_blocks = num_seqs * per_seq + 1
    dev = b.k_cache.device
    perm = torch.randperm(num_blocks)[:num_seqs * per_seq].view(num_seqs, per_seq)
    kc = torch.randn(num_blocks, bs, hkv, d).to(b.k_cache.dtype).to(dev)
    vc = torch.randn(num_blocks, bs, hkv, d).to(b.k_cache.dtype).to(dev)
    bt = perm.to(torch.int32).to(dev)
    slots = []
    for s, n in enumerate(b.seq_lens_list):
        pos = torch.arange(n)
        rows = perm[s][pos // bs] * bs + pos % bs
        kc.view(-1, hkv, d)[rows.to(dev)] = gather_kv(b.k_cache, b.block_tables[s], n)
        vc.view(-1, hkv, d)[rows.to(dev)] = gather_kv(b.v_cache, b.block_tables[s], n)
        qlen = b.query_lens[s]
        slots += rows[n - qlen:].tolist()
    return Batch(b.q, b.k, b.v, kc, vc, bt, b.seq_lens, b.cu_seqlens_q,
                 torch.tensor(slots, dtype=torch.int64, device=dev), b.num_decodes,
                 b.query_lens, b.seq_lens_list)
