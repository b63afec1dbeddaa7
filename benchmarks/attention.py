"""Attention kernel benchmark: POD vs serial, streams, folded varlen and torch SDPA on one GPU.

The POD-Attention paper's sweep scaled to an H100: Llama-3-8B heads at TP1 and
TP2 (32/8 and 16/4 query/KV heads) and Yi-6B (32/4), head dim 128, bf16; one
prefill chunk of 512/1024/2048 tokens at a 4K-16K prefix next to 16-256 decodes
at 4K-16K context. For every configuration, in the same process:

- ``pod``       fused kernel with its default policy; also timed with every policy
                (``pod_even``, ``pod_prop``, ``pod_occ``)
- ``serial``    own decode kernel then own prefill kernel (the ``triton`` backend)
- ``streams``   the same two kernels on two CUDA streams
- ``folded``    decodes folded into the prefill kernel as query-length-1 chunks (one launch)
- ``sdpa``      torch SDPA, fastest of its backends, prefill (lower-right causal
                mask) then decode, on a dense (contiguous) copy of the same KV
- ``prefill`` / ``decode``  each own kernel alone (for the max(prefill, decode) bound)

Each time is the median over many launches (``triton.testing.do_bench``, which
also flushes L2 between launches) of a CUDA graph that runs the method once on
each of ``R`` input sets (separate block tables into a shuffled block pool, and
separate dense copies), divided by ``R``, so neither L2 nor launch gaps flatter
a method. Separate sections report the prefill kernel's TFLOP/s against SDPA's
FlashAttention-2 and cuDNN backends and the decode kernel's TB/s against a
measured device copy and SDPA.

    python benchmarks/attention.py --out $OUT             # full sweep (GPU)
    python benchmarks/attention.py --sections correct,tune_pod,hybrid --out $OUT
                                                          # pick the POD shape/policy first
    python benchmarks/attention.py --quick --out $OUT     # 4 configurations
    TRITON_INTERPRET=1 python benchmarks/attention.py --dry  # CPU: run every method once
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from podserve.kernels import decode_attention, pod_attention, prefill_attention  # noqa: E402
from podserve.kernels.reference import attention_ref  # noqa: E402

MODELS = {"L3-8B-TP1": (32, 8), "L3-8B-TP2": (16, 4), "Yi-6B": (32, 4)}
HEAD_DIM = 128

# (model, chunk, prefix, num_decodes, decode_ctx)
HYBRID = [
    ("L3-8B-TP1", 512, 4096, 64, 4096),
    ("L3-8B-TP1", 1024, 8192, 32, 8192),
    ("L3-8B-TP1", 2048, 4096, 128, 4096),
    ("L3-8B-TP1", 1024, 16384, 16, 16384),
    ("L3-8B-TP1", 512, 12288, 256, 4096),
    ("L3-8B-TP1", 2048, 16384, 64, 16384),
    ("L3-8B-TP2", 512, 4096, 64, 4096),
    ("L3-8B-TP2", 1024, 8192, 128, 8192),
    ("L3-8B-TP2", 2048, 16384, 32, 16384),
    ("L3-8B-TP2", 512, 16384, 256, 4096),
    ("L3-8B-TP2", 2048, 4096, 16, 4096),
    ("Yi-6B", 512, 4096, 128, 4096),
    ("Yi-6B", 1024, 12288, 64, 8192),
    ("Yi-6B", 2048, 8192, 256, 4096),
    ("Yi-6B", 1024, 4096, 32, 16384),
    ("Yi-6B", 2048, 16384, 16, 8192),
]
QUICK = [HYBRID[0], HYBRID[3], HYBRID[7], HYBRID[13]]
DRY = [("L3-8B-TP1", 40, 30, 3, 70)]


# ---------------------------------------------------------------------------- timing
def time_ms(fn_r, rotations: int, dry: bool = False, graph: bool = True) -> tuple[float, str]:
    """Median ms of one call of ``fn_r(r)``, r cycling over the input sets.

    ``graph``: capture the R calls in a CUDA graph (removes launch gaps); SDPA
    runs eagerly (its mask handling is not safe to capture; one launch a call).
    """
    if dry:
        t = time.perf_counter()
        for r in range(rotations):
            fn_r(r)
        return (time.perf_counter() - t) * 1e3 / rotations, "dry"
    import triton.testing

    for r in range(rotations):  # compile and warm outside any capture
        fn_r(r)
    torch.cuda.synchronize()
    mode = "graph"
    try:
        if not graph:
            raise RuntimeError("eager requested")
        g = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for r in range(rotations):
                fn_r(r)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(g):
            for r in range(rotations):
                fn_r(r)
        run = g.replay
    except Exception:  # a backend that cannot be captured runs eagerly
        torch.cuda.synchronize()
        mode = "eager"

        def run():
            for r in range(rotations):
                fn_r(r)
    ms = triton.testing.do_bench(run, warmup=25, rep=150, return_mode="median")
    return ms / rotations, mode


def sdpa_backends(dry: bool = False):
    from torch.nn.attention import SDPBackend
    if dry:  # CPU smoke run: only the math backend exists there
        return {"math": SDPBackend.MATH}
    return {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def sdpa_call(backend, q, k, v, causal, gqa=False):
    """SDPA on [B, H, L, D] views; ``causal`` is None, "square" or a lower-right CausalBias."""
    from torch.nn.attention import sdpa_kernel
    with sdpa_kernel([backend]):
        if causal is None:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        if causal == "square":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal)


def sdpa_prefill_fn(be, dense, chunks):
    """A prefill call for backend ``be``: native GQA where the backend takes it, else
    the materialised per-head KV (probed once here, not inside the timed call)."""
    from torch.nn.attention.bias import causal_lower_right
    plan = []
    for (q, k, v, ke, ve), (p, c) in zip(dense, chunks):
        if p == 0:
            try:
                sdpa_call(be, q, k, v, "square", gqa=True)
                plan.append((q, k, v, "square", True))
            except RuntimeError:
                plan.append((q, ke, ve, "square", False))
        else:
            plan.append((q, ke, ve, causal_lower_right(c, p + c), False))

    def run():
        for q, k, v, mask, gqa in plan:
            sdpa_call(be, q, k, v, mask, gqa)
    return run


def best_sdpa(make_call, rotations, dry) -> tuple[float | None, str, dict]:
    """Fastest working SDPA backend: (ms, name, {name: ms or error})."""
    tried = {}
    for name, be in sdpa_backends(dry).items():
        try:
            fn = make_call(be)
            fn(0)
            if not dry:
                torch.cuda.synchronize()
            tried[name] = time_ms(fn, rotations, dry, graph=False)[0]
        except Exception as e:  # backend unsupported for this shape/dtype/mask
            tried[name] = f"n/a: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
    ok = {k: v for k, v in tried.items() if isinstance(v, float)}
    if not ok:
        return None, "none", tried
    name = min(ok, key=ok.get)
    return ok[name], name, tried


# ---------------------------------------------------------------------------- inputs
class Inputs:
    """``rotations`` independent copies of one hybrid batch: paged own layout + dense copy."""

    def __init__(self, hq, hkv, decode_lens, chunks, block_size, dtype, device, rotations,
                 dense=True):
        self.hq, self.hkv, self.dtype, self.device = hq, hkv, dtype, device
        self.nd = len(decode_lens)
        self.seq_lens_list = list(decode_lens) + [p + c for p, c in chunks]
        self.query_lens = [1] * self.nd + [c for _, c in chunks]
        self.chunks = chunks
        S = len(self.seq_lens_list)
        max_len = max(self.seq_lens_list)
        bs = max_len if block_size is None else block_size
        self.block_size = bs
        per = [math.ceil(n / bs) for n in self.seq_lens_list]
        max_blocks = max(per)
        total = sum(per)
        nb = total * rotations + 1
        if block_size is None:  # contiguous: one slot (block) per sequence
            nb = S * rotations + 1
        shape = (nb, bs, hkv, HEAD_DIM)
        self.k_cache = torch.randn(shape, device=device, dtype=dtype)
        self.v_cache = torch.randn(shape, device=device, dtype=dtype)
        perm = torch.randperm(nb, device=device).to(torch.int32)
        self.block_tables, self.q, self.out = [], [], []
        self.dense = []
        T = sum(self.query_lens)
        at = 0
        for r in range(rotations):
            bt = torch.zeros(S, max_blocks, dtype=torch.int32, device=device)
            for s, n in enumerate(per):
                bt[s, :n] = perm[at:at + n]
                at += n
            self.block_tables.append(bt)
            self.q.append(torch.randn(T, hq, HEAD_DIM, device=device, dtype=dtype))
            self.out.append(torch.empty(T, hq, HEAD_DIM, device=device, dtype=dtype))
            if dense:
                self.dense.append(self._dense(r))
        self.seq_lens = torch.tensor(self.seq_lens_list, dtype=torch.int32, device=device)
        cu = [0]
        for n in self.query_lens:
            cu.append(cu[-1] + n)
        self.cu = torch.tensor(cu, dtype=torch.int32, device=device)
        self.max_query_len = max(self.query_lens[self.nd:], default=0)
        self.max_decode_len = max(self.seq_lens_list[:self.nd], default=0)
        self.rotations = rotations

    def _gather(self, cache, r, s):  # [L, Hkv, D] of sequence s, rotation r
        n, bs = self.seq_lens_list[s], self.block_size
        pos = torch.arange(n, device=self.device)
        rows = self.block_tables[r][s].long()[pos // bs] * bs + pos % bs
        return cache.view(-1, self.hkv, HEAD_DIM)[rows]

    def _dense(self, r):
        """Dense SDPA views: prefill q/k/v [1, H, L, D] per chunk; decode [nd, H, ctx, D]."""
        d = {"prefill": [], "decode": None}
        cu = 0
        for s in range(len(self.seq_lens_list)):
            qlen = self.query_lens[s]
            if s >= self.nd:
                k = self._gather(self.k_cache, r, s).transpose(0, 1)[None]
                v = self._gather(self.v_cache, r, s).transpose(0, 1)[None]
                q = self.q[r][cu:cu + qlen].transpose(0, 1)[None]
                g = self.hq // self.hkv
                # SDPA's lower-right causal mask path has no GQA: materialise the
                # KV per query head for it (not timed; prefill is compute-bound).
                d["prefill"].append((q, k.contiguous(), v.contiguous(),
                                     k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)))
            cu += qlen
        if self.nd:
            ctxs = set(self.seq_lens_list[:self.nd])
            assert len(ctxs) == 1, "dense decode baseline needs one context length"
            k = torch.stack([self._gather(self.k_cache, r, s) for s in range(self.nd)])
            v = torch.stack([self._gather(self.v_cache, r, s) for s in range(self.nd)])
            # GQA decode as MHA: the G query heads of a KV head become G query rows
            # of that head (no mask in decode), so every backend reads KV once.
            q = self.q[r][:self.nd].view(self.nd, self.hkv, self.hq // self.hkv, HEAD_DIM)
            d["decode"] = (q, k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous())
        return d


# ---------------------------------------------------------------------------- methods
def own_calls(x: Inputs, policy=None):
    """Own kernels as the engine's backends call them (split-KV prefill planned from the
    chunks' context length), plus ``*_nosplit`` variants without split-KV prefill."""
    policy = policy or POD_POLICY
    max_p_len = max(x.seq_lens_list[x.nd:], default=0)

    def args(r):
        return (x.q[r], x.k_cache, x.v_cache, x.block_tables[r], x.seq_lens, x.cu)

    def decode(r):
        decode_attention(*args(r), x.nd, x.max_decode_len, out=x.out[r])

    def prefill(r, split=True):
        prefill_attention(*args(r), x.nd, x.max_query_len, out=x.out[r],
                          max_seq_len=max_p_len if split else None)

    def serial(r, split=True):
        decode(r)
        prefill(r, split)

    def pod(r, pol=policy, split=True):
        pod_attention(*args(r), x.nd, x.max_query_len, x.max_decode_len, out=x.out[r],
                      policy=pol, config=POD_CFG, max_prefill_seq_len=max_p_len if split else None)

    def folded(r):
        prefill_attention(*args(r), 0, max(x.query_lens), out=x.out[r])

    return dict(decode=decode, prefill=prefill, serial=serial, pod=pod,
                pod_even=lambda r: pod(r, "even"), pod_prop=lambda r: pod(r, "proportional"),
                pod_occ=lambda r: pod(r, "occupancy"), folded=folded,
                prefill_nosplit=lambda r: prefill(r, False),
                serial_nosplit=lambda r: serial(r, False),
                pod_nosplit=lambda r: pod(r, policy, False))


def streams_call(calls, dry):
    if dry:
        return calls["serial"]
    s_p, s_d = torch.cuda.Stream(), torch.cuda.Stream()

    def run(r):
        cur = torch.cuda.current_stream()
        s_p.wait_stream(cur)
        s_d.wait_stream(cur)
        with torch.cuda.stream(s_d):
            calls["decode"](r)
        with torch.cuda.stream(s_p):
            calls["prefill"](r)
        cur.wait_stream(s_p)
        cur.wait_stream(s_d)
    return run


def sdpa_prefill_maker(x: Inputs):
    def make(be):
        runs = [sdpa_prefill_fn(be, x.dense[r]["prefill"], x.chunks)
                for r in range(x.rotations)]
        return lambda r: runs[r]()
    return make


def sdpa_decode_maker(x: Inputs):
    def make(be):
        def run(r):
            q, k, v = x.dense[r]["decode"]
            sdpa_call(be, q, k, v, None)
        return run
    return make


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def run_hybrid(cfg, block_size, dtype, device, dry):
    model, chunk, prefix, nd, ctx = cfg
    hq, hkv = MODELS[model]
    kv_bytes = 2 * 2 * hkv * HEAD_DIM * (nd * ctx + prefix + chunk)
    rot = 2 if kv_bytes > 512e6 else 4
    if dry:
        rot = 1
    x = Inputs(hq, hkv, [ctx] * nd, [(prefix, chunk)], block_size, dtype, device, rot)
    calls = own_calls(x)
    res = dict(model=model, chunk=chunk, prefix=prefix, decodes=nd, ctx=ctx, rotations=rot)
    # correctness of the fused kernel against the serial pair on this very batch
    calls["serial"](0)
    ser = x.out[0].clone()
    x.out[0].fill_(float("nan"))
    calls["pod"](0)
    res["pod_vs_serial_rel_err"] = rel_err(x.out[0], ser)
    modes = {}
    policy_keys = {"even": "pod_even", "proportional": "pod_prop", "occupancy": "pod_occ"}
    timed = [policy_keys[p] for p in POLICIES]
    timed += ["serial", "folded", "prefill", "decode", "pod_nosplit", "serial_nosplit",
              "prefill_nosplit"]
    for name in timed:
        res[name], modes[name] = time_ms(calls[name], rot, dry)
    for name in policy_keys.values():
        res.setdefault(name, None)
    # "pod" is the fused kernel with the policy chosen up front (not the best of three)
    res["pod"] = res[policy_keys[POD_POLICY]]
    res["pod_policy"] = POD_POLICY
    res["pod_split_gain"] = res["pod_nosplit"] / res["pod"]
    res["prefill_split_gain"] = res["prefill_nosplit"] / res["prefill"]
    res["streams"], modes["streams"] = time_ms(streams_call(calls, dry), rot, dry)
    tp, pname, ptried = best_sdpa(sdpa_prefill_maker(x), rot, dry)
    td, dname, dtried = best_sdpa(sdpa_decode_maker(x), rot, dry)
    res["sdpa"] = None if tp is None or td is None else tp + td
    res["sdpa_detail"] = dict(prefill=pname, prefill_ms=tp, decode=dname, decode_ms=td,
                              tried_prefill=ptried, tried_decode=dtried)
    res["timing_modes"] = modes
    alts = {k: res[k] for k in ("serial", "streams", "folded", "sdpa") if res[k] is not None}
    best = min(alts, key=alts.get)
    res["best_alt"] = best
    res["speedup_vs_serial"] = res["serial"] / res["pod"]
    res["speedup_vs_best_alt"] = alts[best] / res["pod"]
    hi, lo = max(res["prefill"], res["decode"]), min(res["prefill"], res["decode"])
    res["pod_over_max_side"] = res["pod"] / hi
    res["fusion_bound"] = (res["prefill"] + res["decode"]) / hi
    res["balanced"] = lo / hi >= 2 / 3
    del x
    return res


# ---------------------------------------------------------------------------- kernel sections
PREFILL_SHAPES = [("L3-8B-TP1", 4096, 0), ("L3-8B-TP1", 8192, 0), ("L3-8B-TP1", 16384, 0),
                  ("L3-8B-TP1", 2048, 14336),
                  # short chunks over long prefixes: few row tiles, where split-KV matters
                  ("L3-8B-TP1", 512, 16384), ("L3-8B-TP1", 256, 8192), ("L3-8B-TP2", 512, 16384),
                  ("L3-8B-TP2", 1024, 8192)]


def run_prefill_section(dtype, device, dry):
    """Causal prefill TFLOP/s: own kernel (split-KV as planned, and never split) vs SDPA
    FlashAttention-2 / cuDNN / efficient."""
    rows = []
    shapes = PREFILL_SHAPES if not dry else [("L3-8B-TP1", 48, 0), ("L3-8B-TP2", 16, 40)]
    for model, chunk, prefix in shapes:
        hq, hkv = MODELS[model]
        x = Inputs(hq, hkv, [], [(prefix, chunk)], None, dtype, device, 1 if dry else 2)
        calls = own_calls(x)
        flops = 4.0 * hq * HEAD_DIM * chunk * (prefix + (chunk + 1) / 2)
        own, _ = time_ms(calls["prefill"], x.rotations, dry)
        nosplit, _ = time_ms(calls["prefill_nosplit"], x.rotations, dry)
        row = dict(model=model, chunk=chunk, prefix=prefix, own_ms=own, own_tflops=flops / own / 1e9,
                   own_nosplit_ms=nosplit, own_nosplit_tflops=flops / nosplit / 1e9)
        make = sdpa_prefill_maker(x)
        for name, be in sdpa_backends(dry).items():
            try:
                fn = make(be)
                fn(0)
                ms, _ = time_ms(fn, x.rotations, dry, graph=False)
                row[name + "_ms"], row[name + "_tflops"] = ms, flops / ms / 1e9
            except Exception as e:
                row[name + "_ms"] = f"n/a: {type(e).__name__}"
        rows.append(row)
        del x
    return rows


SPLIT_COUNTS = (1, 2, 3, 4, 6)
POD_SPLIT_COUNTS = (1, 2, 4)


def run_split_section(cfgs, block_size, dtype, device, dry, save=lambda rows: None):
    """Split-KV sweep over the hybrid configurations: the prefill kernel alone with 1-6
    KV splits and POD with 1/2/4 prefill splits, beside what the plan picks (``auto``),
    to check ``prefill_split_plan`` against measurements."""
    from podserve.kernels.pod import pod_config
    from podserve.kernels.prefill import prefill_config, prefill_split_plan
    from podserve.kernels.utils import num_sms

    rows = []
    for model, chunk, prefix, nd, ctx in cfgs:
        hq, hkv = MODELS[model]
        rot = 1 if dry else (2 if 2 * 2 * hkv * HEAD_DIM * (nd * ctx + prefix + chunk) > 512e6 else 4)
        x = Inputs(hq, hkv, [ctx] * nd, [(prefix, chunk)], block_size, dtype, device, rot, dense=False)
        L = prefix + chunk
        pc, podc = prefill_config(HEAD_DIM), pod_config(HEAD_DIM)
        sms = num_sms(0)
        row = dict(model=model, chunk=chunk, prefix=prefix, decodes=nd, ctx=ctx,
                   plan_prefill=prefill_split_plan(hq * math.ceil(chunk / pc["BLOCK_M"]), L,
                                                   sms * pc["programs_per_sm"], pc["BLOCK_N"])[0],
                   plan_pod=prefill_split_plan(hq * math.ceil(chunk / podc["BLOCK_M"]), L,
                                               sms * podc["programs_per_sm"] // 2, podc["BLOCK_N_P"])[0])

        def args(r):
            return (x.q[r], x.k_cache, x.v_cache, x.block_tables[r], x.seq_lens, x.cu)
        for n in SPLIT_COUNTS:
            def run(r, n=n):
                prefill_attention(*args(r), x.nd, x.max_query_len, out=x.out[r], max_seq_len=L,
                                  num_splits=n)
            row[f"prefill_s{n}"], _ = time_ms(run, rot, dry)
        for n in POD_SPLIT_COUNTS:
            def run(r, n=n):
                pod_attention(*args(r), x.nd, x.max_query_len, x.max_decode_len, out=x.out[r],
                              policy=POD_POLICY, config=POD_CFG, max_prefill_seq_len=L,
                              prefill_splits=n)
            row[f"pod_s{n}"], _ = time_ms(run, rot, dry)
        best_p = min(SPLIT_COUNTS, key=lambda n: row[f"prefill_s{n}"])
        best_pod = min(POD_SPLIT_COUNTS, key=lambda n: row[f"pod_s{n}"])
        row.update(best_prefill_splits=best_p, best_pod_splits=best_pod)
        rows.append(row)
        save(rows)
        print("split", json.dumps(row), flush=True)
        x = None  # free this configuration's caches (the closures above hold the name)
        torch.cuda.empty_cache() if not dry else None
    return rows


def run_vattn_prefill_section(dtype, device, dry):
    """Issue 7: chunked prefill attention as the engine runs it. Own Triton prefill over
    paged KV (16-token blocks, the default) and over contiguous KV, against SDPA on one
    request's contiguous slot view -- what ``--attention sdpa --kv virtual`` calls: native
    GQA (``enable_gqa``) with a lower-right ``CausalBias`` after a prefix, and, for
    comparison, the K/V expanded to every query head first (expansion timed)."""
    from torch.nn.attention.bias import causal_lower_right
    rows = []
    shapes = [(512, 0), (512, 2048), (512, 6144), (2048, 0), (2048, 4096)] if not dry else [(32, 0), (16, 40)]
    hq, hkv = MODELS["L3-8B-TP1"]
    g = hq // hkv
    for chunk, prefix in shapes:
        flops = 4.0 * hq * HEAD_DIM * chunk * (prefix + (chunk + 1) / 2)
        row = dict(chunk=chunk, prefix=prefix)
        for label, bsz in (("paged16", 16), ("contig", None)):
            x = Inputs(hq, hkv, [], [(prefix, chunk)], bsz, dtype, device, 1 if dry else 2, dense=(bsz is None))
            ms, _ = time_ms(own_calls(x)["prefill"], x.rotations, dry)
            row[f"own_{label}_ms"], row[f"own_{label}_tflops"] = ms, flops / ms / 1e9
        n = prefix + chunk
        mask = "square" if prefix == 0 else causal_lower_right(chunk, n)
        views = []
        for r in range(x.rotations):
            slot = int(x.block_tables[r][0, 0])
            k = x.k_cache[slot, :n].transpose(0, 1)[None]  # [1, Hkv, n, D] view of the slot
            v = x.v_cache[slot, :n].transpose(0, 1)[None]
            q = x.q[r].transpose(0, 1)[None]  # [1, Hq, chunk, D]
            views.append((q, k, v))
        for name, be in sdpa_backends(dry).items():
            for variant in ("gqa", "expand"):
                def fn(r, be=be, variant=variant):
                    q, k, v = views[r]
                    if variant == "expand":
                        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
                    return sdpa_call_gqa(be, q, k, v, mask, variant == "gqa")
                try:
                    fn(0)
                    ms, _ = time_ms(fn, x.rotations, dry, graph=False)
                    row[f"{name}_{variant}_ms"], row[f"{name}_{variant}_tflops"] = ms, flops / ms / 1e9
                except Exception as e:
                    row[f"{name}_{variant}_ms"] = f"n/a: {type(e).__name__}: {str(e).splitlines()[0][:60]}"
        best = {k[:-3]: v for k, v in row.items() if k.endswith("_ms") and not k.startswith("own") and isinstance(v, float)}
        if best:
            name = min(best, key=best.get)
            row["best_sdpa"], row["best_sdpa_vs_paged16"] = name, row["own_paged16_ms"] / best[name]
        rows.append(row)
        del x, views
    return rows


def sdpa_call_gqa(backend, q, k, v, mask, gqa):
    """Like ``sdpa_call`` but with ``enable_gqa`` for the lower-right mask too (newer torch)."""
    from torch.nn.attention import sdpa_kernel
    with sdpa_kernel([backend]):
        if mask == "square":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def copy_bandwidth(device, dry) -> float:
    """Device-to-device copy rate in bytes/s (read + write counted)."""
    n = (1 << 30) if not dry else (1 << 20)
    a = torch.randn(n // 2, device=device, dtype=torch.bfloat16)
    b = torch.empty_like(a)
    ms, _ = time_ms(lambda r: b.copy_(a), 1, dry)
    return 2 * n / (ms * 1e-3)


def run_decode_section(dtype, device, dry, copy_bw):
    """Decode KV read rate (TB/s) of the own kernel (paged 16, contiguous) vs SDPA dense."""
    rows = []
    hq, hkv = MODELS["L3-8B-TP1"]
    shapes = [(64, 4096), (128, 4096), (256, 4096), (64, 8192), (128, 8192), (64, 16384)]
    if dry:
        shapes = [(3, 100)]
    for nd, ctx in shapes:
        row = dict(decodes=nd, ctx=ctx)
        kv = 2 * 2 * hkv * HEAD_DIM * nd * ctx
        for layout, bs in (("paged16", 16), ("contig", None)):
            x = Inputs(hq, hkv, [ctx] * nd, [], bs, dtype, device, 1 if dry else 2,
                       dense=layout == "contig")
            ms, _ = time_ms(own_calls(x)["decode"], x.rotations, dry)
            row[layout + "_ms"], row[layout + "_tbs"] = ms, kv / ms / 1e9
            if layout == "contig":
                sms, sname, tried = best_sdpa(sdpa_decode_maker(x), x.rotations, dry)
                row["sdpa_ms"], row["sdpa_backend"], row["sdpa_tried"] = sms, sname, tried
                row["sdpa_tbs"] = None if sms is None else kv / sms / 1e9
            del x
        row["paged16_frac_copy"] = row["paged16_tbs"] * 1e12 / copy_bw
        row["contig_frac_copy"] = row["contig_tbs"] * 1e12 / copy_bw
        rows.append(row)
    return rows


PREFILL_TUNE = [(128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2), (128, 32, 4, 3),
                (64, 64, 4, 3), (128, 64, 4, 3), (64, 128, 4, 2)]  # BM, BN, warps, stages
DECODE_TUNE = [(64, 4, 4), (64, 4, 2), (64, 4, 3), (32, 4, 4), (128, 4, 3), (64, 8, 4),
               (128, 8, 3), (16, 4, 6)]  # BN, warps, stages
# BM, BNP, BND, warps, stages, maxnreg; the register cap sets programs per SM
# (sm_90 compile report: 208 regs -> 2, 168 -> 3, 128 -> 4 programs of 4 warps).
# 8 warps capped at 128 registers: 2 programs of 256 threads per SM, i.e. one prefill program
# with 128-row tiles beside one decode program (the 4-warp shapes pair 64-row tiles).
POD_TUNE = [(64, 32, 64, 4, 2, 128), (64, 64, 64, 4, 2, None), (64, 64, 128, 4, 2, None),
            (64, 32, 64, 4, 2, None), (64, 64, 64, 4, 2, 128), (64, 64, 64, 4, 1, 168),
            (64, 64, 128, 4, 1, 168), (128, 64, 64, 8, 2, None), (128, 64, 64, 8, 2, 128),
            (128, 32, 64, 8, 2, 128), (128, 64, 128, 8, 2, 128), (128, 64, 64, 8, 1, 128)]
POD_TUNE_SHAPES = [(512, 4096, 64, 4096), (1024, 16384, 16, 16384)]  # chunk, prefix, nd, ctx
POD_CFG: dict | None = None  # set by the tune section when it runs; else pod_config()
POD_POLICY = "even"  # likewise (the kernel's default)
POLICIES = ("even", "proportional", "occupancy")  # timed in the hybrid section (--policies)


def run_tune_section(dtype, device, dry, block_size, kernels=("prefill", "decode", "pod")):
    """Time tile-shape variants of each kernel on representative shapes (pick defaults)."""
    out = {"prefill": [], "decode": [], "pod": []}
    hq, hkv = MODELS["L3-8B-TP1"]
    for bs in (block_size, None) if "prefill" in kernels else ():
        x = Inputs(hq, hkv, [], [(6144, 2048)] if not dry else [(30, 20)], bs, dtype, device,
                   1 if dry else 2, dense=False)
        for bm, bn, w, st in PREFILL_TUNE[:2 if dry else None]:
            cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)

            def fn(r, cfg=cfg):
                prefill_attention(x.q[r], x.k_cache, x.v_cache, x.block_tables[r], x.seq_lens,
                                  x.cu, 0, x.max_query_len, out=x.out[r], config=cfg)
            try:
                ms, _ = time_ms(fn, x.rotations, dry)
                out["prefill"].append(dict(block_size=bs, cfg=cfg, ms=ms))
            except Exception as e:
                out["prefill"].append(dict(block_size=bs, cfg=cfg, ms=f"n/a {e}"[:100]))
        del x
    for nd, ctx in ((64, 8192), (256, 4096)) if "decode" not in kernels else \
            ((64, 8192), (256, 4096)) if not dry else ((3, 100),):
        if "decode" not in kernels:
            break
        x = Inputs(hq, hkv, [ctx] * nd, [], block_size, dtype, device, 1 if dry else 2,
                   dense=False)
        for bn, w, st in DECODE_TUNE[:2 if dry else None]:
            cfg = dict(BLOCK_N=bn, num_warps=w, num_stages=st)

            def fn(r, cfg=cfg):
                decode_attention(x.q[r], x.k_cache, x.v_cache, x.block_tables[r], x.seq_lens,
                                 x.cu, x.nd, x.max_decode_len, out=x.out[r], config=cfg)
            try:
                ms, _ = time_ms(fn, x.rotations, dry)
                out["decode"].append(dict(shape=f"{nd}x{ctx}", cfg=cfg, ms=ms,
                                          tbs=2 * 2 * hkv * HEAD_DIM * nd * ctx / ms / 1e9))
            except Exception as e:
                out["decode"].append(dict(shape=f"{nd}x{ctx}", cfg=cfg, ms=f"n/a {e}"[:100]))
        del x
    for chunk, prefix, nd, ctx in (POD_TUNE_SHAPES if not dry else ((20, 30, 3, 70),)) \
            if "pod" in kernels else ():
        x = Inputs(hq, hkv, [ctx] * nd, [(prefix, chunk)], block_size, dtype, device,
                   1 if dry else 2, dense=False)
        for bm, bnp, bnd, w, st, mr in POD_TUNE[:2 if dry else None]:
            cfg = dict(BLOCK_M=bm, BLOCK_N_P=bnp, BLOCK_N_D=bnd, num_warps=w, num_stages=st,
                       maxnreg=mr)
            for policy in ("even", "proportional", "occupancy"):
                def fn(r, cfg=cfg, policy=policy):
                    pod_attention(x.q[r], x.k_cache, x.v_cache, x.block_tables[r], x.seq_lens,
                                  x.cu, x.nd, x.max_query_len, x.max_decode_len,
                                  out=x.out[r], config=cfg, policy=policy)
                key = dict(cfg, policy=policy)
                try:
                    ms, _ = time_ms(fn, x.rotations, dry)
                    out["pod"].append(dict(shape=f"{chunk}@{prefix}+{nd}x{ctx}", cfg=key,
                                           ms=ms))
                except Exception as e:
                    out["pod"].append(dict(shape=f"{chunk}@{prefix}+{nd}x{ctx}", cfg=key,
                                           ms=f"n/a {e}"[:100]))
        del x
    return out


def pick_pod_config(rows) -> dict | None:
    """The POD config with the lowest geometric-mean time over the tuning shapes."""
    by = {}
    for r in rows:
        if isinstance(r["ms"], float):
            by.setdefault(json.dumps(r["cfg"], sort_keys=True), []).append(r["ms"])
    n = max((len(v) for v in by.values()), default=0)
    full = {k: geomean(v) for k, v in by.items() if len(v) == n}
    return json.loads(min(full, key=full.get)) if full else None


def pod_resources(cfg: dict) -> dict:
    """Registers, spills, shared memory and programs/SM of the POD kernel for ``cfg``."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from compile_report import compile_one, occupancy, pod_constexprs, resources
    from podserve.kernels.pod import _pod_kernel

    k = compile_one(_pod_kernel, pod_constexprs(cfg, HEAD_DIM, 4, 16, occupancy_policy=True),
                    cfg["num_warps"], cfg["num_stages"], "bf16", 16, cfg.get("maxnreg"))
    regs, spill = resources(k)
    return dict(regs=regs, spill_or_stack=spill, shared=k.metadata.shared,
                programs_per_sm=occupancy(regs, k.metadata.shared, cfg["num_warps"]))


def check_correctness(dtype, device, dry):
    """Small float64-referenced check that runs before any timing."""
    hq, hkv = MODELS["L3-8B-TP1"]
    shapes = ([300, 4097, 1000, 64], [(4096, 512)]) if not dry else ([5, 70], [(30, 20)])
    x = Inputs(hq, hkv, *shapes, 16, dtype, device, 1, dense=False)
    ref = attention_ref(x.q[0], x.k_cache, x.v_cache, x.block_tables[0], x.seq_lens, x.cu)
    calls = own_calls(x)
    errs = {}
    for name in ("serial", "pod_prop", "pod_even", "pod_occ", "folded", "serial_nosplit",
                 "pod_nosplit"):
        x.out[0].fill_(float("nan"))
        calls[name](0)
        errs[name] = rel_err(x.out[0], ref)
    # The SDPA baseline must compute the same function (lower-right causal mask, GQA).
    y = Inputs(hq, hkv, [shapes[0][1]] * 3, shapes[1], 16, dtype, device, 1)
    ref = attention_ref(y.q[0], y.k_cache, y.v_cache, y.block_tables[0], y.seq_lens, y.cu)
    from torch.nn.attention.bias import causal_lower_right
    for name, be in sdpa_backends(dry).items():
        (q, k, v, ke, ve), (p, c) = y.dense[0]["prefill"][0], y.chunks[0]
        try:
            o = sdpa_call(be, q, ke, ve, causal_lower_right(c, p + c))[0].transpose(0, 1)
            errs[f"sdpa_{name}_prefill"] = rel_err(o, ref[y.nd:])
        except RuntimeError as e:
            errs[f"sdpa_{name}_prefill"] = f"n/a: {str(e).splitlines()[0][:60]}"
        q, k, v = y.dense[0]["decode"]
        try:
            o = sdpa_call(be, q, k, v, None).reshape(y.nd, hq, HEAD_DIM)
            errs[f"sdpa_{name}_decode"] = rel_err(o, ref[:y.nd])
        except RuntimeError as e:
            errs[f"sdpa_{name}_decode"] = f"n/a: {str(e).splitlines()[0][:60]}"
    return errs


# ---------------------------------------------------------------------------- report
def fmt(v, spec=".3f"):
    return "-" if v is None else (format(v, spec) if isinstance(v, float) else str(v))


def hybrid_table(rows) -> str:
    head = ("| model | chunk@prefix | decodes x ctx | pod | pod no split | even | prop | occ "
            "| serial | streams | folded | sdpa | prefill | decode | pod/serial speedup "
            "| vs best alt | pod/max(p,d) |")
    lines = [head, "|" + "---|" * 17]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['chunk']}@{r['prefix']} | {r['decodes']}x{r['ctx']} "
            f"| {fmt(r['pod'])} | {fmt(r.get('pod_nosplit'))} | {fmt(r['pod_even'])} | {fmt(r['pod_prop'])} "
            f"| {fmt(r['pod_occ'])} | {fmt(r['serial'])} "
            f"| {fmt(r['streams'])} | {fmt(r['folded'])} | {fmt(r['sdpa'])} "
            f"| {fmt(r['prefill'])} | {fmt(r['decode'])} | {r['speedup_vs_serial']:.2f}x "
            f"| {r['speedup_vs_best_alt']:.2f}x ({r['best_alt']}) "
            f"| {r['pod_over_max_side']:.2f}{' (bal)' if r['balanced'] else ''} |")
    return "\n".join(lines)


def geomean(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def summary(rows) -> dict:
    bal = [r["pod_over_max_side"] for r in rows if r["balanced"]]
    return dict(
        geomean_speedup_vs_serial=geomean([r["speedup_vs_serial"] for r in rows]),
        geomean_speedup_vs_best_alt=geomean([r["speedup_vs_best_alt"] for r in rows]),
        worst_vs_best_alt=min(r["speedup_vs_best_alt"] for r in rows),
        balanced_pod_over_max_side_worst=max(bal) if bal else None,
        balanced_pod_over_max_side_geomean=geomean(bal) if bal else None,
        geomean_pod_split_gain=geomean([r.get("pod_split_gain") for r in rows]),
        geomean_speedup_nosplit_vs_serial_nosplit=geomean(
            [r["serial_nosplit"] / r["pod_nosplit"] for r in rows if r.get("pod_nosplit")]),
        num_configs=len(rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="4 hybrid configurations")
    ap.add_argument("--dry", action="store_true", help="CPU smoke run of every method")
    ap.add_argument("--block-size", type=int, default=16, help="paged block size; 0=contiguous")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--sections", default="correct,hybrid,prefill,decode")
    ap.add_argument("--policies", default="even,proportional,occupancy",
                    help="POD role policies timed in the hybrid section")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    dry = a.dry
    global POLICIES
    POLICIES = tuple(a.policies.split(","))
    device = "cpu" if dry else "cuda"
    dtype = torch.float32 if dry else getattr(torch, a.dtype)
    bs = None if a.block_size == 0 else a.block_size
    sections = a.sections.split(",")
    torch.manual_seed(int(time.time()))
    info = dict(torch=torch.__version__, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                argv=sys.argv, block_size=a.block_size, dtype=a.dtype)
    if not dry:
        import triton
        info.update(device=torch.cuda.get_device_name(), triton=triton.__version__,
                    sms=torch.cuda.get_device_properties(0).multi_processor_count)
    result = dict(info=info)
    os.makedirs(a.out, exist_ok=True)

    def save():  # after every section/config, so a run cut short keeps what it measured
        with open(os.path.join(a.out, "attention.json"), "w") as f:
            json.dump(result, f, indent=1, default=str)
    print(json.dumps(info), flush=True)
    if "correct" in sections:
        result["correctness_rel_err_vs_fp64"] = check_correctness(dtype, device, dry)
        print("correctness", result["correctness_rel_err_vs_fp64"], flush=True)
    copy_bw = copy_bandwidth(device, dry)
    result["copy_bandwidth_tbs"] = copy_bw / 1e12
    print(f"copy bandwidth {copy_bw / 1e12:.2f} TB/s", flush=True)
    tune = [k for k in ("prefill", "decode", "pod") if "tune" in sections
            or f"tune_{k}" in sections]
    if tune:
        global POD_CFG
        result["tune"] = run_tune_section(dtype, device, dry, bs, tune)
        save()
        for k, rows in result["tune"].items():
            for r in rows:
                print("tune", k, json.dumps(r, default=str), flush=True)
        if "pod" in tune:
            global POD_POLICY
            picked = pick_pod_config(result["tune"]["pod"])
            if picked:
                POD_POLICY = picked.pop("policy")
                POD_CFG = picked
            result["pod_config_picked"] = dict(config=POD_CFG, policy=POD_POLICY)
            print("pod config picked", POD_CFG, POD_POLICY, flush=True)
            if not dry:
                result["pod_compile_report"] = pod_resources(POD_CFG)
                print("pod compile report", result["pod_compile_report"], flush=True)
                result["pod_tune_resources"] = []
                for bm, bnp, bnd, w, st, mr in POD_TUNE:
                    cfg = dict(BLOCK_M=bm, BLOCK_N_P=bnp, BLOCK_N_D=bnd, num_warps=w, num_stages=st, maxnreg=mr)
                    try:
                        res = pod_resources(cfg)
                    except Exception as e:  # noqa: BLE001 -- a report, not a result
                        res = {"error": f"{type(e).__name__}: {e}"[:200]}
                    result["pod_tune_resources"].append(dict(cfg=cfg, **res))
                    print("pod resources", cfg, res, flush=True)
                save()
    if "prefill" in sections:
        result["prefill"] = run_prefill_section(dtype, device, dry)
        save()
        for r in result["prefill"]:
            print("prefill", json.dumps(r), flush=True)
    if "split" in sections:
        def save_split(rows):
            result["split"] = rows
            save()
        result["split"] = run_split_section(DRY if dry else (QUICK if a.quick else HYBRID), bs,
                                            dtype, device, dry, save_split)
        save()
    if "vattn_prefill" in sections:
        result["vattn_prefill"] = run_vattn_prefill_section(dtype, device, dry)
        save()
        for r in result["vattn_prefill"]:
            print("vattn_prefill", json.dumps(r, default=str), flush=True)
    if "decode" in sections:
        result["decode"] = run_decode_section(dtype, device, dry, copy_bw)
        save()
        for r in result["decode"]:
            print("decode", json.dumps({k: v for k, v in r.items() if k != "sdpa_tried"}),
                  flush=True)
    if "hybrid" in sections:
        cfgs = DRY if dry else (QUICK if a.quick else HYBRID)
        rows = []
        for cfg in cfgs:
            try:
                r = run_hybrid(cfg, bs, dtype, device, dry)
            except Exception as e:  # record and go on: one bad config must not void the run
                import traceback
                traceback.print_exc()
                result.setdefault("errors", []).append(f"{cfg}: {type(e).__name__}: {e}")
                continue
            rows.append(r)
            result["hybrid"] = rows
            save()
            print("hybrid", json.dumps({k: v for k, v in r.items() if k != "sdpa_detail"}),
                  flush=True)
            torch.cuda.empty_cache() if not dry else None
        result["hybrid"] = rows
        result["summary"] = summary(rows)
    save()
    # compact tables last (the device tool returns the tail of the output)
    if "prefill" in sections:
        print("\nprefill TFLOP/s (L3-8B TP1 heads, causal):")
        for r in result["prefill"]:
            print(f"  {r.get('model', 'L3-8B-TP1')} {r['chunk']}@{r['prefix']}: own {r['own_tflops']:.0f}"
                  f" (no split {r['own_nosplit_tflops']:.0f})"
                  + "".join(f" {n} {fmt(r.get(n + '_tflops'), '.0f')}"
                            for n in ("flash", "cudnn", "efficient", "math") if n + "_ms" in r))
    if "vattn_prefill" in sections:
        print("\nvattn prefill ms (L3-8B TP1 heads; own Triton paged16/contig vs SDPA on the slot view):")
        for r in result["vattn_prefill"]:
            sd = " ".join(f"{k[:-3]} {fmt(v, '.3f')}" for k, v in r.items()
                          if k.endswith("_ms") and not k.startswith("own") and isinstance(v, float))
            print(f"  {r['chunk']}@{r['prefix']}: paged16 {r['own_paged16_ms']:.3f} contig {r['own_contig_ms']:.3f} | {sd}"
                  f" | best {r.get('best_sdpa')} {fmt(r.get('best_sdpa_vs_paged16'), '.2f')}x paged16")
    if "decode" in sections:
        print(f"\ndecode TB/s (copy {copy_bw / 1e12:.2f} TB/s):")
        for r in result["decode"]:
            print(f"  {r['decodes']}x{r['ctx']}: paged16 {r['paged16_tbs']:.2f} "
                  f"contig {r['contig_tbs']:.2f} sdpa({r['sdpa_backend']}) "
                  f"{fmt(r['sdpa_tbs'], '.2f')}")
    if "hybrid" in sections:
        print("\n" + hybrid_table(result["hybrid"]))
        print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
