"""Tensor-parallel all-reduce latency: NCCL vs the one-shot symmetric-memory path, and the
reduction as a TP layer runs it: all-reduce + residual add + RMSNorm, unfused or fused.

Starts ``--world`` processes (one per GPU), and for each message size runs the sum through
``dist.all_reduce`` (NCCL) and through ``podserve.distributed.allreduce.TPAllReduce`` (one-shot
over symmetric memory), both eagerly and replayed from a CUDA graph of ``--calls`` back-to-back
calls (how the engine runs them). Each result is checked against NCCL's. Then, for messages
the fused path takes ([tokens, 4096] rows), the layer's whole reduction: ``nccl+add_norm``
(NCCL all-reduce, then the fused add + RMSNorm kernel), ``one_shot+add_norm`` (one-shot,
then the same kernel) and ``fused`` (``TPAllReduce.add_rms_norm``: barrier + one kernel over
the peers' buffers), graphed; the fused result is checked against NCCL + the torch reference.
Rank 0 prints a table and writes JSON.

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


def _graph_time_us(calls, device, args) -> float:
    """``calls`` (``args.calls`` collectives) captured into one CUDA graph on every rank, then
    the median replay time per call."""
    import torch
    import torch.distributed as dist

    from podserve.executor.cuda_graphs import warm_up_before_capture

    warm_up_before_capture(device, calls)
    dist.barrier()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        calls()
    graph.replay()
    torch.cuda.synchronize()
    dist.barrier()
    return _time_us(graph.replay, args.calls, args.repeats)


def worker(rank: int, world: int, port: int, args, queue) -> None:
    import torch
    import torch.distributed as dist

    from podserve.distributed.allreduce import TPAllReduce

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
                row[f"{name}_graph_us"] = _graph_time_us(eager, device, args)
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
        if (kb << 10) <= max(SIZES_KB[:5]) << 10:
            _time_reductions(row, x, ref, one_shot, group, args)
        rows.append(row)
    if rank == 0:
        queue.put(rows)
    dist.barrier()
    dist.destroy_process_group()


def _time_reductions(row: dict, x, ref, one_shot, group, args) -> None:
    """A TP layer's reduction of partial ``x`` into a residual, with its RMSNorm: three ways."""
    import torch
    import torch.distributed as dist

    from podserve.kernels.add_norm import add_rms_norm, add_rms_norm_ref

    device = x.device
    weight = torch.rand(x.shape[1], device=device, dtype=x.dtype) + 0.5
    residual0 = torch.randn(x.shape, device=device, dtype=x.dtype, generator=torch.Generator(device=device).manual_seed(7))
    if one_shot.fused:  # correctness first: fused == NCCL all-reduce + the torch add + norm
        staged = one_shot.staging(tuple(x.shape), 0)
        staged.copy_(x)
        res = residual0.clone()
        got = one_shot.add_rms_norm(staged, res, weight, 1e-5, 0)
        ref_res = residual0.clone()
        want = add_rms_norm_ref([ref], ref_res, weight, 1e-5)
        row["fused_max_abs_diff"] = max((got.float() - want.float()).abs().max().item(),
                                        (res.float() - ref_res.float()).abs().max().item())
    variants = {"nccl+add_norm": lambda p, r, s: add_rms_norm([(dist.all_reduce(p, group=group), p)[1]], r, weight, 1e-5)}
    if one_shot.one_shot:
        variants["one_shot+add_norm"] = lambda p, r, s: add_rms_norm([one_shot(p)], r, weight, 1e-5)
    if one_shot.fused:
        variants["fused"] = lambda p, r, s: one_shot.add_rms_norm(p, r, weight, 1e-5, s)
    for name, fn in variants.items():
        residual = residual0.clone()
        partials = [x.clone(), x.clone()]
        if name == "fused":  # where the engine's row-parallel GEMMs write them
            partials = [one_shot.staging(tuple(x.shape), s) for s in (0, 1)]
            for p in partials:
                p.copy_(x)

        def calls(fn=fn, partials=partials, residual=residual):
            for i in range(args.calls):  # slots alternate as in a forward: attention, MLP, ...
                fn(partials[i % 2], residual, i % 2)

        try:
            row[f"{name}_graph_us"] = _graph_time_us(calls, device, args)
        except Exception as e:  # noqa: BLE001 -- recorded, not fatal
            row[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
        dist.barrier()


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
    print(f"\nreduction + residual add + RMSNorm, graphed, us per call (fused: {rows[0].get('fused_max_abs_diff', '-')} max|diff|)")
    names = ["nccl+add_norm", "one_shot+add_norm", "fused"]
    print(f"{'size':>8} " + " ".join(f"{n:>18}" for n in names))
    for r in rows:
        if any(f"{n}_graph_us" in r or f"{n}_error" in r for n in names):
            print(f"{r['kb']:>6}KB " + " ".join(
                f"{r[n + '_graph_us']:>18.1f}" if n + "_graph_us" in r else f"{r.get(n + '_error', '-')[:18]:>18}"
                for n in names))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"world": args.world, "calls": args.calls, "dtype": "bfloat16",
                                              "us_per_call": rows}, indent=1))
    os._exit(0)


if __name__ == "__main__":
    main()
