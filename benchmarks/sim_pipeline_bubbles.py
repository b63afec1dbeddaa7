"""Simulated pipeline bubbles per policy (numbers for docs/parallel.md and docs/benchmarks.md §8).

    PYTHONPATH=. python benchmarks/sim_pipeline_bubbles.py [--microbatches pp,pp+1] [--host-gap S | --no-host-gap]

Llama-3-8B shape on the derived H100 profile, PP=2 (the cost model splits the layers over
the stages, as ``podserve simulate --pp 2`` does), arxiv requests clipped to 7168/512
tokens, all at t=0 and at Poisson rates. Prints bubble fraction, stage utilisation,
throughput and latency medians for each policy and each number of micro-batches in flight
(``--microbatches``: ``pp``, ``pp+1``, ..., integers, or ``default`` =
``config.pipeline_depth``). ``--host-gap S`` replaces the cost model's per-iteration host
time (1.5 ms + 8 us per sequence on the derived profile) by S seconds, e.g. the 0.65 ms per
micro-batch that stage 0 sat idle on the H200s (benchmarks.md §8); ``--no-host-gap`` sets
it to zero: what the bubbles would be if the driver's work between a micro-batch's return
and the next submission cost nothing.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import replace


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--profile", default="h100")
    ap.add_argument("--pp", type=int, default=2)
    ap.add_argument("--schedulers", default="sarathi,vllm")
    ap.add_argument("--rates", default="static,3,6", help="comma list: 'static' (all at t=0) or Poisson QPS")
    ap.add_argument("--num-requests", type=int, default=128)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-prompt-tokens", type=int, default=7168)
    ap.add_argument("--max-output-tokens", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--microbatches", default="pp,pp+1",
                    help="comma list of micro-batches in flight: pp, pp+K, an integer, or default")
    ap.add_argument("--host-gap", type=float, default=None, help="constant host seconds per micro-batch")
    ap.add_argument("--no-host-gap", action="store_true", help="--host-gap 0")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from podserve.bench.workloads import WorkloadConfig, generate
    from podserve.config import SchedulerConfig, microbatches_of, pipeline_depth
    from podserve.sim.cache import fitted_profile
    from podserve.sim.cost_model import CostModel
    from podserve.sim.deployment import model_shape, resolve_profile
    from podserve.sim.memory import num_kv_blocks
    from podserve.sim.simulator import ClusterConfig, Simulator

    profile = resolve_profile(args.profile, args.model)
    fitted = fitted_profile(profile)
    _, config = model_shape(args.model, profile)

    host_gap = 0.0 if args.no_host_gap else args.host_gap

    class FixedHostGap(CostModel):
        def iteration_cost(self, batch):
            return replace(super().iteration_cost(batch), host=host_gap)

    cost_cls = CostModel if host_gap is None else FixedHostGap
    blocks = num_kv_blocks(config, fitted.meta, pp=args.pp)
    depths = [pipeline_depth(args.pp, microbatches_of(m, args.pp)) for m in args.microbatches.split(",")]
    rows = []
    for rate in args.rates.split(","):
        static = rate == "static"
        wl = generate(WorkloadConfig(num_requests=args.num_requests, trace="arxiv", arrival="static" if static else "poisson",
                                     qps=1.0 if static else float(rate), max_prompt_tokens=args.max_prompt_tokens,
                                     max_output_tokens=args.max_output_tokens, seed=args.seed))
        for depth, policy in itertools.product(depths, args.schedulers.split(",")):
            sched = SchedulerConfig(policy=policy, chunk_size=args.chunk_size, max_num_seqs=args.max_num_seqs,
                                    max_model_len=8192)
            cluster = ClusterConfig(scheduler=sched, pp=args.pp, pipeline_microbatches=depth)
            sim = Simulator(cluster, cost_cls(fitted, config, 1, args.pp), blocks)
            s = sim.run(wl).collector.summary()
            pipe = s["pipeline"]
            rows.append({"rate": rate, "microbatches": depth, "policy": policy, "bubble_fraction": pipe["bubble_fraction"],
                         "stage_utilization": [float(u) for u in pipe["stage_utilization"]],
                         "output_tok_s": s["throughput_output_tokens_per_s"], "ttft_p50_s": s["ttft"]["p50"],
                         "tbt_p50_s": s["tbt"]["p50"], "tbt_p99_s": s["tbt"]["p99"], "e2e_p50_s": s["e2e"]["p50"]})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    print(f"host gap: {'cost model' if host_gap is None else f'{host_gap * 1e3:.2f} ms per micro-batch'}")
    print(f"{'rate':>7} {'mbs':>3} {'policy':>8} {'bubble':>7} {'util':>11} {'out tok/s':>9} {'TTFT p50':>9} "
          f"{'TBT p50':>8} {'TBT p99':>8}")
    for r in rows:
        util = "/".join(f"{u:.0%}" for u in r["stage_utilization"])
        print(f"{r['rate']:>7} {r['microbatches']:>3} {r['policy']:>8} {r['bubble_fraction']:>7.1%} {util:>11} "
              f"{r['output_tok_s']:>9.0f} {r['ttft_p50_s'] * 1e3:>7.0f}ms {r['tbt_p50_s'] * 1e3:>6.1f}ms "
              f"{r['tbt_p99_s'] * 1e3:>6.1f}ms")
    ratios = {}
    for rate, depth in itertools.product(args.rates.split(","), depths):
        by = {r["policy"]: r["bubble_fraction"] for r in rows if r["rate"] == rate and r["microbatches"] == depth}
        if "sarathi" in by and "vllm" in by and by["sarathi"]:
            ratios[f"{rate}/{depth}"] = by["vllm"] / by["sarathi"]
    if ratios:
        print("vllm/sarathi bubble ratio (rate/micro-batches): " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
