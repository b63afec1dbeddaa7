"""POD-Attention: prefill and decode attention of a hybrid batch in one launch.

How a program picks its work (after POD-Attention, arXiv 2410.18038, in Triton):

1. It reads the id of the SM it landed on (``%smid``; under the interpreter a
   stand-in ``program_id % NUM_SMS``) and takes a ticket from that SM's atomic
   counter: the k-th program to start on an SM gets ticket k.
2. The ticket and a ratio ``ratio_p : ratio_d`` decide the role: the ticket
   sequence is spread Bresenham-style so that every SM runs prefill and decode
   programs interleaved in that ratio (``even`` 50:50, or ``proportional`` to
   the number of tiles of each side, which drains both sides at the same pace).
   Tickets count programs *started*, and a prefill tile outlives many decode
   tiles, so an SM can end up running two prefill programs at once; the
   ``occupancy`` policy instead keeps per-SM counts of the programs of each role
   *running now* and picks the role that keeps the SM at 1:1.
3. It claims the next tile of its side from a global atomic counter; if that
   side is exhausted it claims from the other side. The launch has exactly
   ``num_prefill_tiles + num_decode_tiles`` programs, so every program gets a
   tile and every tile is run once.
4. Decode tiles are flash-decoding splits; the last split of a (sequence, KV
   head) to finish combines the partials in the same launch (a per-pair arrival
   counter, which that program resets to zero).
5. The last program to finish (a done counter) zeroes the per-SM and global
   counters, so the persistent workspace is ready for the next launch without
   a memset or an allocation. One workspace per device; launches that share it
   must be stream-ordered.

Resource budget (H100, D=128, bf16; Triton's ``n_regs`` / ``metadata.shared``
via benchmarks/compile_report.py, see docs/benchmarks-attention.md): both roles
share one compiled kernel, so registers and shared memory are the max of the
two paths and ``num_warps`` is common to both. Default: 4 warps, registers
capped at 128 a thread (65536 / (128 x 128) = 4 programs by registers), 48 KiB
shared memory (4 x 49 KiB < 228 KiB), so four programs, e.g. two prefill and two
decode, are resident on every SM at once.
"""
import torch
import triton
import triton.language as tl

from .prefill import resolve_prefill_splits
from .tiles import combine_head, combine_rows, decode_tile, prefill_tile, prefill_tile_splits
from .utils import (LOG2E, SPLITS_BLOCK, check_cache, device_sms, even_splits, interpreting,
                    next_pow2, page_mode, split_partials, split_plan)


def pod_config(head_dim: int) -> dict:
    """One config for both roles: 4 warps, registers capped at 128 a thread.

    Picked on an H100 from 7 shapes x 2 policies (benchmarks/attention.py
    ``tune_pod``, geometric mean over a decode-heavy and a prefill-heavy batch):
    64-row prefill tiles over 32-key steps, 64-key decode steps, 2 stages;
    128 registers (14 bytes of stack spill), 48 KiB shared memory -> 4 programs
    per SM, so two prefill and two decode programs can share an SM. The uncapped
    64x64 shape (200 registers, 80 KiB) fits only 2 per SM and was 8-15% slower.
    """
    return dict(BLOCK_M=64, BLOCK_N_P=32, BLOCK_N_D=64, num_warps=4, num_stages=2,
                maxnreg=128, programs_per_sm=4)


@triton.jit
def _smid(pid, NUM_SMS: tl.constexpr, INTERPRET: tl.constexpr):
    if INTERPRET:
        sm = pid % NUM_SMS
    else:
        sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32,
                                       is_pure=False, pack=1)
    return sm


# Every per-batch integer is left unspecialised: with Triton's default (specialise ints
# equal to 1 or divisible by 16) these nine values made a new compilation of the kernel
# likely on any step of a serving run.
@triton.jit(do_not_specialize=["num_decodes", "num_prefills", "num_m_tiles", "num_p_tiles",
                               "num_d_tiles", "split_len", "max_splits", "p_split_len",
                               "p_splits", "ratio_p", "ratio_total", "bt_stride"])
def _pod_kernel(q_ptr, o_ptr, part_o, part_lse, part_o_p, part_lse_p, k_cache, v_cache,
                block_tables, seq_lens, cu_seqlens_q, counters, split_counters,
                num_decodes, num_prefills, num_m_tiles, num_p_tiles, num_d_tiles,
                split_len, max_splits, p_split_len, p_splits, ratio_p, ratio_total,
                stride_qt, stride_qh, stride_ot, stride_oh, bt_stride, block_size,
                stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, SPLIT: tl.constexpr,
                SPLITS_BLOCK: tl.constexpr, GQA: tl.constexpr, G_PAD: tl.constexpr,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N_P: tl.constexpr,
                BLOCK_N_D: tl.constexpr, PAGE_P: tl.constexpr, PAGE_D: tl.constexpr,
                NUM_SMS: tl.constexpr, CTR_PAD: tl.constexpr, INTERPRET: tl.constexpr,
                OCCUPANCY: tl.constexpr, SPLIT_P: tl.constexpr):
    # counters (int32): [0, NUM_SMS) per-SM tickets, then next prefill tile,
    # next decode tile, programs done; then per-SM running prefill programs and
    # per-SM running decode programs (OCCUPANCY policy; they return to zero by
    # themselves: every +1 at a program's start has its -1 at its end).
    pid = tl.program_id(0)
    sm = _smid(pid, NUM_SMS, INTERPRET)
    ticket = tl.atomic_add(counters + sm, 1)
    run_p_ctr = counters + NUM_SMS + 3 + sm
    run_d_ctr = counters + 2 * NUM_SMS + 3 + sm
    if OCCUPANCY:
        # Role by what runs on this SM now: become prefill iff the SM's prefill
        # share, counting this program, stays within ratio_p / ratio_total.
        run_p = tl.atomic_add(run_p_ctr, 0)
        run_d = tl.atomic_add(run_d_ctr, 0)
        want_p = run_p * ratio_total < (run_p + run_d + 1) * ratio_p
    else:
        # Bresenham spread: ticket k is prefill iff floor((k+1)*p/T) > floor(k*p/T).
        want_p = ((ticket + 1) * ratio_p) // ratio_total > (ticket * ratio_p) // ratio_total
    if want_p:
        tile = tl.atomic_add(counters + NUM_SMS, 1)
        is_p = tile < num_p_tiles
        if tile >= num_p_tiles:  # prefill side exhausted: take a decode tile
            tile = tl.atomic_add(counters + NUM_SMS + 1, 1)
    else:
        tile = tl.atomic_add(counters + NUM_SMS + 1, 1)
        is_p = tile >= num_d_tiles
        if tile >= num_d_tiles:  # decode side exhausted: take a prefill tile
            tile = tl.atomic_add(counters + NUM_SMS, 1)

    if OCCUPANCY:
        if is_p:
            tl.atomic_add(run_p_ctr, 1)
        else:
            tl.atomic_add(run_d_ctr, 1)

    if is_p:
        # Prefill tile id -> (m tile, chunk, KV split, head), heads fastest (L2 sharing
        # of a KV group), heaviest row tiles first.
        head = tile % NUM_Q_HEADS
        rest = tile // NUM_Q_HEADS
        p_split = rest % p_splits
        rest = rest // p_splits
        seq = num_decodes + rest % num_prefills
        m_tile = num_m_tiles - 1 - rest // num_prefills
        ran = prefill_tile(q_ptr, o_ptr, part_o_p, part_lse_p, k_cache, v_cache, block_tables,
                           seq_lens, cu_seqlens_q, seq, m_tile, head, p_split, p_split_len,
                           p_splits, stride_qt, stride_qh, stride_ot, stride_oh, bt_stride,
                           block_size, stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                           NUM_Q_HEADS, GQA, HEAD_DIM, BLOCK_M, BLOCK_N_P, PAGE_P, SPLIT_P)
        if SPLIT_P:
            if ran > 0:
                # Split-KV prefill: the last split of a (row tile, head) to finish merges
                # the tile's partials (arrival counters after the decode pairs' ones).
                tl.debug_barrier()
                ctr = split_counters + num_decodes * NUM_KV_HEADS + rest * NUM_Q_HEADS + head
                arrived = tl.atomic_add(ctr, 1, sem="acq_rel")
                n_splits = prefill_tile_splits(seq_lens, cu_seqlens_q, seq, m_tile, p_split_len,
                                               BLOCK_M)
                if arrived == n_splits - 1:
                    tl.atomic_xchg(ctr, 0)
                    combine_rows(o_ptr, part_o_p, part_lse_p, seq_lens, cu_seqlens_q, seq,
                                 m_tile, head, p_split_len, p_splits, stride_ot, stride_oh,
                                 NUM_Q_HEADS, HEAD_DIM, BLOCK_M, 8, ".cg")
    else:
        # Decode tile id -> (sequence, KV head, split), splits fastest.
        split = tile % max_splits
        pair = tile // max_splits
        kvh = pair % NUM_KV_HEADS
        seq = pair // NUM_KV_HEADS
        ran = decode_tile(q_ptr, o_ptr, part_o, part_lse, k_cache, v_cache, block_tables,
                          seq_lens, cu_seqlens_q, seq, kvh, split, split_len, max_splits,
                          stride_qt, stride_qh, stride_ot, stride_oh, bt_stride, block_size,
                          stride_kr, stride_kh, stride_vr, stride_vh, qk_scale,
                          NUM_Q_HEADS, GQA, G_PAD, HEAD_DIM, BLOCK_N_D, PAGE_D, not SPLIT)
        if SPLIT:
            if ran > 0:
                # All threads' partial stores precede the release of the arrival count.
                tl.debug_barrier()
                arrived = tl.atomic_add(split_counters + pair, 1, sem="acq_rel")
                n_splits = tl.cdiv(tl.load(seq_lens + seq), split_len)
                if arrived == n_splits - 1:
                    tl.atomic_xchg(split_counters + pair, 0)
                    for g in range(GQA):
                        combine_head(o_ptr, part_o, part_lse, seq_lens, cu_seqlens_q, seq,
                                     kvh * GQA + g, split_len, max_splits, stride_ot, stride_oh,
                                     NUM_Q_HEADS, SPLITS_BLOCK, HEAD_DIM, ".cg")

    if OCCUPANCY:
        if is_p:
            tl.atomic_add(run_p_ctr, -1)
        else:
            tl.atomic_add(run_d_ctr, -1)
    done = tl.atomic_add(counters + NUM_SMS + 2, 1)
    if done == num_p_tiles + num_d_tiles - 1:
        offs = tl.arange(0, CTR_PAD)
        tl.store(counters + offs, tl.zeros([CTR_PAD], dtype=tl.int32), mask=offs < NUM_SMS + 3)


class PodWorkspace:
    """Persistent per-device counters: zeroed once, reset by each launch's last program."""

    def __init__(self) -> None:
        self._counters: dict[torch.device, torch.Tensor] = {}
        self._split: dict[torch.device, torch.Tensor] = {}

    def counters(self, device: torch.device, n: int) -> torch.Tensor:  # int32 [n]
        t = self._counters.get(device)
        if t is None or t.numel() < n:
            t = torch.zeros(n, dtype=torch.int32, device=device)
            self._counters[device] = t
        return t

    def split_counters(self, device: torch.device, n: int) -> torch.Tensor:  # int32 [>= n]
        t = self._split.get(device)
        if t is None or t.numel() < n:
            # Grow geometrically so steady-state serving never allocates.
            t = torch.zeros(max(n, 2 * (0 if t is None else t.numel()), 1024),
                            dtype=torch.int32, device=device)
            self._split[device] = t
        return t


_WORKSPACE = PodWorkspace()


def pod_ratio(num_p_tiles: int, num_d_tiles: int, policy: str) -> tuple[int, int]:
    """(ratio_p, ratio_total): ``"even"`` 1:1 tickets, ``"proportional"`` tickets in the
    ratio of tile counts, ``"occupancy"`` 1:1 in programs running on the SM at once."""
    if policy in ("even", "occupancy"):
        return 1, 2
    if policy != "proportional":
        raise ValueError(f"unknown POD policy {policy!r}")
    total = 64
    p = round(total * num_p_tiles / max(1, num_p_tiles + num_d_tiles))
    return min(max(p, 1), total - 1), total


def pod_attention(
    q: torch.Tensor,  # [num_tokens, num_q_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # int32 [num_seqs, max_blocks_per_seq]
    seq_lens: torch.Tensor,  # int32 [num_seqs]
    cu_seqlens_q: torch.Tensor,  # int32 [num_seqs + 1]
    num_decodes: int,
    max_query_len: int,
    max_decode_seq_len: int,
    scale: float | None = None,
    out: torch.Tensor | None = None,  # [num_tokens, num_q_heads, head_dim]
    policy: str = "even",
    num_splits: int | None = None,
    config: dict | None = None,
    workspace: PodWorkspace | None = None,
    max_prefill_seq_len: int | None = None,
    prefill_splits: int | None = None,
) -> torch.Tensor:  # [num_tokens, num_q_heads, head_dim]
    """Hybrid batch attention in one launch: decodes (first ``num_decodes`` seqs) and
    prefill chunks (the rest) computed by co-running programs on every SM.

    ``max_query_len`` bounds the prefill chunks' query lengths and
    ``max_decode_seq_len`` the decodes' contexts (host ints: they size the grid).
    Needs at least one prefill chunk and one decode; callers with a single side
    use ``prefill_attention`` or ``decode_attention``.

    ``max_prefill_seq_len`` (host int: the chunks' longest context, prefix included)
    lets the prefill side split its keys (``prefill_split_plan``, sized for the half of
    each SM's programs the prefill role gets), the last split of each row tile
    merging the partials in the same launch; ``prefill_splits`` forces a count.
    """
    check_cache(k_cache, v_cache)
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    block_size = k_cache.shape[1]
    num_prefills = seq_lens.shape[0] - num_decodes
    if num_decodes <= 0 or num_prefills <= 0:
        raise ValueError("pod_attention needs both decodes and prefill chunks")
    if num_q_heads % num_kv_heads or head_dim not in (64, 128) or q.stride(2) != 1:
        raise ValueError("need num_q_heads % num_kv_heads == 0, head_dim in (64, 128), "
                         "contiguous head_dim")
    if out is None:
        out = torch.empty_like(q)
    cfg = dict(pod_config(head_dim), **(config or {}))
    sms = device_sms(q)
    bm, bnd = cfg["BLOCK_M"], cfg["BLOCK_N_D"]
    num_m_tiles = triton.cdiv(max_query_len, bm)
    num_p_tiles = num_m_tiles * num_prefills * num_q_heads
    if num_splits is None:
        # The prefill side already fills the GPU: split decodes only until there is
        # about one decode tile per SM (more splits measured slower on an H100:
        # 0.80 vs 0.91 ms for 32 decodes x 8K next to a 1K chunk).
        num_splits, split_len = split_plan(num_decodes, num_kv_heads, max_decode_seq_len,
                                           max(1, sms // 4), bnd)
    else:
        num_splits, split_len = even_splits(max_decode_seq_len, num_splits, bnd)
    num_d_tiles = num_decodes * num_kv_heads * num_splits
    # Tickets give the prefill role about half of each SM's resident programs.
    p_splits, p_split_len = resolve_prefill_splits(
        num_p_tiles, max_prefill_seq_len, prefill_splits, sms * cfg.get("programs_per_sm", 4) // 2,
        cfg["BLOCK_N_P"], num_tokens - num_decodes, num_q_heads, head_dim)
    num_p_tiles *= p_splits
    gqa = num_q_heads // num_kv_heads
    scale = head_dim ** -0.5 if scale is None else scale
    ws = workspace or _WORKSPACE
    counters = ws.counters(q.device, 3 * sms + 3)
    split_ctr = ws.split_counters(q.device, num_decodes * num_kv_heads
                                  + (num_p_tiles // p_splits if p_splits > 1 else 0))
    part_o, part_lse = split_partials(num_decodes, num_q_heads, num_splits, head_dim, out)
    part_o_p, part_lse_p = split_partials(num_tokens, num_q_heads, p_splits, head_dim, out)  # token rows
    ratio_p, ratio_total = pod_ratio(num_p_tiles, num_d_tiles, policy)
    interp = interpreting()
    kw = {} if interp else dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if cfg.get("maxnreg") and not interp:
        kw["maxnreg"] = cfg["maxnreg"]  # register cap: decides how many programs share an SM
    _pod_kernel[(num_p_tiles + num_d_tiles,)](
        q, out, part_o, part_lse, part_o_p, part_lse_p, k_cache, v_cache, block_tables,
        seq_lens, cu_seqlens_q, counters, split_ctr,
        num_decodes, num_prefills, num_m_tiles, num_p_tiles, num_d_tiles,
        split_len, num_splits, p_split_len, p_splits, ratio_p, ratio_total,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        block_size, k_cache.stride(1), k_cache.stride(2), v_cache.stride(1), v_cache.stride(2),
        scale * LOG2E,
        NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=num_kv_heads, SPLIT=num_splits > 1,
        SPLITS_BLOCK=SPLITS_BLOCK, GQA=gqa, G_PAD=max(16, next_pow2(gqa)),
        HEAD_DIM=head_dim, BLOCK_M=bm, BLOCK_N_P=cfg["BLOCK_N_P"], BLOCK_N_D=bnd,
        PAGE_P=page_mode(block_size, cfg["BLOCK_N_P"]),
        PAGE_D=page_mode(block_size, bnd),
        NUM_SMS=sms, CTR_PAD=next_pow2(sms + 3), INTERPRET=interp,
        OCCUPANCY=policy == "occupancy", SPLIT_P=p_splits > 1, **kw)
    return out
