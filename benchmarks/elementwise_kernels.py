"""Fused elementwise kernels (RMSNorm, RoPE, SiLU-and-mul) against the torch ops they replace.

Llama-3-8B shapes (hidden 4096, 32/8 heads of 128, intermediate 14336), bf16, at 1, 128,
512 and 2048 tokens; each method captured in a CUDA graph (as the engine runs them) and
timed with ``triton.testing.do_bench`` (median). Reports microseconds, the fused/torch
ratio, and the fused kernel's achieved bandwidth (bytes it must read and write).
Also the per-layer total: what one decoder layer spends in these ops.

    python benchmarks/elementwise_kernels.py --out $OUT           # GPU
    TRITON_INTERPRET=1 python benchmarks/elementwise_kernels.py --smoke   # CPU: run each once
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from podserve.executor.cuda_graphs import warm_up_before_capture  # noqa: E402
from podserve.kernels.elementwise import (  # noqa: E402
    rms_norm, rms_norm_ref, rotary_embedding, rotary_embedding_ref, silu_and_mul, silu_and_mul_ref)
from podserve.model.layers import RotaryEmbedding  # noqa: E402

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER = 4096, 32, 8, 128, 14336


def cases(n: int, dtype, device):
    """(name, fused fn, torch fn, bytes moved) over fresh inputs for ``n`` tokens."""
    x = torch.randn(n, HIDDEN, dtype=dtype, device=device)
    w = torch.rand(HIDDEN, dtype=dtype, device=device) + 0.5
    rope = RotaryEmbedding(HEAD_DIM, 8192, 500000.0, None).to(device)
    qkv = torch.randn(n, (HEADS + 2 * KV_HEADS) * HEAD_DIM, dtype=dtype, device=device)
    q, k, _ = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
    q, k = q.view(n, HEADS, HEAD_DIM), k.view(n, KV_HEADS, HEAD_DIM)
    pos = torch.randint(0, 8192, (n,), device=device)
    gu = torch.randn(n, 2 * INTER, dtype=dtype, device=device)
    e = x.element_size()
    return [
        ("rms_norm", lambda: rms_norm(x, w, 1e-5), lambda: rms_norm_ref(x, w, 1e-5), 2 * n * HIDDEN * e),
        ("rope", lambda: rotary_embedding(pos, q, k, rope.cos, rope.sin),
         lambda: rotary_embedding_ref(pos, q, k, rope.cos, rope.sin), 2 * n * (HEADS + KV_HEADS) * HEAD_DIM * e),
        ("silu_and_mul", lambda: silu_and_mul(gu), lambda: silu_and_mul_ref(gu), 3 * n * INTER * e),
    ]


def graphed(fn):
    """``fn`` captured once in a CUDA graph; returns the replay."""
    warm_up_before_capture(torch.device("cuda", torch.cuda.current_device()), fn)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="1,128,512,2048")
    ap.add_argument("--smoke", action="store_true", help="CPU: run every method once on tiny sizes")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    tokens = [int(t) for t in args.tokens.split(",")] if not args.smoke else [2]
    rows = []
    for n in tokens:
        layer = {"fused_us": 0.0, "torch_us": 0.0}
        for name, fused, ref, nbytes in cases(n, dtype, device):
            if cuda:
                import triton

                t_fused = triton.testing.do_bench(graphed(fused), return_mode="median") * 1e3
                t_ref = triton.testing.do_bench(graphed(ref), return_mode="median") * 1e3
            else:
                t0 = time.perf_counter()
                fused()
                t_fused = (time.perf_counter() - t0) * 1e6
                t0 = time.perf_counter()
                ref()
                t_ref = (time.perf_counter() - t0) * 1e6
            per_layer = 2 if name == "rms_norm" else 1
            layer["fused_us"] += per_layer * t_fused
            layer["torch_us"] += per_layer * t_ref
            rows.append({"op": name, "tokens": n, "fused_us": t_fused, "torch_us": t_ref, "speedup": t_ref / t_fused,
                         "fused_GBps": nbytes / t_fused / 1e3})
        rows.append({"op": "per_layer", "tokens": n, **layer, "speedup": layer["torch_us"] / layer["fused_us"]})
    print(f"{'op':<14}{'tokens':>7}{'fused us':>10}{'torch us':>10}{'speedup':>9}{'fused GB/s':>12}")
    for r in rows:
        gbps = f"{r['fused_GBps']:.0f}" if "fused_GBps" in r else "-"
        print(f"{r['op']:<14}{r['tokens']:>7}{r['fused_us']:>10.1f}{r['torch_us']:>10.1f}{r['speedup']:>8.2f}x{gbps:>12}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        path = Path(args.out) / "elementwise_kernels.json"
        path.write_text(json.dumps({"device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(dtype),
                                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}, indent=1))
        print(f"results in {path}")


if __name__ == "__main__":
    main()
