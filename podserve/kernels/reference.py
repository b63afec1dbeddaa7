"""Torch references for every kernel in this package (slow, exact, any dtype)."""
import torch


def gather_kv(cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
              block_table: torch.Tensor,  # int [max_blocks_per_seq]
              length: int) -> torch.Tensor:  # [length, num_kv_heads, head_dim]
    """The first ``length`` K (or V) rows of one sequence, in position order."""
    block_size = cache.shape[1]
    pos = torch.arange(length, device=cache.device)
    rows = block_table.long()[pos // block_size] * block_size + pos % block_size
    return cache.reshape(-1, *cache.shape[2:])[rows]


def attention_ref(
    q: torch.Tensor,  # [num_tokens, num_q_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # int32 [num_seqs, max_blocks_per_seq]
    seq_lens: torch.Tensor,  # int32 [num_seqs]
    cu_seqlens_q: torch.Tensor,  # int32 [num_seqs + 1]
    scale: float | None = None,
    seqs: range | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:  # [num_tokens, num_q_heads, head_dim] in ``dtype``; rows of other seqs NaN
    """Causal attention of each sequence's queries over its cached context (chunked prefill
    and decode alike: query ``i`` of a run of ``n`` sits at position ``seq_len - n + i``)."""
    num_tokens, num_q_heads, head_dim = q.shape
    gqa = num_q_heads // k_cache.shape[2]
    scale = head_dim ** -0.5 if scale is None else scale
    out = torch.full((num_tokens, num_q_heads, head_dim), float("nan"), dtype=dtype,
                     device=q.device)
    cu = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    for s in (seqs if seqs is not None else range(len(lens))):
        a, b, n = cu[s], cu[s + 1], lens[s]
        if b == a:
            continue
        k = gather_kv(k_cache, block_tables[s], n).to(dtype).repeat_interleave(gqa, dim=1)
        v = gather_kv(v_cache, block_tables[s], n).to(dtype).repeat_interleave(gqa, dim=1)
        qs = q[a:b].to(dtype)  # [q_len, Hq, D]
        scores = torch.einsum("qhd,khd->hqk", qs, k) * scale  # [Hq, q_len, n]
        pos_q = torch.arange(n - (b - a), n, device=q.device)
        causal = torch.arange(n, device=q.device)[None, :] <= pos_q[:, None]
        scores = scores.masked_fill(~causal, float("-inf"))
        out[a:b] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
    return out


def write_kv_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """In-place: cache row ``slot_mapping[t]`` <- K/V of token ``t`` (negative slots skipped)."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k[keep].to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v[keep].to(v_cache.dtype)
