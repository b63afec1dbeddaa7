"""Varlen causal prefill attention over a paged (or contiguous) KV cache."""
import torch
import triton
import triton.language as tl

from .tiles import prefill_tile
from .utils import LOG2E, check_cache, interpreting


def prefill_config(head_dim: int) -> dict:
    """Tile shape for the standalone prefill kernel.

    D=128: 128x128 tiles, 8 warps, 2 stages was the fastest of 7 shapes on an H100
    (benchmarks/attention.py tune section: 0.75 ms vs 0.86 ms for 128x64/3 stages on a
    2048-token chunk at 6K prefix, paged); D=64 is untuned.
    """
    if head_dim <= 64:
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2)



@triton.jit(do_not_specialize=["first_seq", "num_m_tiles", "bt_stride"])
def _prefill_kernel(q_ptr, o_ptr, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q,
                    first_seq, num_m_tiles,
                    stride_qt, stride_qh, stride_ot, stride_oh, bt_stride, block_size,
                    stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                    GQA: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, PAGE_ALIGNED: tl.constexpr):
    # Grid (num_q_heads, num_m_tiles, num_seqs): heads fastest so the query heads of
    # one KV group run together and share K/V through L2; heaviest (last) row
    # tiles first so the causal tail does not straggle.
    head = tl.program_id(0)
    m_tile = num_m_tiles - 1 - tl.program_id(1)
    seq = first_seq + tl.program_id(2)
    prefill_tile(q_ptr, o_ptr, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q,
                 seq, m_tile, head, stride_qt, stride_qh, stride_ot, stride_oh, bt_stride,
                 block_size, stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                 GQA, HEAD_DIM, BLOCK_M, BLOCK_N, PAGE_ALIGNED)


def prefill_attention(
    q: torch.Tensor,  # [num_tokens, num_q_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # int32 [num_seqs, max_blocks_per_seq]
    seq_lens: torch.Tensor,  # int32 [num_seqs]
    cu_seqlens_q: torch.Tensor,  # int32 [num_seqs + 1]
    num_decodes: int,
    max_query_len: int,
    scale: float | None = None,
    out: torch.Tensor | None = None,  # [num_tokens, num_q_heads, head_dim]
    config: dict | None = None,
) -> torch.Tensor:  # [num_tokens, num_q_heads, head_dim]
    """Causal attention of every sequence after the first ``num_decodes`` (the prefill chunks).

    Each chunk's queries attend to the chunk's cached prefix and causally to
    themselves; the chunk's own K/V must already be in the cache. Only the rows
    of those chunks are written to ``out``. ``max_query_len`` bounds the chunks'
    query lengths (host int, sizes the grid). With ``num_decodes=0`` decodes can be
    folded in as query-length-1 chunks.
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
    num_prefills = seq_lens.shape[0] - num_decodes
    if num_prefills <= 0 or max_query_len <= 0:
        return out
    # One shape for every grid: half-height tiles for small grids (fewer than one
    # program per SM) measured 4-18% slower on an H100 for 512/1024-token chunks,
    # paged (see docs/benchmarks-attention.md), so they are not used.
    cfg = dict(prefill_config(head_dim), **(config or {}))
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    num_m_tiles = triton.cdiv(max_query_len, bm)
    scale = head_dim ** -0.5 if scale is None else scale
    kw = {} if interpreting() else dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if cfg.get("maxnreg") and not interpreting():
        kw["maxnreg"] = cfg["maxnreg"]
    _prefill_kernel[(num_q_heads, num_m_tiles, num_prefills)](
        q, out, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q,
        num_decodes, num_m_tiles,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        block_size, k_cache.stride(1), k_cache.stride(2), v_cache.stride(1), v_cache.stride(2),
        scale * LOG2E,
        GQA=num_q_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_M=bm, BLOCK_N=bn,
        PAGE_ALIGNED=block_size % bn == 0, **kw)
    return out
