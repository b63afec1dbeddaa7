"""What mapping pages on demand costs the engine over virtual KV (issue 7: "background
mapping keeps the step time within 1% of a run whose pages were all mapped in advance").

    python3 benchmarks/vattn_mapping_overhead.py --trace .gpu/arxiv.csv          # one GPU, ~2 min
    python benchmarks/vattn_mapping_overhead.py --device cpu --model tiny-llama --smoke

One engine with ``--kv virtual`` runs the same offline workload twice. The first run maps
every page as its requests grow; freed slots keep their pages (deferred reclamation) and the
second run's requests land on them by best fit, so it runs with its pages already mapped
(the pool's counters show how many it still had to map). ``--repeats`` alternates further
pairs (idle pages reclaimed before each mapping run), so a mapping run also follows a
premapped one and run order no longer favours the premapped side. Each mapping mode
(``--modes``: after-enqueue, thread, sync) gets its own engine. Reports throughput, step-time
medians and mapping counters per run, and the first run's step time relative to the second.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--attention", default=None, help="default: triton on CUDA, torch on CPU")
    ap.add_argument("--trace", default="arxiv")
    ap.add_argument("--modes", default="enqueue,thread,sync")
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--max-prompt-tokens", type=int, default=7168)
    ap.add_argument("--max-output-tokens", type=int, default=256)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--max-num-seqs", type=int, default=128)
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=1, help="mapping/premapped pairs per engine (later pairs follow a premapped run)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)
    if args.attention is None:
        args.attention = "triton" if args.device.startswith("cuda") else "torch"
    if args.smoke:
        args.num_requests, args.max_prompt_tokens, args.max_output_tokens = 6, 200, 8
        args.max_model_len, args.chunk_size, args.max_num_seqs = 512, 64, 8

    import torch

    from podserve.bench.runner import run_workload
    from podserve.bench.workloads import WorkloadConfig, WorkloadRequest, generate
    from podserve.config import CacheConfig, EngineConfig, SchedulerConfig
    from podserve.engine.engine import Engine

    workload = generate(WorkloadConfig(num_requests=args.num_requests, trace=args.trace, arrival="static",
                                       max_prompt_tokens=args.max_prompt_tokens, max_output_tokens=args.max_output_tokens,
                                       length_scale=0.05 if args.smoke else 1.0, seed=0))
    out_tokens = sum(w.num_output_tokens for w in workload)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device, "args": vars(args), "modes": {}}
    cache_kw = {"num_blocks": 64} if args.smoke else {}
    for mode in args.modes.split(","):
        cache = CacheConfig(kv_layout="virtual", kv_background_map=mode != "sync", kv_map_thread=mode == "thread", **cache_kw)
        engine = Engine(EngineConfig(model=args.model, device=args.device, dtype="auto", attention=args.attention,
                                     max_model_len=args.max_model_len, cache=cache,
                                     scheduler=SchedulerConfig(chunk_size=args.chunk_size, max_num_seqs=args.max_num_seqs)))
        pool = engine.runner.kv_pool
        # Warm-up (kernel compilation, graph paths), then give every page back: the first
        # measured run starts with nothing mapped but the anchor.
        run_workload(engine, [WorkloadRequest(0.0, 64, 4) for _ in range(4)], detokenize=False)
        engine.kv.reclaim_idle()
        runs = []
        for rep, label in [(r, lab) for r in range(args.repeats) for lab in ("mapping", "premapped")]:
            if label == "mapping" and rep:
                engine.kv.reclaim_idle()  # unmap everything idle: this run maps its pages again
            before = dict(pool.stats)
            run = run_workload(engine, workload, detokenize=False)
            s = run.collector.summary()
            by_kind = s["iterations"]["duration_by_kind"]
            runs.append({"run": label, "repeat": rep, "output_tok_s": out_tokens / run.wall_s, "wall_s": run.wall_s,
                         "step_p50_ms": {k: (v["p50"] * 1e3 if v and v.get("p50") is not None else None) for k, v in by_kind.items()},
                         "step_mean_ms": s["iterations"]["duration"]["mean"] * 1e3,
                         "pool": {k: pool.stats[k] - before.get(k, 0) for k in pool.stats}})
            print(f"[{mode}] {label}: {runs[-1]['output_tok_s']:.0f} out tok/s, step mean {runs[-1]['step_mean_ms']:.2f} ms, "
                  f"pages mapped {runs[-1]['pool']['pages_mapped']}, sync map {runs[-1]['pool']['sync_map_s'] * 1e3:.1f} ms, "
                  f"ahead map {runs[-1]['pool']['background_map_s'] * 1e3:.1f} ms", flush=True)
        ratios = [runs[2 * r]["step_mean_ms"] / runs[2 * r + 1]["step_mean_ms"] for r in range(args.repeats)]
        later = [runs[k]["step_mean_ms"] / runs[k - 1]["step_mean_ms"] for k in range(2, len(runs), 2)]
        results["modes"][mode] = {"runs": runs, "mean_step_ratio": ratios[0], "ratios_by_repeat": ratios,
                                  "mapping_vs_preceding_premapped": later}
        engine.close() if hasattr(engine, "close") else None
        del engine, pool
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "vattn_mapping.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nvirtual KV mapping overhead on {device} ({args.model}, {args.num_requests} requests at t=0)")
    print(f"{'mode':<9}{'run':<11}{'tok/s':>8}{'mean step ms':>14}{'pages mapped':>14}{'sync map ms':>13}")
    for mode, m in results["modes"].items():
        for r in m["runs"]:
            print(f"{mode:<9}{r['run']:<11}{r['output_tok_s']:>8.0f}{r['step_mean_ms']:>14.2f}{r['pool']['pages_mapped']:>14}"
                  f"{r['pool']['sync_map_s'] * 1e3:>13.1f}")
        print(f"{'':<9}mean step, mapping / following premapped run, per repeat: "
              + ", ".join(f"{x:.3f}" for x in m["ratios_by_repeat"])
              + ("; mapping / preceding premapped run: " + ", ".join(f"{x:.3f}" for x in m["mapping_vs_preceding_premapped"])
                 if m["mapping_vs_preceding_premapped"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
