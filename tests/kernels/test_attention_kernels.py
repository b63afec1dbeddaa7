"""Attention kernels against their torch references.

CPU: Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py when CUDA is absent),
float32, tiny shapes. GPU (skipped without CUDA): bf16/fp16 against a float64
reference, paged vs contiguous, POD vs serial. Inputs are drawn fresh each run;
outputs are poisoned with NaN before every call so an unwritten row fails.
"""

import torch


import pytest  # noqa: E402

from podserve.attention.base import AttentionMetadata  # noqa: E402
from podserve.attention.pod import PodAttention, should_fuse  # noqa: E402
from podserve.attention.triton import TritonAttention  # noqa: E402
from podserve.kernels import (decode_attention, pod_attention, prefill_attention,  # noqa: E402
                              write_kv)
from podserve.kernels.pod import PodWorkspace  # noqa: E402
from podserve.kernels.reference import attention_ref, write_kv_ref  # noqa: E402

from tests.kernels.attn_batch import make_batch, to_layout  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
# Interpreter runs fp32 exactly; on a GPU fp32 dots would be tf32, so CPU-style
# tests use fp16 there (the float64 reference bounds the error either way).
DT = torch.float16 if CUDA else torch.float32
TOL = 1e-2 if CUDA else 1e-4


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all(), "unwritten (NaN) or non-finite output rows"
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


def poisoned(q: torch.Tensor) -> torch.Tensor:
    return torch.full_like(q, float("nan"))


def meta_of(b) -> AttentionMetadata:
    nd = b.num_decodes
    return AttentionMetadata(
        num_decodes=nd, num_prefills=len(b.query_lens) - nd,
        num_prefill_tokens=sum(b.query_lens[nd:]), cu_seqlens_q=b.cu_seqlens_q,
        seq_lens=b.seq_lens, block_tables=b.block_tables, slot_mapping=b.slot_mapping,
        query_lens_cpu=b.query_lens, seq_lens_cpu=b.seq_lens_list,
        max_query_len=max(b.query_lens), max_seq_len=max(b.seq_lens_list))


LAYOUTS = [16, 64, None]  # paged (tile spans blocks), paged (tile-aligned), contiguous


# ----------------------------------------------------------------------------- write_kv
@pytest.mark.parametrize("block_size", LAYOUTS)
def test_write_kv_matches_reference(block_size):
    b = make_batch([17, 64], [(0, 5), (30, 40)], 4, 2, 64, block_size, DT, DEV)
    b.slot_mapping[3] = -1  # a padding token must leave the cache untouched
    before = b.k_cache.clone()
    kc, vc = b.k_cache.clone(), b.v_cache.clone()
    write_kv(b.k, b.v, b.k_cache, b.v_cache, b.slot_mapping)
    write_kv_ref(b.k, b.v, kc, vc, b.slot_mapping)
    assert not torch.equal(b.k_cache, before)
    assert torch.equal(b.k_cache, kc) and torch.equal(b.v_cache, vc)


# ----------------------------------------------------------------------------- prefill
# (prefix, chunk) per sequence: a prompt's first chunk, a middle chunk, the last
# (short) chunk, chunks crossing block and tile boundaries.
PREFILL_CASES = {
    "start": [(0, 37)],
    "middle": [(64, 48), (130, 33)],
    "end": [(200, 9), (0, 1)],
}


PREFILL_GRID = [(g, bs, "middle") for g in (1, 4, 8) for bs in LAYOUTS] + [
    (g, bs, pos) for pos in ("start", "end") for g, bs in ((1, None), (4, 16), (8, 64))]


@pytest.mark.parametrize("gqa,block_size,position", PREFILL_GRID)
def test_prefill_matches_reference(gqa, block_size, position):
    hkv = 1 if gqa == 8 else 2
    b = make_batch([23], PREFILL_CASES[position], hkv * gqa, hkv, 64, block_size, DT, DEV)
    out = poisoned(b.q)
    prefill_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                      b.num_decodes, b.max_query_len, out=out)
    ref = attention_ref(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                        seqs=range(1, len(b.query_lens)))
    assert torch.isnan(out[:1]).all(), "prefill wrote a decode row"
    assert rel_err(out[1:], ref[1:]) < TOL


def test_prefill_head_dim_128_and_small_tiles():
    b = make_batch([], [(45, 70), (0, 20)], 4, 1, 128, 16, DT, DEV)
    ref = attention_ref(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q)
    for cfg in (None, dict(BLOCK_M=16, BLOCK_N=16)):
        out = poisoned(b.q)
        prefill_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens,
                          b.cu_seqlens_q, 0, b.max_query_len, out=out, config=cfg)
        assert rel_err(out, ref) < TOL


# Split-KV prefill: splits that end before some rows' first visible key, that start past
# a whole tile's causal end, a chunk at the prompt's start, a one-token chunk.
SPLIT_CASES = [(16, 2), (64, 3), (None, 7)]


@pytest.mark.parametrize("block_size,num_splits", SPLIT_CASES)
def test_prefill_split_kv_matches_reference(block_size, num_splits):
    b = make_batch([9], [(150, 45), (0, 70), (31, 1)], 8, 2, 64, block_size, DT, DEV)
    out = poisoned(b.q)
    prefill_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                      b.num_decodes, b.max_query_len, out=out, config=dict(BLOCK_M=16, BLOCK_N=16),
                      max_seq_len=max(b.seq_lens_list[1:]), num_splits=num_splits)
    ref = attention_ref(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                        seqs=range(1, 4))
    assert torch.isnan(out[:1]).all(), "split prefill wrote a decode row"
    assert rel_err(out[1:], ref[1:]) < TOL


def test_prefill_split_needs_context_length():
    b = make_batch([], [(40, 8)], 4, 2, 64, 16, DT, DEV)
    with pytest.raises(ValueError, match="context length"):
        prefill_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                          0, b.max_query_len, num_splits=2)


def test_prefill_split_plan_splits_only_small_grids():
    from podserve.kernels.prefill import prefill_split_plan

    # 16 heads x 4 row tiles on 132 SMs, 16.9K keys: two splits fill the GPU.
    assert prefill_split_plan(64, 16896, 132, 128) == (2, 8448)
    # A grid that already fills the GPU, or a short context, is left alone.
    assert prefill_split_plan(512, 6144, 132, 128)[0] == 1
    assert prefill_split_plan(8, 300, 132, 128)[0] <= 3
    for tiles in (1, 7, 40, 100, 131):
        n, length = prefill_split_plan(tiles, 10000, 132, 64)
        assert length % 64 == 0 and -(-10000 // length) == n and tiles * n <= 4 * 132


# ----------------------------------------------------------------------------- decode
# Latin square: every split choice meets every GQA ratio and every layout once.
DECODE_GRID = [(g, bs, (1, 3, None)[(i + j) % 3])
               for i, g in enumerate((1, 4, 8)) for j, bs in enumerate(LAYOUTS)]


@pytest.mark.parametrize("gqa,block_size,num_splits", DECODE_GRID)
def test_decode_matches_reference(gqa, block_size, num_splits):
    hkv = 1 if gqa == 8 else 2
    # ragged: a 1-token context, exact tile/block multiples, one past them
    lens = [1, 64, 65, 129, 200]
    b = make_batch(lens, [(10, 7)], hkv * gqa, hkv, 64, block_size, DT, DEV)
    out = poisoned(b.q)
    decode_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                     b.num_decodes, b.max_decode_len, out=out, num_splits=num_splits)
    nd = b.num_decodes
    ref = attention_ref(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                        seqs=range(nd))
    assert torch.isnan(out[nd:]).all(), "decode wrote a prefill row"
    assert rel_err(out[:nd], ref[:nd]) < TOL


def test_decode_combines_more_splits_than_one_combine_tile():
    # 21 splits of 64 keys: the combine step walks the partials in two SPLITS_BLOCK tiles.
    lens = [1, 700, 1300]
    b = make_batch(lens, [], 4, 2, 64, 16, DT, DEV)
    out = poisoned(b.q)
    decode_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                     b.num_decodes, b.max_decode_len, out=out, num_splits=40)
    ref = attention_ref(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q)
    assert rel_err(out, ref) < TOL


def test_pod_combines_more_splits_than_one_combine_tile():
    b = make_batch([3, 1200], [(5, 20)], 4, 2, 64, 16, DT, DEV)
    out = poisoned(b.q)
    pod_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                  b.num_decodes, b.max_query_len, b.max_decode_len, out=out, num_splits=40,
                  workspace=PodWorkspace())
    ref = attention_ref(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q)
    assert rel_err(out, ref) < TOL


# ----------------------------------------------------------------------------- POD
@pytest.mark.parametrize("gqa,block_size,policy,num_splits", [
    (1, 16, "even", 1), (4, None, "proportional", 3), (8, 16, "proportional", None),
    (4, 16, "occupancy", None), (1, None, "occupancy", 3), (8, None, "even", 1)])
def test_pod_equals_reference_and_serial(gqa, block_size, policy, num_splits):
    hkv = 1 if gqa == 8 else 2
    b = make_batch([5, 64, 130], [(70, 40), (0, 19)], hkv * gqa, hkv, 64, block_size, DT, DEV)
    ws = PodWorkspace()
    out = poisoned(b.q)
    pod_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                  b.num_decodes, b.max_query_len, b.max_decode_len, out=out, policy=policy,
                  num_splits=num_splits, workspace=ws)
    ref = attention_ref(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q)
    assert rel_err(out, ref) < TOL
    ser = poisoned(b.q)
    decode_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                     b.num_decodes, b.max_decode_len, out=ser)
    prefill_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                      b.num_decodes, b.max_query_len, out=ser)
    assert rel_err(out, ser) < TOL
    # The last program reset every counter: the workspace is ready for the next launch.
    assert int(ws.counters(b.q.device, 1).abs().sum()) == 0
    assert int(ws.split_counters(b.q.device, 1).abs().sum()) == 0


@pytest.mark.parametrize("block_size,prefill_splits", [(16, 2), (None, 5)])
def test_pod_split_prefill_equals_reference(block_size, prefill_splits):
    b = make_batch([5, 130], [(150, 45), (0, 33)], 8, 2, 64, block_size, DT, DEV)
    ws = PodWorkspace()
    for _ in range(2):  # the second launch finds the arrival counters reset by the first
        out = poisoned(b.q)
        pod_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                      b.num_decodes, b.max_query_len, b.max_decode_len, out=out, num_splits=2,
                      workspace=ws, config=dict(BLOCK_M=16, BLOCK_N_P=16, BLOCK_N_D=16),
                      max_prefill_seq_len=max(b.seq_lens_list[2:]), prefill_splits=prefill_splits)
        ref = attention_ref(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q)
        assert rel_err(out, ref) < TOL
        assert int(ws.counters(b.q.device, 1).abs().sum()) == 0
        assert int(ws.split_counters(b.q.device, 1).abs().sum()) == 0


def test_pod_back_to_back_launches_reuse_workspace():
    ws = PodWorkspace()
    for lens, chunks in (([9, 100], [(33, 21)]), ([300], [(0, 50), (12, 3)])):
        b = make_batch(lens, chunks, 8, 2, 64, 16, DT, DEV)
        out = poisoned(b.q)
        pod_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                      b.num_decodes, b.max_query_len, b.max_decode_len, out=out,
                      num_splits=2, workspace=ws)
        ref = attention_ref(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens,
                            b.cu_seqlens_q)
        assert rel_err(out, ref) < TOL


@pytest.mark.parametrize("block_size", [8, 24])
def test_all_kernels_with_other_page_sizes(block_size):
    from podserve.kernels.utils import page_mode

    # 8 divides every tile: the page size is compiled in; 24 does not: runtime addressing.
    assert page_mode(block_size, 64) == (8 if block_size == 8 else 0)
    b = make_batch([1, 50, 97], [(70, 30), (0, 9)], 8, 2, 64, block_size, DT, DEV)
    ref = attention_ref(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q)
    out = poisoned(b.q)
    decode_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                     b.num_decodes, b.max_decode_len, out=out, num_splits=2)
    prefill_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                      b.num_decodes, b.max_query_len, out=out, config=dict(BLOCK_M=16, BLOCK_N=32))
    assert rel_err(out, ref) < TOL
    pod = poisoned(b.q)
    pod_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                  b.num_decodes, b.max_query_len, b.max_decode_len, out=pod,
                  workspace=PodWorkspace(), max_prefill_seq_len=100, prefill_splits=2)
    assert rel_err(pod, ref) < TOL


def test_kernels_reject_k_and_v_caches_with_different_strides():
    b = make_batch([5], [(3, 4)], 4, 2, 64, 16, DT, DEV)
    nb, bs, h, d = b.v_cache.shape
    v_other = torch.zeros(nb, bs, h, d + 8, dtype=DT, device=DEV)[..., :d]  # padded rows
    v_other.copy_(b.v_cache)  # same shape and values, other strides
    with pytest.raises(ValueError, match="strides"):
        decode_attention(b.q, b.k_cache, v_other, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                         1, b.max_decode_len)


def test_pod_rejects_single_sided_batch():
    b = make_batch([], [(0, 8)], 4, 1, 64, 16, DT, DEV)
    with pytest.raises(ValueError):
        pod_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                      0, b.max_query_len, 0)


# ----------------------------------------------------------------------------- backends
@pytest.mark.parametrize("backend", [TritonAttention(), PodAttention(always_fuse=True),
                                     PodAttention()])
@pytest.mark.parametrize("shape", [([40, 7], [(16, 20)]), ([], [(0, 30)]), ([50, 3], [])])
def test_backend_writes_kv_then_attends(backend, shape):
    b = make_batch(*shape, 8, 2, 64, 16, DT, DEV)
    kc, vc = b.k_cache.clone(), b.v_cache.clone()
    write_kv_ref(b.k, b.v, kc, vc, b.slot_mapping)  # the cache as the backend must leave it
    out = backend.forward(b.q, b.k, b.v, b.k_cache, b.v_cache, meta_of(b), 64 ** -0.5)
    assert torch.equal(b.k_cache, kc) and torch.equal(b.v_cache, vc)
    ref = attention_ref(b.q, kc, vc, b.block_tables, b.seq_lens, b.cu_seqlens_q)
    assert rel_err(out, ref) < TOL


@pytest.mark.parametrize("backend", [TritonAttention(), PodAttention(always_fuse=True)])
def test_backend_with_split_kv_prefill(backend, monkeypatch):
    import podserve.attention.triton as triton_backend
    import podserve.kernels.prefill as prefill_kernel

    def plan(num_tiles, max_seq_len, slots, block_n, **kw):
        length = -(-max_seq_len // (3 * block_n)) * block_n
        return -(-max_seq_len // length), length

    monkeypatch.setattr(triton_backend, "SPLIT_KV_PREFILL", True)
    monkeypatch.setattr(prefill_kernel, "prefill_split_plan", plan)  # POD plans through it too
    b = make_batch([40, 7], [(300, 20), (0, 9)], 8, 2, 64, 16, DT, DEV)
    kc, vc = b.k_cache.clone(), b.v_cache.clone()
    write_kv_ref(b.k, b.v, kc, vc, b.slot_mapping)
    ref = attention_ref(b.q, kc, vc, b.block_tables, b.seq_lens, b.cu_seqlens_q)
    out = backend.forward(b.q, b.k, b.v, b.k_cache, b.v_cache, meta_of(b), 64 ** -0.5)
    assert rel_err(out, ref) < TOL


def test_selection_rule_fuses_only_balanced_batches():
    def meta(dec, chunks):  # shape-only metadata: the rule reads host lists alone
        qlens = [1] * len(dec) + [c for _, c in chunks]
        slens = list(dec) + [p + c for p, c in chunks]
        none = torch.empty(0)
        return AttentionMetadata(len(dec), len(chunks), sum(qlens[len(dec):]), none, none,
                                 none, none, qlens, slens, max(qlens), max(slens))
    assert not should_fuse(meta([], [(0, 8)]), 32, 8, 128, 2)
    assert not should_fuse(meta([5], []), 32, 8, 128, 2)
    # one 8-token decode context against a 64-token chunk: decode is negligible
    assert not should_fuse(meta([8], [(0, 64)]), 32, 8, 128, 2)
    # 32 decodes at 4K against a 512-token chunk at prefix 4K: comparable sides
    assert should_fuse(meta([4096] * 32, [(4096, 512)]), 32, 8, 128, 2)
    # the same decodes against a 16-token chunk: prefill is negligible
    assert not should_fuse(meta([4096] * 32, [(0, 16)]), 32, 8, 128, 2)


# ----------------------------------------------------------------------------- GPU only
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hq,hkv", [(32, 8), (16, 4), (32, 4)])
def test_gpu_all_kernels_vs_float64(dtype, hq, hkv):
    torch.manual_seed(torch.seed())
    b = make_batch([4096, 1000, 4097, 63] * 4, [(4096, 512), (0, 300)], hq, hkv, 128, 16,
                   dtype, "cuda")
    ref = attention_ref(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q)
    nd = b.num_decodes
    out = poisoned(b.q)
    decode_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                     nd, b.max_decode_len, out=out)
    prefill_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                      nd, b.max_query_len, out=out)
    assert rel_err(out, ref) < 1e-2
    max_p = max(b.seq_lens_list[nd:])
    for n in (2, 5):  # split-KV prefill, separate combine and POD's in-launch combine
        split = out.clone()
        split[nd:] = float("nan")
        prefill_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                          nd, b.max_query_len, out=split, max_seq_len=max_p, num_splits=n)
        assert rel_err(split, ref) < 1e-2
        pod = poisoned(b.q)
        pod_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                      nd, b.max_query_len, b.max_decode_len, out=pod,
                      max_prefill_seq_len=max_p, prefill_splits=n)
        assert rel_err(pod, ref) < 1e-2
    for policy in ("even", "proportional", "occupancy"):
        pod = poisoned(b.q)
        pod_attention(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                      nd, b.max_query_len, b.max_decode_len, out=pod, policy=policy)
        assert rel_err(pod, ref) < 1e-2
        assert rel_err(pod, out) < 1e-2


@gpu
def test_gpu_paged_and_contiguous_identical():
    b = make_batch([3000, 17, 4096], [(2048, 256)], 32, 8, 128, 64, torch.bfloat16, "cuda")
    c = to_layout(b, None)
    outs = []
    for x in (b, c):
        out = poisoned(x.q)
        decode_attention(x.q, x.k_cache, x.v_cache, x.block_tables, x.seq_lens,
                         x.cu_seqlens_q, x.num_decodes, x.max_decode_len, out=out)
        prefill_attention(x.q, x.k_cache, x.v_cache, x.block_tables, x.seq_lens,
                          x.cu_seqlens_q, x.num_decodes, x.max_query_len, out=out)
        outs.append(out)
    assert torch.equal(outs[0], outs[1]), (outs[0].float() - outs[1].float()).abs().max()


@gpu
def test_gpu_pod_repeated_launches_are_stable():
    b = make_batch([4096] * 32, [(8192, 1024)], 32, 8, 128, 16, torch.bfloat16, "cuda")
    args = (b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
            b.num_decodes, b.max_query_len, b.max_decode_len)
    first = pod_attention(*args)
    for _ in range(20):
        again = pod_attention(*args)
        assert rel_err(again, first) < 1e-3


@gpu
def test_gpu_batch_shapes_do_not_recompile():
    from podserve.kernels.utils import compiled_variants

    shapes = [([1], [(0, 16)]), ([5, 64, 4096], [(100, 1)]), ([17] * 33, [(2048, 512), (0, 48)]),
              ([4097] * 2, [(0, 2048)]), ([16] * 64, [(31, 33)]), ([8000], [(1, 1)]),
              ([5], [(8000, 64)]), ([300], [(12000, 200)])]  # the last two split the prefill keys

    def run_all():
        for lens, chunks in shapes:
            b = make_batch(lens, chunks, 32, 8, 128, 16, torch.bfloat16, "cuda")
            args = (b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q,
                    b.num_decodes)
            max_p = max(b.seq_lens_list[b.num_decodes:])
            decode_attention(*args, b.max_decode_len)
            prefill_attention(*args, b.max_query_len, max_seq_len=max_p)
            pod_attention(*args, b.max_query_len, b.max_decode_len, max_prefill_seq_len=max_p)
        torch.cuda.synchronize()

    run_all()
    first = compiled_variants()
    run_all()
    assert compiled_variants() == first
    # decode and prefill: split or direct; pod: decode and prefill split or not; combines: one.
    assert first["decode"] <= 2 and first["prefill"] <= 2 and first["pod"] <= 4, first
    assert first["combine"] == 1 and first["prefill_combine"] == 1, first
