"""CPU prefill attention: torch SDPA on 3-D inputs (unfused math path) against 4-D (flash kernel).

The torch backend's prefill calls ``F.scaled_dot_product_attention`` once per chunk with
``enable_gqa``; on CPUs only 4-D inputs ([batch, heads, tokens, head_dim]) reach the flash
kernel. This times both layouts at SmolLM2's heads (9 query / 3 KV heads of 64) for whole
prompts (causal) and for chunks after a cached prefix (boolean mask), and checks both against
a float64 reference:

    python benchmarks/cpu_sdpa_layout.py --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def median_ms(fn, reps: int = 7) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", default="9,3,64", help="query heads, KV heads, head dim")
    ap.add_argument("--shapes", default="330:330,512:512,200:512,512:1024", help="chunk:context pairs")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    h, kv, d = (int(x) for x in args.heads.split(","))
    print(f"{'dtype':<10}{'chunk':>6}{'ctx':>6}{'3-D ms':>9}{'4-D ms':>9}{'speed-up':>10}{'max err 4-D':>13}")
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for pair in args.shapes.split(","):
            q_len, seq_len = (int(x) for x in pair.split(":"))
            q = torch.randn(h, q_len, d, dtype=dtype)  # [heads, chunk, head_dim]
            k = torch.randn(kv, seq_len, d, dtype=dtype)  # [kv_heads, ctx, head_dim]
            v = torch.randn(kv, seq_len, d, dtype=dtype)
            qpos = torch.arange(seq_len - q_len, seq_len)
            kw = {"is_causal": True} if q_len == seq_len else {"attn_mask": qpos[:, None] >= torch.arange(seq_len)[None, :]}
            ref = F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(h // kv, 0),
                                                 v.double().repeat_interleave(h // kv, 0), **kw)
            three = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)  # noqa: E731
            four = lambda: F.scaled_dot_product_attention(q[None], k[None], v[None], enable_gqa=True, **kw)[0]  # noqa: E731
            t3, t4 = median_ms(three), median_ms(four)
            err = (four().double() - ref).abs().max().item()
            print(f"{dtype_name:<10}{q_len:>6}{seq_len:>6}{t3:>9.2f}{t4:>9.2f}{t3 / t4:>9.2f}x{err:>13.1e}")


if __name__ == "__main__":
    main()
