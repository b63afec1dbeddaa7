"""Where a decode step's device time goes: torch.profiler over steady-state engine steps.

Builds the engine (Llama-3-8B shapes, random weights, CUDA graphs as served), fills it with
``--batch`` requests of ``--prompt-tokens`` tokens, steps until every request decodes, then
profiles ``--steps`` decode steps and prints the kernels by total device time (per step),
grouped into families (GEMM, attention, elementwise, all-reduce, sampling, copies).

    python benchmarks/profile_step.py --out $OUT                 # GPU
    python benchmarks/profile_step.py --device cpu --model tiny-llama --batch 4 --steps 2   # CPU smoke
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FAMILIES = [  # first match wins; names of cuBLAS/cutlass/Triton/NCCL/torch kernels
    ("allreduce", ("nccl", "allreduce", "all_reduce")),
    ("gemm", ("gemm", "cutlass", "sm90_xmma", "cublas", "nvjet", "matmul")),
    ("attention", ("_decode", "_prefill", "_pod", "combine", "attn", "flash")),
    ("kv_write", ("write_kv", "_kv_write")),
    ("elementwise", ("_rms_norm", "_rope", "_silu", "elementwise", "vectorized", "unrolled", "reduce_kernel")),
    ("sampling", ("argmax", "softmax", "sort", "exponential", "index")),
    ("copy", ("memcpy", "copy", "memset")),
]


def family(name: str) -> str:
    low = name.lower()
    for fam, keys in FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from podserve.config import CacheConfig, EngineConfig, SchedulerConfig
    from podserve.engine.engine import Engine
    from podserve.request import SamplingParams

    cuda = args.device.startswith("cuda")
    engine = Engine(EngineConfig(
        model=args.model, device=args.device, attention="triton" if cuda else "torch", max_model_len=4096,
        scheduler=SchedulerConfig(chunk_size=2048, max_num_seqs=args.batch),
        cache=CacheConfig(num_blocks=None if cuda else 4096)))
    params = SamplingParams(max_tokens=10_000, temperature=0.0, ignore_eos=True)
    for i in range(args.batch):
        engine.add_request([(7 * i + j) % 1000 + 2 for j in range(args.prompt_tokens)], params)
    while engine.scheduler.running and any(r.is_prefill for r in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    for _ in range(3):
        engine.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            engine.step()
        if cuda:
            torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / args.steps
    per_kernel = defaultdict(float)
    counts = defaultdict(int)
    for ev in prof.key_averages():
        if cuda:
            if "CUDA" not in str(getattr(ev, "device_type", "")):
                continue  # host ops: their kernels are counted as device events of their own
            t = getattr(ev, "self_device_time_total", None)
            if t is None:
                t = ev.self_cuda_time_total
        else:
            t = ev.self_cpu_time_total
        per_kernel[ev.key] += t / args.steps
        counts[ev.key] += ev.count // args.steps
    total = sum(per_kernel.values())
    fams = defaultdict(float)
    for k, v in per_kernel.items():
        fams[family(k)] += v
    print(f"{args.model} decode x{args.batch} @ {args.prompt_tokens}+ ctx: wall {wall * 1e3:.2f} ms/step, "
          f"device kernels {total / 1e3:.2f} ms/step")
    for fam, v in sorted(fams.items(), key=lambda x: -x[1]):
        print(f"  {fam:<12}{v / 1e3:8.3f} ms  {v / max(total, 1e-9):6.1%}")
    print("top kernels (us/step, launches/step):")
    for k, v in sorted(per_kernel.items(), key=lambda x: -x[1])[: args.top]:
        print(f"  {v:9.1f} {counts[k]:5d}  {family(k):<11} {k[:110]}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "profile_step.json").write_text(json.dumps({
            "model": args.model, "batch": args.batch, "prompt_tokens": args.prompt_tokens, "wall_ms": wall * 1e3,
            "device_ms": total / 1e3, "families_ms": {k: v / 1e3 for k, v in fams.items()},
            "kernels_us": dict(sorted(per_kernel.items(), key=lambda x: -x[1])[:200]),
            "launches": {k: counts[k] for k in per_kernel}}, indent=1))


if __name__ == "__main__":
    main()
