"""Where a decode step's device time goes: torch.profiler over steady-state engine steps.

Builds the engine (Llama-3-8B shapes, random weights, CUDA graphs as served), fills it with
``--batch`` requests of ``--prompt-tokens`` tokens, steps until every request decodes, then
profiles ``--steps`` decode steps and prints the kernels by total device time (per step),
grouped into families (GEMM, attention, elementwise, all-reduce, sampling, copies).
With ``--tp N`` the engine runs N tensor-parallel ranks and every rank profiles its own
steps (``Engine.start_profile``), since a rank's kernels run in its worker process.

    python benchmarks/profile_step.py --out $OUT                 # GPU
    python benchmarks/profile_step.py --tp 2 --batch 256 --out $OUT   # two GPUs
    python benchmarks/profile_step.py --device cpu --model tiny-llama --batch 4 --steps 2   # CPU smoke
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dtype", default="auto", help="float32, bfloat16, or auto (bf16 on CUDA, float32 on CPU)")
    ap.add_argument("--threads", type=int, default=None, help="CPU: torch threads")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (each profiles its own kernels)")
    ap.add_argument("--host-steps", type=int, default=0,
                    help="then time N more steps' host work (schedule + enqueue, from the engine's "
                         "timing) and run N under cProfile: where the host time goes")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args()

    from podserve.config import CacheConfig, EngineConfig, ParallelConfig, SchedulerConfig
    from podserve.engine.engine import Engine
    from podserve.executor.profiler import format_summary
    from podserve.request import SamplingParams

    cuda = args.device.startswith("cuda")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    engine = Engine(EngineConfig(
        model=args.model, device=args.device, dtype=args.dtype, attention="triton" if cuda else "torch", max_model_len=4096,
        scheduler=SchedulerConfig(chunk_size=2048, max_num_seqs=args.batch),
        parallel=ParallelConfig(tensor_parallel_size=args.tp),
        cache=CacheConfig(num_blocks=None if cuda else 4096)))
    try:
        params = SamplingParams(max_tokens=10_000, temperature=0.0, ignore_eos=True)
        ids = min(1000, engine.model_config.vocab_size - 2)
        for i in range(args.batch):
            engine.add_request([(7 * i + j) % ids + 2 for j in range(args.prompt_tokens)], params)
        while any(r.is_prefill for r in engine.scheduler.running) or engine.scheduler.waiting:
            engine.step()
        for _ in range(3):
            engine.step()
        engine.start_profile()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        summaries = engine.stop_profile()  # waits for the steps in flight
        wall = (time.perf_counter() - t0) / args.steps
        host = host_profile(engine, args.host_steps) if args.host_steps else None
    finally:
        engine.close()
    print(f"{args.model} decode x{args.batch} @ {args.prompt_tokens}+ ctx, TP={args.tp}: wall {wall * 1e3:.2f} ms/step")
    for rank, summary in enumerate(summaries):
        print(format_summary(summary, f"rank {rank}: "))
    if host:
        print(json.dumps({k: v for k, v in host.items() if k != "cprofile"}))
        print(host["cprofile"])
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"profile_step_tp{args.tp}.json").write_text(json.dumps({
            "model": args.model, "batch": args.batch, "prompt_tokens": args.prompt_tokens, "tp": args.tp,
            "wall_ms": wall * 1e3, "ranks": summaries, "host": host}, indent=1))


def host_profile(engine, steps: int) -> dict:
    """Median host time per step (schedule + enqueue, the engine's ``timing.cpu_s``) and
    period (step start to the next), then a cProfile of as many steps by own time."""
    import cProfile
    import io
    import pstats
    import statistics

    cpu, period = [], []
    t = time.perf_counter()
    for _ in range(steps):
        engine.step()
        now = time.perf_counter()
        period.append(now - t)
        t = now
        timing = getattr(engine.last_output, "timing", None)
        if timing is not None and timing.cpu_s is not None:
            cpu.append(timing.cpu_s)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        engine.step()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
    return {"steps": steps, "cpu_ms_median": statistics.median(cpu) * 1e3 if cpu else None,
            "period_ms_median": statistics.median(period) * 1e3, "cprofile": text.getvalue()}


if __name__ == "__main__":
    main()
