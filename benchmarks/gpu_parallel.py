"""Tensor and pipeline parallelism on GPUs (offline: every request at t=0).

Three parts, each optional (--parts), on a random-weight preset (Llama-3-8B shapes by default):

- tokens: greedy tokens of TP=--tp and PP=--pp against TP=1 on --check-prompts prompts, in
  --check-dtype (float32 by default: bf16 rounding of near-flat random logits flips argmaxes
  whatever the parallelism, so bf16 equality says little);
- throughput: output tokens/s of TP=1 and TP=--tp on a decode-heavy workload (fixed
  --decode-prompt-tokens prompts, --decode-output-tokens outputs);
- bubbles: PP=--pp on the arxiv trace, per scheduler (--schedulers) and per number of
  micro-batches in flight (--pipeline-microbatches, e.g. ``default,pp+1``): pipeline bubble
  fraction (1 - stage busy time / (stages x time with work in flight)) and throughput;
  requests all at t=0 (--arrival static) or Poisson at --qps.

Writes JSON to --out (default $OUT/parallel.json; rewritten after every run, so a cut-off
run keeps what it measured) and prints a compact table last. Runs on CPU with gloo too:

    python benchmarks/gpu_parallel.py --device cpu --model tiny-llama --smoke
    python benchmarks/gpu_parallel.py --trace PATH/arxiv...csv      # 2 GPUs, NCCL
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import time
import traceback
from pathlib import Path


def engine_config(args, *, tp=1, pp=1, scheduler="sarathi", dtype="auto", kv_cache_memory=None, attention=None,
                  enforce_eager=False, async_scheduling=True, custom_all_reduce=True, pipeline_microbatches=None):
    from podserve.config import CacheConfig, EngineConfig, ParallelConfig, SchedulerConfig

    return EngineConfig(
        model=args.model, device=args.device, dtype=dtype, attention=attention or args.attention, max_model_len=args.max_model_len,
        enforce_eager=enforce_eager,
        scheduler=SchedulerConfig(policy=scheduler, chunk_size=args.chunk_size, max_num_seqs=args.max_num_seqs),
        cache=CacheConfig(block_size=16, gpu_memory_utilization=args.gpu_memory_utilization, kv_cache_memory=kv_cache_memory),
        parallel=ParallelConfig(tensor_parallel_size=tp, pipeline_parallel_size=pp, async_scheduling=async_scheduling,
                                custom_all_reduce=custom_all_reduce, pipeline_microbatches=pipeline_microbatches),
    )


def build(config):
    from podserve.engine.engine import Engine

    _free_memory()  # a previous in-process (tp=1) engine must not count against the next one's KV
    t0 = time.perf_counter()
    engine = Engine(config)
    return engine, time.perf_counter() - t0


def release(engine) -> None:
    engine.close()
    _free_memory()


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def greedy_tokens(engine, prompts, max_tokens: int) -> list[list[int]]:
    from podserve.request import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    ids = [engine.add_request(p, params).request_id for p in prompts]
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
    return [done[i] for i in ids]


def compare(ref: list[list[int]], got: list[list[int]]) -> dict:
    """Sequences equal, and for each, how many leading tokens agree."""
    prefix = []
    for a, b in zip(ref, got):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        prefix.append(n)
    return {"sequences_equal": sum(a == b for a, b in zip(ref, got)), "num_sequences": len(ref),
            "equal_prefix_tokens": prefix, "tokens_per_sequence": len(ref[0]) if ref else 0}


def part_tokens(args, record) -> None:
    from podserve.bench.workloads import WorkloadRequest

    shape = [WorkloadRequest(0.0, 16 + 37 * i, args.check_tokens) for i in range(args.check_prompts)]
    layouts = [(1, 1)] + [c for c in ((args.tp, 1), (1, args.pp)) if c != (1, 1)]
    reference = None
    for tp, pp in layouts:
        label = f"tokens tp{tp} pp{pp} {args.check_dtype}"
        try:
            config = engine_config(args, tp=tp, pp=pp, dtype=args.check_dtype, kv_cache_memory=args.check_kv_bytes,
                                   attention=args.check_attention)
            tokens, startup, wall, _ = _tokens_of(config, shape, args.check_tokens)
            r = {"part": "tokens", "tp": tp, "pp": pp, "dtype": args.check_dtype, "startup_s": startup, "wall_s": wall}
            if reference is None:
                reference = tokens
            else:
                r.update(compare(reference, tokens))
        except Exception as e:
            r = {"part": "tokens", "tp": tp, "pp": pp, "error": _error(e)}
        record(label, r)
    if args.tp > 1:
        # Tensor-parallel ranks replay captured decode graphs (with their all-reduces inside):
        # same tokens as the same ranks run eagerly, in the serving dtype and kernels.
        eager = None
        for graphs in (False, True):
            label = f"tokens tp{args.tp} {'graphs' if graphs else 'eager'} {args.attention}"
            try:
                config = engine_config(args, tp=args.tp, kv_cache_memory=args.check_kv_bytes, enforce_eager=not graphs)
                tokens, startup, wall, info = _tokens_of(config, shape, args.check_tokens)
                r = {"part": "tokens", "tp": args.tp, "pp": 1, "dtype": "auto", "startup_s": startup, "wall_s": wall, **info}
                if eager is None:
                    eager = tokens
                else:
                    r.update(compare(eager, tokens))
                    r["reference"] = "eager"
            except Exception as e:
                r = {"part": "tokens", "tp": args.tp, "pp": 1, "error": _error(e)}
            record(label, r)


def _tokens_of(config, shape, max_tokens: int):
    """(greedy tokens, startup s, generation s) of a fresh engine, released on return."""
    from podserve.bench.workloads import prompt_token_ids

    engine, startup = build(config)
    try:
        prompts = prompt_token_ids(shape, engine.model_config.vocab_size, 0)
        t0 = time.perf_counter()
        tokens = greedy_tokens(engine, prompts, max_tokens)
        return tokens, startup, time.perf_counter() - t0, _graph_info(engine)
    finally:
        release(engine)


def _graph_info(engine) -> dict:
    """Whether the engine's ranks (or its one runner) replay CUDA graphs, and what start-up skipped."""
    runner = engine.runner
    if hasattr(runner, "cuda_graphs"):
        return {"cuda_graphs": runner.cuda_graphs, "one_shot_all_reduce": runner.one_shot_all_reduce,
                "fused_all_reduce": runner.fused_all_reduce,
                "startup_errors": runner.startup_errors}
    return {"cuda_graphs": getattr(runner, "graphs", None) is not None, "startup_errors": getattr(runner, "startup_errors", [])}


def run_workload_result(args, config, workload, part: str) -> dict:
    from podserve.bench.runner import run_workload

    engine, startup = build(config)
    try:
        warm = [w.__class__(0.0, 64, 4) for w in workload[:4]]
        run_workload(engine, warm)
        timings = getattr(engine.runner, "worker_timings", None)
        first = len(timings) if timings is not None else 0
        run = run_workload(engine, workload)
        worker = _worker_split(list(timings)[first:]) if timings is not None else None
    finally:
        kv_blocks = engine.kv.num_blocks
        preemptions = engine.scheduler.num_preemptions
        info = _graph_info(engine)
        release(engine)
    summary = run.collector.summary()
    out_tokens = sum(w.num_output_tokens for w in workload)
    par = config.parallel
    from podserve.config import pipeline_depth

    return {
        "part": part, "tp": par.tensor_parallel_size, "pp": par.pipeline_parallel_size,
        "pipeline_microbatches": pipeline_depth(par.pipeline_parallel_size, par.pipeline_microbatches),
        "pipeline_microbatches_default": par.pipeline_microbatches is None,
        "scheduler": config.scheduler.policy, "startup_s": startup, "wall_s": run.wall_s,
        "output_tok_s": out_tokens / run.wall_s,
        "total_tok_s": sum(w.num_prompt_tokens + w.num_output_tokens for w in workload) / run.wall_s,
        "num_iterations": len(run.collector.iterations), "kv_blocks": kv_blocks, "preemptions": preemptions,
        "bubble_fraction": (summary.get("pipeline") or {}).get("bubble_fraction"),
        "stage_utilization": (summary.get("pipeline") or {}).get("stage_utilization"),
        "decode_step_p50_s": ((summary.get("iterations") or {}).get("duration_by_kind", {}).get("decode") or {}).get("p50"),
        "worker_split_p50": worker,
        **info,
        "summary": summary,
    }


def _worker_split(steps: list[list[dict]]) -> list[dict] | None:
    """Per stage leader, the median of each part of its per-batch time (seconds)."""
    import statistics

    if not steps:
        return None
    out = []
    for stage in range(len(steps[0])):
        keys = steps[0][stage].keys()
        out.append({k: statistics.median(v) if (v := [st[stage][k] for st in steps if st[stage].get(k) is not None]) else None
                    for k in keys})
    return out


def part_throughput(args, record) -> None:
    from podserve.bench.workloads import WorkloadConfig, generate

    workload = generate(WorkloadConfig(
        num_requests=args.decode_requests, lengths="fixed", prompt_tokens=args.decode_prompt_tokens,
        output_tokens=args.decode_output_tokens, arrival="static", seed=0))
    # TP=1; TP=N as served (asynchronous scheduling, reductions fused into the residual add +
    # norm over symmetric memory); the same with the one-shot all-reduce unfused; with NCCL
    # all-reduces only; synchronous. --throughput-variants picks among them.
    table = {"tp1": (1, True, True, True), "async": (args.tp, True, True, True),
             "unfused": (args.tp, True, True, False), "nccl": (args.tp, True, False, False),
             "sync": (args.tp, False, True, True)}
    names = [v.strip() for v in args.throughput_variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in table]
    if unknown:
        raise SystemExit(f"--throughput-variants: unknown {unknown}; choose from {sorted(table)}")
    for name in names:
        tp, overlap, custom_ar, fused = table[name]
        if tp == 1 and name != "tp1":
            continue
        label = f"throughput tp{tp} decode-heavy" + ("" if tp == 1 else (" async" if overlap else " sync")
                                                     + ("" if custom_ar else " nccl-only")
                                                     + ("" if fused or not custom_ar else " unfused"))
        # Workers read it when they import podserve.distributed.allreduce (after this point).
        os.environ["PODSERVE_FUSED_ALLREDUCE"] = "1" if fused else "0"
        try:
            config = engine_config(args, tp=tp, async_scheduling=overlap, custom_all_reduce=custom_ar)
            r = run_workload_result(args, config, workload, "throughput")
            r["async_scheduling"] = overlap
            r["custom_all_reduce"] = custom_ar
            r["fused_all_reduce_env"] = fused
        except Exception as e:
            r = {"part": "throughput", "tp": tp, "pp": 1, "error": _error(e)}
        finally:
            os.environ.pop("PODSERVE_FUSED_ALLREDUCE", None)
        record(label, r)


def part_bubbles(args, record) -> None:
    from podserve.bench.workloads import WorkloadConfig, generate

    workload = generate(WorkloadConfig(
        num_requests=args.num_requests, lengths="trace", trace=args.trace, arrival=args.arrival, qps=args.qps,
        max_prompt_tokens=args.max_prompt_tokens, max_output_tokens=args.max_output_tokens,
        length_scale=args.length_scale, seed=0))
    for spec in args.pipeline_microbatches.split(","):
        from podserve.config import microbatches_of

        microbatches = microbatches_of(spec, args.pp)
        for scheduler in args.schedulers.split(","):
            label = f"bubbles pp{args.pp}" + ("" if microbatches is None else f" mb{microbatches}") + f" {scheduler}"
            try:
                config = engine_config(args, pp=args.pp, scheduler=scheduler, pipeline_microbatches=microbatches)
                r = run_workload_result(args, config, workload, "bubbles")
            except Exception as e:
                r = {"part": "bubbles", "tp": 1, "pp": args.pp, "scheduler": scheduler,
                     "pipeline_microbatches": microbatches, "error": _error(e)}
            record(label, r)


def _error(e: Exception) -> str:
    return traceback.format_exc()[-3000:]


def table(runs: list[dict]) -> str:
    lines = [f"{'run':<34}{'out tok/s':>11}{'wall s':>9}{'start s':>9}{'bubble':>9}  notes"]
    base = {}
    for label, r in runs:
        if "error" in r:
            lines.append(f"{label:<34}  ERROR {r['error'].strip().splitlines()[-1][:90]}")
            continue
        note = ""
        if r["part"] == "tokens" and "sequences_equal" in r:
            note = (f"{r['sequences_equal']}/{r['num_sequences']} sequences equal to {r.get('reference', 'tp1')} "
                    f"(equal prefixes {r['equal_prefix_tokens']})")
        if r["part"] == "throughput":
            base.setdefault("tp1", r["output_tok_s"] if r["tp"] == 1 else None)
            if r["tp"] != 1 and base.get("tp1"):
                note = f"{r['output_tok_s'] / base['tp1']:.2f}x tp1"
        if r["part"] == "bubbles" and r.get("stage_utilization"):
            note = "stage util " + ", ".join(f"{u:.0%}" for u in r["stage_utilization"])
        if "cuda_graphs" in r and r["part"] != "bubbles":
            note += f" graphs={'yes' if r['cuda_graphs'] else 'no'}"
            if r.get("decode_step_p50_s"):
                note += f", decode step p50 {r['decode_step_p50_s'] * 1e3:.1f} ms"
        tok_s = f"{r['output_tok_s']:.0f}" if "output_tok_s" in r else "-"
        bubble = f"{r['bubble_fraction']:.1%}" if r.get("bubble_fraction") is not None else "-"
        lines.append(f"{label:<34}{tok_s:>11}{r['wall_s']:>9.1f}{r['startup_s']:>9.1f}{bubble:>9}  {note}")
    by_depth: dict[int, dict[str, float]] = {}  # micro-batches in flight -> scheduler -> bubble fraction
    for _, r in runs:
        if r.get("part") == "bubbles" and r.get("bubble_fraction") is not None:
            by_depth.setdefault(r["pipeline_microbatches"], {})[r["scheduler"]] = r["bubble_fraction"]
    for depth, bubbles in by_depth.items():
        if "sarathi" in bubbles and "vllm" in bubbles and bubbles["sarathi"] > 0:
            lines.append(f"bubble fraction vllm / sarathi, {depth} micro-batches in flight: "
                         f"{bubbles['vllm'] / bubbles['sarathi']:.2f}x")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--device", default="cuda", help="cuda (NCCL), or cpu (gloo) to smoke-test with a tiny preset")
    ap.add_argument("--attention", default=None, help="attention backend (default: triton on cuda, torch on cpu)")
    ap.add_argument("--parts", default="tokens,throughput,bubbles")
    ap.add_argument("--throughput-variants", default="tp1,async,unfused,nccl",
                    help="throughput part: any of tp1, async (as served: fused reductions), unfused (one-shot "
                         "all-reduce, then add + norm), nccl (NCCL all-reduces only), sync (no async scheduling)")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--pp", type=int, default=2)
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--check-prompts", type=int, default=4)
    ap.add_argument("--check-tokens", type=int, default=32)
    ap.add_argument("--check-dtype", default="float32")
    ap.add_argument("--check-attention", default="torch",
                    help="attention of the float32 token check (Triton's tiles do not fit shared memory in float32)")
    ap.add_argument("--check-kv-bytes", type=int, default=2 << 30, help="KV pool of the token-check engines (bytes per rank)")
    ap.add_argument("--decode-requests", type=int, default=256)
    ap.add_argument("--decode-prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-output-tokens", type=int, default=512)
    ap.add_argument("--trace", default="arxiv")
    ap.add_argument("--schedulers", default="sarathi,vllm")
    ap.add_argument("--pipeline-microbatches", default="default",
                    help="bubbles part: comma list of micro-batches in flight, each run per scheduler: default (the "
                         "engine's), pp+K, or an integer >= --pp; e.g. default,pp+1 (default: default)")
    ap.add_argument("--num-requests", type=int, default=128)
    ap.add_argument("--arrival", default="static", choices=["static", "poisson"],
                    help="bubbles part: all requests at t=0, or Poisson arrivals at --qps (prefills then interleave with decodes)")
    ap.add_argument("--qps", type=float, default=4.0)
    ap.add_argument("--max-prompt-tokens", type=int, default=7168)
    ap.add_argument("--max-output-tokens", type=int, default=512)
    ap.add_argument("--length-scale", type=float, default=1.0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes for a CPU check of the script itself")
    ap.add_argument("--out", default=None, help="JSON path (default: $OUT/parallel.json, else none)")
    args = ap.parse_args()
    if args.attention is None:
        args.attention = "triton" if args.device.startswith("cuda") else "torch"
    if args.smoke:
        args.max_model_len, args.max_num_seqs, args.chunk_size = 512, 16, 64
        args.check_prompts, args.check_tokens, args.check_kv_bytes = 2, 6, 16 << 20
        args.decode_requests, args.decode_prompt_tokens, args.decode_output_tokens = 8, 16, 16
        args.num_requests, args.max_prompt_tokens, args.max_output_tokens, args.length_scale = 8, 200, 16, 0.05
    out = args.out or (str(Path(os.environ["OUT"]) / "parallel.json") if os.environ.get("OUT") else None)

    import torch

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    results = {"date": time.strftime("%Y-%m-%d"), "device": device,
               "num_gpus": torch.cuda.device_count() if args.device.startswith("cuda") else 0,
               "torch": torch.__version__, "args": vars(args), "runs": []}
    runs: list[tuple[str, dict]] = []

    def record(label: str, r: dict) -> None:
        runs.append((label, r))
        results["runs"].append({"label": label, **r})
        print(json.dumps({"label": label, **{k: v for k, v in r.items() if k != "summary"}}, default=str), flush=True)
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(results, indent=2, default=str))

    parts = {"tokens": part_tokens, "throughput": part_throughput, "bubbles": part_bubbles}
    for name in args.parts.split(","):
        parts[name.strip()](args, record)
    print()
    print(table(runs))
    if out:
        print(f"results in {out}")


if __name__ == "__main__":
    main()
