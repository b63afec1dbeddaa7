"""Tensor-parallel all-reduce latency: NCCL vs the one-shot symmetric-memory path.

Starts ``--world`` processes (one per GPU), and for each message size runs the sum through
``dist.all_reduce`` (NCCL) and through ``podserve.distributed.allreduce.TPAllReduce`` (one-shot
over symmetric memory), both eagerly and replayed from a CUDA graph of ``--calls`` back-to-back
calls (how the engine runs them). Each result is checked against NCCL's. Rank 0 prints a table
and writes JSON.

    python3 benchmarks/allreduce.py --out $OUT/allreduce.json          # 2 GPUs
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES_KB = [64, 256, 1024, 2048, 4096, 8192, 16384]


def _time_us(fn, calls: int, repeats: int) -> float:
    import torch

    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def worker(rank: int, world: int, port: int, args, queue) -> None:
    import torch
    import torch.distributed as dist

    from podserve.distributed.allreduce import TPAllReduce
    from podserve.executor.cuda_graphs import warm_up_before_capture

    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            device_id=device)
    group = dist.group.WORLD
    dtype = torch.bfloat16
    one_shot = TPAllReduce(group, device, dtype, max_bytes=max(SIZES_KB) << 10)
    rows = []
    for kb in SIZES_KB:
        n = (kb << 10) // 2
        gen = torch.Generator(device=device).manual_seed(rank * 1000 + kb)
        x = torch.randn(n // 4096, 4096, device=device, dtype=dtype, generator=gen)
        ref = x.clone()
        dist.all_reduce(ref, group=group)
        row = {"kb": kb, "one_shot_available": one_shot.one_shot, "setup_error": one_shot.error}
        if one_shot.one_shot:
            got = one_shot(x.clone())
            row["max_abs_diff_vs_nccl"] = (got.float() - ref.float()).abs().max().item()
        variants = {"nccl": lambda t: (dist.all_reduce(t, group=group), t)[1], "one_shot": one_shot}
        for name, fn in variants.items():
            if name == "one_shot" and not one_shot.one_shot:
                continue
            buf = x.clone()

            def eager(fn=fn, buf=buf):
                for _ in range(args.calls):
                    fn(buf)

            eager()
            torch.cuda.synchronize()
            dist.barrier()
            row[f"{name}_eager_us"] = _time_us(eager, args.calls, args.repeats)
            try:
                graph = torch.cuda.CUDAGraph()
                warm_up_before_capture(device, eager)
                dist.barrier()
                with torch.cuda.graph(graph):
                    eager()
                graph.replay()
                torch.cuda.synchronize()
                dist.barrier()
                row[f"{name}_graph_us"] = _time_us(graph.replay, args.calls, args.repeats)
                if name == "one_shot":  # a captured call still sums correctly
                    check = x.clone()
                    g2 = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g2):
                        out = one_shot(check)
                    check.copy_(x)
                    g2.replay()
                    torch.cuda.synchronize()
                    row["graph_max_abs_diff_vs_nccl"] = (out.float() - ref.float()).abs().max().item()
            except Exception as e:  # noqa: BLE001 -- recorded, not fatal
                row[f"{name}_graph_error"] = f"{type(e).__name__}: {e}"[:300]
            dist.barrier()
        rows.append(row)
    if rank == 0:
        queue.put(rows)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--calls", type=int, default=64, help="back-to-back all-reduces per timing (a TP=2 step has 65)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch.multiprocessing as mp

    from podserve.distributed.context import free_port

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, args.world, port, args, queue)) for r in range(args.world)]
    for p in procs:
        p.start()
    rows = queue.get(timeout=600)
    for p in procs:
        p.join(timeout=60)
    print(f"{'size':>8} {'nccl eager':>11} {'nccl graph':>11} {'1shot eager':>12} {'1shot graph':>12}  max|diff|")
    for r in rows:
        def f(k):
            return f"{r[k]:.1f}" if k in r else "-"
        print(f"{r['kb']:>6}KB {f('nccl_eager_us'):>11} {f('nccl_graph_us'):>11} {f('one_shot_eager_us'):>12} "
              f"{f('one_shot_graph_us'):>12}  {r.get('max_abs_diff_vs_nccl', '-')} / {r.get('graph_max_abs_diff_vs_nccl', '-')}"
              + (f"  {r['setup_error']}" if r.get("setup_error") else "")
              + "".join(f"  {k}: {v}" for k, v in r.items() if k.endswith("_graph_error")))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"world": args.world, "calls": args.calls, "dtype": "bfloat16",
                                              "us_per_call": rows}, indent=1))
    os._exit(0)


if __name__ == "__main__":
    main()
