"""Triton device functions shared by the prefill, decode and POD kernels.

Each function computes one *tile* of work; the kernels in ``prefill.py``,
``decode.py`` and ``pod.py`` only decide which tile a program runs. Keeping the
tile bodies in one place is what makes the fused POD kernel compute exactly the
same function as the serial pair.

KV cache addressing (both layouts): the cache is ``[num_blocks, block_size,
num_kv_heads, head_dim]``; key position ``n`` of sequence ``s`` lives in flat row
``block_tables[s, n // block_size] * block_size + n % block_size``. Contiguous
(virtual-memory) KV is ``block_size = max_ctx`` with a one-column block table.
Softmax runs in base 2: scores are pre-multiplied by ``scale * log2(e)`` so that
``exp2`` replaces ``exp`` (one MUFU op per element).
"""
import triton
import triton.language as tl

# Finite stand-in for -inf as the running max: keeps exp2(m_old - m_new) finite
# when a whole tile row is masked (no NaN from (-inf) - (-inf)).
NEG_BIG = tl.constexpr(-1.0e30)


@triton.jit
def kv_rows(block_tables, seq, n0, offs_n, mask_n, bt_stride, block_size,
            BLOCK_N: tl.constexpr, PAGE: tl.constexpr):
    """Flat cache rows (int64 [BLOCK_N]) of key positions ``offs_n = n0 + arange``.

    ``PAGE`` (see ``utils.page_mode``): -1 when the whole tile sits in one cache block
    (``block_size % BLOCK_N == 0``: one block-table read per tile, scalar address math);
    a power of two, the block size as a constant, when a tile spans several blocks (the
    per-row ``// PAGE`` and ``% PAGE`` compile to shifts and masks: 13-20% fewer
    instructions in the key loops at sm_90, benchmarks/sass_report.py); 0 to gather with
    the runtime ``block_size``. ``block_size`` stays a runtime value so the contiguous
    layout (block_size = max_ctx, which varies) does not recompile the kernels.
    """
    if PAGE < 0:
        blk = tl.load(block_tables + seq * bt_stride + n0 // block_size).to(tl.int64)
        rows = blk * block_size + (n0 % block_size) + tl.arange(0, BLOCK_N)
    elif PAGE > 0:
        blk = tl.load(block_tables + seq * bt_stride + offs_n // PAGE,
                      mask=mask_n, other=0).to(tl.int64)
        rows = blk * PAGE + (offs_n % PAGE)
    else:
        # Tile spans several (small) blocks of a runtime size: one block id per key row.
        blk = tl.load(block_tables + seq * bt_stride + offs_n // block_size,
                      mask=mask_n, other=0).to(tl.int64)
        rows = blk * block_size + (offs_n % block_size)
    return rows


@triton.jit
def attend_tile(acc, l_i, m_i, q, k_cache, v_cache, block_tables, seq, kvh, n0,
                pos_q, kv_len, bt_stride, block_size, stride_kr, stride_kh, stride_vr,
                stride_vh, qk_scale,
                HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                PAGE: tl.constexpr, MASK: tl.constexpr):
    """One online-softmax step of queries ``q`` [M, D] over keys ``[n0, n0 + BLOCK_N)``.

    ``stride_vr``/``stride_vh`` equal ``stride_kr``/``stride_kh`` (``check_cache``), so one
    offset addresses both caches; they stay in the signatures for the kernels' callers.

    ``pos_q`` [M] are the queries' absolute positions (causal limit); with
    ``MASK=False`` the caller guarantees every key is valid for every query.
    Returns the updated (acc [M, D] fp32, l_i [M], m_i [M]) in base-2 units.
    """
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_n = offs_n < kv_len
    rows = kv_rows(block_tables, seq, n0, offs_n, mask_n, bt_stride, block_size,
                   BLOCK_N, PAGE)
    # K and V share one layout (``utils.check_cache``): one offset computation for both.
    offs = rows[:, None] * stride_kr + kvh * stride_kh + offs_d[None, :]
    k_ptrs = k_cache + offs
    v_ptrs = v_cache + offs
    if MASK:
        k = tl.load(k_ptrs, mask=mask_n[:, None], other=0.0)  # [BLOCK_N, D]
    else:
        k = tl.load(k_ptrs)
    qk = tl.dot(q, tl.trans(k))  # [M, BLOCK_N] fp32 raw scores
    if MASK:
        # The causal limit alone: a row's position is below kv_len, so keys past kv_len
        # are already excluded for every row that is stored (padding rows, beyond the
        # chunk, see zeros from the masked loads and are never written).
        qk = tl.where(offs_n[None, :] <= pos_q[:, None], qk, float("-inf"))
    # The scale is applied inside the exponent, qk * scale - m in one FFMA per score
    # (the row max scales exactly: scale > 0), instead of a separate multiply of the
    # whole tile: 64 fewer FMULs per thread per 128-key step at sm_90.
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if MASK:
        v = tl.load(v_ptrs, mask=mask_n[:, None], other=0.0)  # [BLOCK_N, D]
    else:
        v = tl.load(v_ptrs)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit
def prefill_tile(q_ptr, o_ptr, part_o, part_lse, k_cache, v_cache, block_tables, seq_lens,
                 cu_seqlens_q, seq, m_tile, head, split, split_len, max_splits,
                 stride_qt, stride_qh, stride_ot, stride_oh, bt_stride, block_size,
                 stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                 NUM_Q_HEADS: tl.constexpr, GQA: tl.constexpr, HEAD_DIM: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGE: tl.constexpr,
                 SPLIT: tl.constexpr):
    """Causal attention of query rows ``[m_tile*BLOCK_M, +BLOCK_M)`` of chunk ``seq``, one head.

    The chunk's query ``i`` sits at position ``prefix + i`` (``prefix = seq_len -
    query_len``) and sees keys ``0..prefix+i``. Keys before the tile's first
    position need no causal mask; only the diagonal band is masked.

    With ``SPLIT`` the tile covers only keys ``[split*split_len, +split_len)`` (split-KV
    prefill: a short chunk over a long prefix has too few row tiles to fill the GPU)
    and writes the normalised partial output and base-2 log-sum-exp of each row to
    ``part_o`` [num_tokens, Hq, max_splits, D] / ``part_lse`` [num_tokens, Hq,
    max_splits] for ``combine_rows``; a row with no visible key in the split gets
    output 0 and log-sum-exp ``NEG_BIG`` (weight 0). ``split_len`` is a multiple of
    ``BLOCK_N``. Returns 1 if the tile had keys to attend to (so the caller may count
    it toward a combine), else 0.
    """
    q_start = tl.load(cu_seqlens_q + seq)
    q_len = tl.load(cu_seqlens_q + seq + 1) - q_start
    m0 = m_tile * BLOCK_M
    run = m0 < q_len
    if SPLIT:  # and the split holds keys some row of the tile sees
        run = run & (split < prefill_tile_splits(seq_lens, cu_seqlens_q, seq, m_tile, split_len,
                                                 BLOCK_M))
    ran = 0
    if run:
        ran = 1
        # The unsplit path is kept exactly as it was before split-KV existed: bounds computed
        # where they are used, so no extra value stays live across the key loop (one more
        # made the compiler spill; benchmarks/compile_report.py).
        kv_len = tl.load(seq_lens + seq)
        prefix = kv_len - q_len
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        mask_m = offs_m < q_len
        tok = (q_start + offs_m).to(tl.int64)
        q = tl.load(q_ptr + tok[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                    mask=mask_m[:, None], other=0.0)  # [BLOCK_M, D]
        kvh = head // GQA
        pos_q = prefix + offs_m  # [BLOCK_M]
        m_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        # Keys before full_end are visible to every row of the tile: no mask.
        full_end = ((prefix + m0) // BLOCK_N) * BLOCK_N
        if SPLIT:
            lo = split * split_len
            for n0 in range(lo, tl.minimum(full_end, lo + split_len), BLOCK_N):
                acc, l_i, m_i = attend_tile(acc, l_i, m_i, q, k_cache, v_cache, block_tables,
                                            seq, kvh, n0, pos_q, kv_len, bt_stride, block_size,
                                            stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                                            HEAD_DIM, BLOCK_N, PAGE, False)
            hi = tl.minimum(tl.minimum(prefix + m0 + BLOCK_M, kv_len), lo + split_len)
            for n0 in range(tl.maximum(full_end, lo), hi, BLOCK_N):
                acc, l_i, m_i = attend_tile(acc, l_i, m_i, q, k_cache, v_cache, block_tables,
                                            seq, kvh, n0, pos_q, kv_len, bt_stride, block_size,
                                            stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                                            HEAD_DIM, BLOCK_N, PAGE, True)
        else:
            for n0 in range(0, full_end, BLOCK_N):
                acc, l_i, m_i = attend_tile(acc, l_i, m_i, q, k_cache, v_cache, block_tables,
                                            seq, kvh, n0, pos_q, kv_len, bt_stride, block_size,
                                            stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                                            HEAD_DIM, BLOCK_N, PAGE, False)
            hi = tl.minimum(prefix + m0 + BLOCK_M, kv_len)
            for n0 in range(full_end, hi, BLOCK_N):
                acc, l_i, m_i = attend_tile(acc, l_i, m_i, q, k_cache, v_cache, block_tables,
                                            seq, kvh, n0, pos_q, kv_len, bt_stride, block_size,
                                            stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                                            HEAD_DIM, BLOCK_N, PAGE, True)
        if SPLIT:
            seen = l_i > 0.0  # rows before the split's first key see none of it
            out = acc / tl.where(seen, l_i, 1.0)[:, None]
            row = (tok * NUM_Q_HEADS + head) * max_splits + split  # [BLOCK_M] int64
            tl.store(part_o + row[:, None] * HEAD_DIM + offs_d[None, :], out,
                     mask=mask_m[:, None])
            lse = m_i + tl.math.log2(tl.where(seen, l_i, 1.0))
            tl.store(part_lse + row, tl.where(seen, lse, NEG_BIG), mask=mask_m)
        else:
            out = acc / l_i[:, None]
            tl.store(o_ptr + tok[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
                     out.to(o_ptr.dtype.element_ty), mask=mask_m[:, None])
    return ran


@triton.jit
def prefill_tile_splits(seq_lens, cu_seqlens_q, seq, m_tile, split_len, BLOCK_M: tl.constexpr):
    """Number of KV splits that hold keys for row tile ``m_tile`` of chunk ``seq``."""
    q_start = tl.load(cu_seqlens_q + seq)
    q_len = tl.load(cu_seqlens_q + seq + 1) - q_start
    kv_len = tl.load(seq_lens + seq)
    hi = tl.minimum(kv_len - q_len + m_tile * BLOCK_M + BLOCK_M, kv_len)
    return tl.cdiv(hi, split_len)


@triton.jit
def combine_rows(o_ptr, part_o, part_lse, seq_lens, cu_seqlens_q, seq, m_tile, head,
                 split_len, max_splits, stride_ot, stride_oh,
                 NUM_Q_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                 SUB_M: tl.constexpr, CACHE: tl.constexpr):
    """Merge the split partials of query rows ``[m_tile*BLOCK_M, +BLOCK_M)`` of chunk ``seq``.

    Row ``i`` (position ``prefix + i``) has keys in splits ``0..(prefix+i)//split_len``;
    later splits are not read for it. Online merge in base 2 over the splits, ``SUB_M``
    rows at a time (inside the register-capped POD kernel a whole 64-row fp32 tile
    would spill). ``CACHE``: load cache modifier (``.cg`` for partials of the same launch).
    """
    q_start = tl.load(cu_seqlens_q + seq)
    q_len = tl.load(cu_seqlens_q + seq + 1) - q_start
    kv_len = tl.load(seq_lens + seq)
    prefix = kv_len - q_len
    offs_d = tl.arange(0, HEAD_DIM)
    for sub in tl.static_range(BLOCK_M // SUB_M):
        m0 = m_tile * BLOCK_M + sub * SUB_M
        if m0 < q_len:
            offs_m = m0 + tl.arange(0, SUB_M)
            mask_m = offs_m < q_len
            tok = (q_start + offs_m).to(tl.int64)
            row_splits = (prefix + offs_m) // split_len + 1  # [SUB_M]
            n_splits = tl.cdiv(tl.minimum(prefix + m0 + SUB_M, kv_len), split_len)
            base = (tok * NUM_Q_HEADS + head) * max_splits  # [SUB_M]
            m = tl.full([SUB_M], NEG_BIG, dtype=tl.float32)
            den = tl.zeros([SUB_M], dtype=tl.float32)
            acc = tl.zeros([SUB_M, HEAD_DIM], dtype=tl.float32)
            for s in range(0, n_splits):
                valid = mask_m & (s < row_splits)
                lse = tl.load(part_lse + base + s, mask=valid, other=NEG_BIG,
                              cache_modifier=CACHE)
                o = tl.load(part_o + (base + s)[:, None] * HEAD_DIM + offs_d[None, :],
                            mask=valid[:, None], other=0.0, cache_modifier=CACHE)  # [SUB_M, D]
                m_new = tl.maximum(m, lse)
                alpha = tl.math.exp2(m - m_new)
                w = tl.where(valid, tl.math.exp2(lse - m_new), 0.0)
                acc = acc * alpha[:, None] + o * w[:, None]
                den = den * alpha + w
                m = m_new
            out = acc / tl.maximum(den, 1e-30)[:, None]
            tl.store(o_ptr + tok[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
                     out.to(o_ptr.dtype.element_ty), mask=mask_m[:, None])


@triton.jit
def decode_tile(q_ptr, o_ptr, part_o, part_lse, k_cache, v_cache, block_tables, seq_lens,
                cu_seqlens_q, seq, kvh, split, split_len, max_splits,
                stride_qt, stride_qh, stride_ot, stride_oh, bt_stride, block_size,
                stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                NUM_Q_HEADS: tl.constexpr,
                GQA: tl.constexpr, G_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                BLOCK_N: tl.constexpr, PAGE: tl.constexpr,
                DIRECT: tl.constexpr):
    """Decode attention of the ``GQA`` query heads of KV head ``kvh`` over one KV split.

    GQA packing: the group's query heads form the M dimension of one [G_PAD, D]
    tile, so each K/V row is read once for all of them. With ``DIRECT`` (a
    single split) the normalised result goes straight to ``o_ptr``; otherwise the
    split's normalised partial output and base-2 log-sum-exp go to ``part_o``
    [num_decodes, Hq, max_splits, D] / ``part_lse`` [num_decodes, Hq, max_splits].
    Returns 1 if the split held any keys (so the caller may count it), else 0.
    """
    kv_len = tl.load(seq_lens + seq)
    start = split * split_len
    ran = 0
    if start < kv_len:
        ran = 1
        end = tl.minimum(start + split_len, kv_len)
        tok = tl.load(cu_seqlens_q + seq).to(tl.int64)
        offs_g = tl.arange(0, G_PAD)
        offs_d = tl.arange(0, HEAD_DIM)
        mask_g = offs_g < GQA
        heads = kvh * GQA + offs_g  # [G_PAD]
        q = tl.load(q_ptr + tok * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                    mask=mask_g[:, None], other=0.0)  # [G_PAD, D]
        pos_q = tl.full([G_PAD], 0, dtype=tl.int32) + (kv_len - 1)
        m_i = tl.full([G_PAD], NEG_BIG, dtype=tl.float32)
        l_i = tl.zeros([G_PAD], dtype=tl.float32)
        acc = tl.zeros([G_PAD, HEAD_DIM], dtype=tl.float32)
        full_end = start + ((end - start) // BLOCK_N) * BLOCK_N
        for n0 in range(start, full_end, BLOCK_N):
            acc, l_i, m_i = attend_tile(acc, l_i, m_i, q, k_cache, v_cache, block_tables,
                                        seq, kvh, n0, pos_q, kv_len, bt_stride, block_size,
                                        stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                                        HEAD_DIM, BLOCK_N, PAGE, False)
        for n0 in range(full_end, end, BLOCK_N):
            acc, l_i, m_i = attend_tile(acc, l_i, m_i, q, k_cache, v_cache, block_tables,
                                        seq, kvh, n0, pos_q, kv_len, bt_stride, block_size,
                                        stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                                        HEAD_DIM, BLOCK_N, PAGE, True)
        out = acc / l_i[:, None]
        if DIRECT:
            tl.store(o_ptr + tok * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                     out.to(o_ptr.dtype.element_ty), mask=mask_g[:, None])
        else:
            row = (seq * NUM_Q_HEADS + heads).to(tl.int64) * max_splits + split  # [G_PAD]
            tl.store(part_o + row[:, None] * HEAD_DIM + offs_d[None, :], out,
                     mask=mask_g[:, None])
            tl.store(part_lse + row, m_i + tl.math.log2(l_i), mask=mask_g)
    return ran


@triton.jit
def combine_head(o_ptr, part_o, part_lse, seq_lens, cu_seqlens_q, seq, head, split_len,
                 max_splits, stride_ot, stride_oh,
                 NUM_Q_HEADS: tl.constexpr, SPLITS_BLOCK: tl.constexpr,
                 HEAD_DIM: tl.constexpr, CACHE: tl.constexpr):
    """Merge one head's split partials: out = sum_s 2^(lse_s - m) o_s / sum_s 2^(lse_s - m).

    The splits are visited ``SPLITS_BLOCK`` at a time (a max pass, then a weighted
    sum), so the number of splits is a runtime value: no recompilation when it
    changes from one batch to the next. ``CACHE`` is the load cache modifier:
    ``.cg`` (bypass L1) when partials were written by other programs of the same launch.
    """
    kv_len = tl.load(seq_lens + seq)
    n_splits = tl.cdiv(kv_len, split_len)
    tok = tl.load(cu_seqlens_q + seq).to(tl.int64)
    offs_s = tl.arange(0, SPLITS_BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    base = (seq * NUM_Q_HEADS + head).to(tl.int64) * max_splits  # first partial row
    m = tl.max(tl.full([SPLITS_BLOCK], NEG_BIG, dtype=tl.float32), 0)
    for s0 in range(0, n_splits, SPLITS_BLOCK):
        mask_s = s0 + offs_s < n_splits
        lse = tl.load(part_lse + base + s0 + offs_s, mask=mask_s, other=NEG_BIG,
                      cache_modifier=CACHE)
        m = tl.maximum(m, tl.max(lse, 0))
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    den = tl.sum(tl.zeros([SPLITS_BLOCK], dtype=tl.float32), 0)
    for s0 in range(0, n_splits, SPLITS_BLOCK):
        mask_s = s0 + offs_s < n_splits
        row = base + s0 + offs_s  # [SPLITS_BLOCK]
        lse = tl.load(part_lse + row, mask=mask_s, other=NEG_BIG, cache_modifier=CACHE)
        w = tl.where(mask_s, tl.math.exp2(lse - m), 0.0)  # [SPLITS_BLOCK]
        o = tl.load(part_o + row[:, None] * HEAD_DIM + offs_d[None, :], mask=mask_s[:, None],
                    other=0.0, cache_modifier=CACHE)  # [SPLITS_BLOCK, D]
        acc += tl.sum(o * w[:, None], 0)
        den += tl.sum(w, 0)
    out = acc / tl.maximum(den, 1e-30)  # den >= 1 with any split; 0 for an empty (padding) row
    tl.store(o_ptr + tok * stride_ot + head * stride_oh + offs_d, out.to(o_ptr.dtype.element_ty))
