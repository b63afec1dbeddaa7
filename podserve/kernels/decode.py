"""Flash-decoding: one query token per sequence, KV split across programs, then a combine."""
import torch
import triton
import triton.language as tl

from .tiles import combine_head, decode_tile
from .utils import (LOG2E, SPLITS_BLOCK, check_cache, device_sms, even_splits, interpreting,
                    next_pow2, page_mode, split_partials, split_plan)


def decode_config(head_dim: int) -> dict:
    """Tile shape for decode programs: 64 keys a step, 4 warps, 2-deep load pipeline
    (on an H100 within 1-5% of the best of 8 shapes at 64x8K and 256x4K, paged)."""
    return dict(BLOCK_N=64, num_warps=4, num_stages=2)


# Per-batch integers are not specialised (Triton would otherwise compile a new variant
# whenever one of them equals 1 or turns divisible by 16, mid-run).
@triton.jit(do_not_specialize=["split_len", "max_splits", "bt_stride"])
def _decode_kernel(q_ptr, o_ptr, part_o, part_lse, k_cache, v_cache, block_tables, seq_lens,
                   cu_seqlens_q, split_len, max_splits,
                   stride_qt, stride_qh, stride_ot, stride_oh, bt_stride, block_size,
                   stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                   NUM_Q_HEADS: tl.constexpr, GQA: tl.constexpr, G_PAD: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, PAGE: tl.constexpr,
                   DIRECT: tl.constexpr):
    # Grid (num_splits, num_kv_heads, num_decodes): the splits of one sequence run
    # side by side, each reading a disjoint KV range.
    split = tl.program_id(0)
    kvh = tl.program_id(1)
    seq = tl.program_id(2)
    decode_tile(q_ptr, o_ptr, part_o, part_lse, k_cache, v_cache, block_tables, seq_lens,
                cu_seqlens_q, seq, kvh, split, split_len, max_splits,
                stride_qt, stride_qh, stride_ot, stride_oh, bt_stride, block_size,
                stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                NUM_Q_HEADS, GQA, G_PAD, HEAD_DIM, BLOCK_N, PAGE, DIRECT)


@triton.jit(do_not_specialize=["split_len", "max_splits"])
def _combine_kernel(o_ptr, part_o, part_lse, seq_lens, cu_seqlens_q, split_len, max_splits,
                    stride_ot, stride_oh,
                    NUM_Q_HEADS: tl.constexpr, SPLITS_BLOCK: tl.constexpr,
                    HEAD_DIM: tl.constexpr):
    head = tl.program_id(0)
    seq = tl.program_id(1)
    combine_head(o_ptr, part_o, part_lse, seq_lens, cu_seqlens_q, seq, head, split_len,
                 max_splits, stride_ot, stride_oh, NUM_Q_HEADS, SPLITS_BLOCK, HEAD_DIM, "")


def decode_attention(
    q: torch.Tensor,  # [num_tokens, num_q_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # int32 [num_seqs, max_blocks_per_seq]
    seq_lens: torch.Tensor,  # int32 [num_seqs]
    cu_seqlens_q: torch.Tensor,  # int32 [num_seqs + 1]
    num_decodes: int,
    max_seq_len: int,
    scale: float | None = None,
    out: torch.Tensor | None = None,  # [num_tokens, num_q_heads, head_dim]
    num_splits: int | None = None,
    config: dict | None = None,
) -> torch.Tensor:  # [num_tokens, num_q_heads, head_dim]
    """Attention of the first ``num_decodes`` sequences, one query token each.

    ``max_seq_len`` (host int) bounds the decodes' context lengths and sizes the
    KV split; ``num_splits`` overrides the automatic choice. Only the decode rows
    of ``out`` are written.
    """
    check_cache(k_cache, v_cache)
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    block_size = k_cache.shape[1]
    if num_q_heads % num_kv_heads or head_dim not in (64, 128) or q.stride(2) != 1:
        raise ValueError("need num_q_heads % num_kv_heads == 0, head_dim in (64, 128), "
                         "contiguous head_dim")
    if out is None:
        out = torch.empty_like(q)
    if num_decodes <= 0:
        return out
    cfg = dict(decode_config(head_dim), **(config or {}))
    bn = cfg["BLOCK_N"]
    if num_splits is None:
        num_splits, split_len = split_plan(num_decodes, num_kv_heads, max_seq_len,
                                           device_sms(q), bn)
    else:
        num_splits, split_len = even_splits(max_seq_len, num_splits, bn)
    gqa = num_q_heads // num_kv_heads
    scale = head_dim ** -0.5 if scale is None else scale
    part_o, part_lse = split_partials(num_decodes, num_q_heads, num_splits, head_dim, out)
    kw = {} if interpreting() else dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if cfg.get("maxnreg") and not interpreting():
        kw["maxnreg"] = cfg["maxnreg"]
    _decode_kernel[(num_splits, num_kv_heads, num_decodes)](
        q, out, part_o, part_lse, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q,
        split_len, num_splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        block_size, k_cache.stride(1), k_cache.stride(2), v_cache.stride(1), v_cache.stride(2),
        scale * LOG2E,
        NUM_Q_HEADS=num_q_heads, GQA=gqa, G_PAD=max(16, next_pow2(gqa)),
        HEAD_DIM=head_dim, BLOCK_N=bn, PAGE=page_mode(block_size, bn),
        DIRECT=num_splits == 1, **kw)
    if num_splits > 1:
        _combine_kernel[(num_q_heads, num_decodes)](
            out, part_o, part_lse, seq_lens, cu_seqlens_q, split_len, num_splits,
            out.stride(0), out.stride(1),
            NUM_Q_HEADS=num_q_heads,
            SPLITS_BLOCK=SPLITS_BLOCK, HEAD_DIM=head_dim,
            **({} if interpreting() else dict(num_warps=4)))
    return out
