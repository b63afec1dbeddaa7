"""Varlen causal prefill attention over a paged (or contiguous) KV cache, optionally split-KV."""
import torch
import triton
import triton.language as tl

from .tiles import combine_rows, prefill_tile
from .utils import LOG2E, check_cache, device_sms, even_splits, interpreting, page_mode, split_partials

PARTIAL_BYTES_CAP = 128 << 20
"""Largest float32 partial-output buffer a split-KV prefill plans for itself (bytes)."""
COMBINE_ROWS = 32
"""Query rows one program of the split-KV combine merges."""


def prefill_config(head_dim: int) -> dict:
    """Tile shape for the standalone prefill kernel.

    D=128: 128x128 tiles, 8 warps, 2 stages was the fastest of 7 shapes on an H100
    (benchmarks/attention.py tune section: 0.75 ms vs 0.86 ms for 128x64/3 stages on a
    2048-token chunk at 6K prefix, paged); D=64 is untuned.
    ``programs_per_sm``: how many such programs an SM holds at once (registers and
    shared memory; docs/benchmarks-attention.md), which sizes the split-KV plan.
    """
    if head_dim <= 64:
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3, programs_per_sm=2)
    return dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, programs_per_sm=1)


def prefill_split_plan(num_tiles: int, max_seq_len: int, slots: int, block_n: int,
                       max_splits: int = 16, overhead_keys: int = 256) -> tuple[int, int]:
    """(num_splits, split_len) for split-KV prefill over ``num_tiles`` row tiles.

    A chunk of a few hundred tokens over a long prefix has few row tiles (16 heads x
    four 128-row tiles = 64 programs on 132 SMs) and each walks the whole prefix, so
    most of the GPU idles. Splitting each tile's keys ``s`` ways gives ``s`` times the
    programs at ``1/s`` the work each, plus a combine. The plan minimises the
    estimated time ``waves(s) x (split_len(s) + overhead)`` in units of keys, where
    ``waves`` counts rounds of ``slots`` resident programs and ``overhead_keys``
    stands for a split program's fixed cost (query load, partial store, its share of
    the combine: about two 128-key tiles' worth of traffic). Ties keep fewer splits.
    """
    best = (None, 1, max_seq_len)
    for s in range(1, max_splits + 1):
        eff, split_len = even_splits(max_seq_len, s, block_n)
        if eff != s:
            continue  # the same split length as a smaller s
        cost = triton.cdiv(num_tiles * s, max(1, slots)) * (split_len + (overhead_keys if s > 1 else 0))
        if best[0] is None or cost < best[0]:
            best = (cost, s, split_len)
    return best[1], best[2]


def resolve_prefill_splits(num_tiles: int, max_seq_len: int | None, num_splits: int | None,
                           slots: int, block_n: int, partial_rows: int, num_q_heads: int,
                           head_dim: int) -> tuple[int, int]:
    """(splits, split_len) for a launch: 1 without ``max_seq_len``; ``num_splits`` if
    forced; else ``prefill_split_plan`` unless its partials ([partial_rows, Hq, splits,
    D + 1] float32) would exceed ``PARTIAL_BYTES_CAP``. ``split_len`` is a multiple of
    ``block_n`` (1 when unsplit)."""
    if max_seq_len is None:
        if num_splits is not None and num_splits > 1:
            raise ValueError("a forced prefill split count needs the chunks' context length")
        return 1, 1
    if num_splits is not None:
        return even_splits(max_seq_len, max(1, num_splits), block_n)
    splits, split_len = prefill_split_plan(num_tiles, max_seq_len, slots, block_n)
    if splits == 1 or partial_rows * num_q_heads * splits * (head_dim + 1) * 4 > PARTIAL_BYTES_CAP:
        return 1, 1
    return splits, split_len


@triton.jit(do_not_specialize=["first_seq", "num_m_tiles", "split_len", "num_splits", "bt_stride"])
def _prefill_kernel(q_ptr, o_ptr, part_o, part_lse, k_cache, v_cache, block_tables, seq_lens,
                    cu_seqlens_q, first_seq, num_m_tiles, split_len, num_splits,
                    stride_qt, stride_qh, stride_ot, stride_oh, bt_stride, block_size,
                    stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                    NUM_Q_HEADS: tl.constexpr, GQA: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGE: tl.constexpr,
                    SPLIT: tl.constexpr):
    # Grid (num_q_heads, num_m_tiles x num_splits, num_seqs): heads fastest so the query
    # heads of one KV group run together and share K/V through L2; heaviest (last) row
    # tiles first so the causal tail does not straggle.
    head = tl.program_id(0)
    m_tile = num_m_tiles - 1 - tl.program_id(1) // num_splits
    split = tl.program_id(1) % num_splits
    seq = first_seq + tl.program_id(2)
    prefill_tile(q_ptr, o_ptr, part_o, part_lse, k_cache, v_cache, block_tables, seq_lens,
                 cu_seqlens_q, seq, m_tile, head, split, split_len, num_splits,
                 stride_qt, stride_qh, stride_ot, stride_oh, bt_stride, block_size,
                 stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                 NUM_Q_HEADS, GQA, HEAD_DIM, BLOCK_M, BLOCK_N, PAGE, SPLIT)


@triton.jit(do_not_specialize=["first_seq", "split_len", "num_splits"])
def _prefill_combine_kernel(o_ptr, part_o, part_lse, seq_lens, cu_seqlens_q, first_seq,
                            split_len, num_splits, stride_ot, stride_oh,
                            NUM_Q_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                            BLOCK_M: tl.constexpr):
    combine_rows(o_ptr, part_o, part_lse, seq_lens, cu_seqlens_q, first_seq + tl.program_id(2),
                 tl.program_id(1), tl.program_id(0), split_len, num_splits, stride_ot, stride_oh,
                 NUM_Q_HEADS, HEAD_DIM, BLOCK_M, BLOCK_M, "")


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
    max_seq_len: int | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:  # [num_tokens, num_q_heads, head_dim]
    """Causal attention of every sequence after the first ``num_decodes`` (the prefill chunks).

    Each chunk's queries attend to the chunk's cached prefix and causally to
    themselves; the chunk's own K/V must already be in the cache. Only the rows
    of those chunks are written to ``out``. ``max_query_len`` bounds the chunks'
    query lengths (host int, sizes the grid). With ``num_decodes=0`` decodes can be
    folded in as query-length-1 chunks.

    ``max_seq_len`` (host int: the chunks' longest context, prefix included) enables
    split-KV when the row tiles alone would leave SMs idle (``prefill_split_plan``);
    without it the kernel never splits. ``num_splits`` forces a split count.
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
    # paged (see docs/benchmarks-attention.md); small grids split the keys instead.
    cfg = dict(prefill_config(head_dim), **(config or {}))
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    num_m_tiles = triton.cdiv(max_query_len, bm)
    num_tiles = num_q_heads * num_m_tiles * num_prefills
    splits, split_len = resolve_prefill_splits(
        num_tiles, max_seq_len, num_splits, device_sms(q) * cfg.get("programs_per_sm", 1), bn,
        num_tokens - num_decodes, num_q_heads, head_dim)
    scale = head_dim ** -0.5 if scale is None else scale
    kw = {} if interpreting() else dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if cfg.get("maxnreg") and not interpreting():
        kw["maxnreg"] = cfg["maxnreg"]
    # Indexed by token row, so decode rows' slots go unused: [num_tokens, Hq, splits, D].
    part_o, part_lse = split_partials(num_tokens, num_q_heads, splits, head_dim, out)
    _prefill_kernel[(num_q_heads, num_m_tiles * splits, num_prefills)](
        q, out, part_o, part_lse, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q,
        num_decodes, num_m_tiles, split_len, splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        block_size, k_cache.stride(1), k_cache.stride(2), v_cache.stride(1), v_cache.stride(2),
        scale * LOG2E,
        NUM_Q_HEADS=num_q_heads, GQA=num_q_heads // num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_M=bm, BLOCK_N=bn, PAGE=page_mode(block_size, bn), SPLIT=splits > 1, **kw)
    if splits > 1:
        _prefill_combine_kernel[(num_q_heads, triton.cdiv(max_query_len, COMBINE_ROWS), num_prefills)](
            out, part_o, part_lse, seq_lens, cu_seqlens_q, num_decodes, split_len, splits,
            out.stride(0), out.stride(1),
            NUM_Q_HEADS=num_q_heads, HEAD_DIM=head_dim, BLOCK_M=COMBINE_ROWS,
            **({} if interpreting() else dict(num_warps=4)))
    return out
