"""CPU linear layers: stock ``F.linear`` against weights packed once for oneDNN (kernels/cpu_linear.py).

For each GEMM of one decoder layer and the LM head of a model's shapes, at several token
counts, the median time of both (alternated, so drifts of a shared machine hit both), the
speed-up, and the per-step total of a forward (layer GEMMs x layers + LM head):

    python benchmarks/cpu_linear.py --threads 1 --out runs/cpu_linear.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def timed(fn, reps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="a preset name (its shapes)")
    ap.add_argument("--tokens", default="1,16,64,256,512")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per point; the median is kept")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from podserve.kernels import cpu_linear
    from podserve.model.presets import preset_config

    if args.threads:
        torch.set_num_threads(args.threads)
    if not cpu_linear.available():
        raise SystemExit("this torch build has no oneDNN packed linear (kernels/cpu_linear.available() is False)")
    cfg = preset_config(args.model)
    h, q, kv = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    gemms = {"qkv": (h, q + 2 * kv), "o": (q, h), "gate_up": (h, 2 * cfg.intermediate_size),
             "down": (cfg.intermediate_size, h), "lm_head": (h, cfg.vocab_size)}
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for name, (k, n) in gemms.items():
            w = torch.randn(n, k, dtype=dtype) * 0.02
            packed = cpu_linear.pack(w)
            for m in (int(t) for t in args.tokens.split(",")):
                x = torch.randn(m, k, dtype=dtype)
                reps = max(2, min(50, int(2e8 / max(1, 2 * m * k * n))))
                stock, pk = [], []
                for _ in range(args.rounds):
                    stock.append(timed(lambda: F.linear(x, w), reps))
                    pk.append(timed(lambda: cpu_linear.linear(x, packed, None), reps))
                s, p = statistics.median(stock), statistics.median(pk)
                rows.append({"dtype": dtype_name, "gemm": name, "k": k, "n": n, "tokens": m, "stock_ms": s * 1e3,
                             "packed_ms": p * 1e3, "speedup": s / p, "packed_gflops": 2 * m * k * n / p / 1e9})
                print(f"{dtype_name:<9}{name:<8}{k:>6}x{n:<7} M={m:<5} stock {s * 1e3:8.3f} ms  packed {p * 1e3:8.3f} ms"
                      f"  {s / p:5.2f}x  ({2 * m * k * n / p / 1e9:.0f} GFLOP/s)", flush=True)
    print("\nper forward (layer GEMMs x layers + LM head):")
    totals = []
    for dtype_name in args.dtypes.split(","):
        for m in (int(t) for t in args.tokens.split(",")):
            sel = [r for r in rows if r["dtype"] == dtype_name and r["tokens"] == m]
            mult = {r["gemm"]: (1 if r["gemm"] == "lm_head" else cfg.num_hidden_layers) for r in sel}
            s = sum(r["stock_ms"] * mult[r["gemm"]] for r in sel)
            p = sum(r["packed_ms"] * mult[r["gemm"]] for r in sel)
            totals.append({"dtype": dtype_name, "tokens": m, "stock_ms": s, "packed_ms": p, "speedup": s / p})
            print(f"  {dtype_name:<9} M={m:<5} stock {s:9.2f} ms  packed {p:9.2f} ms  {s / p:.2f}x")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), torch "
                      f"{torch.__version__}, {torch.get_num_threads()} threads",
            "model": args.model, "rows": rows, "per_forward": totals}, indent=2))


if __name__ == "__main__":
    main()
