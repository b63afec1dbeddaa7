"""SLO-aware token budget vs fixed chunk sizes: capacity under a TBT SLO in simulation, and
one check point in the real engine (numbers for docs/benchmarks-sim.md).

    PYTHONPATH=. python -m podserve.entrypoints.cli profile --quick --threads 1 --clock cpu --output-dir profiles/smol-cpu
    PYTHONPATH=. python benchmarks/slo_budget_check.py --profile profiles/smol-cpu --tbt-slo 1.0 --ttft-slo 10

1. Simulated capacity (highest Poisson QPS with P99 TTFT and P99 TBT within the SLOs) of
   sarathi with each fixed chunk size and with the SLO-aware budget (``--tbt-slo``,
   capped at the largest chunk), on the profile's cost model.
2. Engine check: at the best fixed chunk's simulated capacity (or ``--engine-qps``), one
   Poisson workload through the real engine and the simulator, with that chunk and with the
   budget (``SchedulerConfig.tbt_slo`` + the profile, as ``podserve bench --tbt-slo --profile``
   runs it): P99 TTFT/TBT and verdicts side by side.
   One torch thread; ``--clock cpu`` (default) times the engine in its thread's CPU time,
   what a dedicated core would show on a shared machine (``podserve.bench.clock``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", required=True, help="profile directory of the model on this CPU")
    ap.add_argument("--tbt-slo", type=float, required=True, help="P99 TBT bound (s), also the budget's target")
    ap.add_argument("--ttft-slo", type=float, required=True, help="P99 TTFT bound (s)")
    ap.add_argument("--chunk-sizes", default="256,512,1024,2048")
    ap.add_argument("--num-requests", type=int, default=60, help="requests per simulated probe")
    ap.add_argument("--engine-requests", type=int, default=40, help="requests of the engine check")
    ap.add_argument("--length-scale", type=float, default=0.1)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--qps-start", type=float, default=0.2)
    ap.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--engine-qps", default=None,
                    help="comma-separated QPS of the engine checks (default: the best fixed chunk's simulated capacity)")
    ap.add_argument("--output", default=None, help="write everything as JSON here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from podserve.bench.workloads import WorkloadConfig, generate
    from podserve.config import EngineConfig, SchedulerConfig
    from podserve.sim.cache import fitted_profile
    from podserve.sim.fidelity import run_engine, run_sim
    from podserve.sim.profile_io import load_profile
    from podserve.sim.search import SearchPoint, SearchTask, evaluate
    from podserve.sim.slo_watch import LatencySLO

    t0, c0 = time.perf_counter(), time.process_time()
    model = load_profile(args.profile).meta["model"]
    fitted = fitted_profile(args.profile)
    slo = LatencySLO(ttft_s=args.ttft_slo, tbt_s=args.tbt_slo)
    wcfg = WorkloadConfig(num_requests=args.num_requests, trace="arxiv", length_scale=args.length_scale, seed=0)
    chunks = [int(c) for c in args.chunk_sizes.split(",")]

    def capacity(chunk: int, budget: bool = False) -> dict:
        point = SearchPoint(model, args.profile, 1, 1, 1, "sarathi", chunk, args.max_num_seqs, tbt_budget=budget)
        return evaluate(SearchTask(point, wcfg, slo, tolerance=args.tolerance, qps_start=args.qps_start,
                                   max_model_len=args.max_model_len))

    sim = {f"chunk {c}": capacity(c) for c in chunks}
    sim["slo budget"] = capacity(max(chunks), budget=True)
    print(f"simulated capacity (P99 TTFT <= {slo.ttft_s} s, P99 TBT <= {slo.tbt_s} s, {args.num_requests} requests/probe):")
    for name, r in sim.items():
        print(f"  {name:<12} {r.get('capacity_qps', 0.0):7.3f} QPS   P99 TTFT {r.get('p99_ttft_s') or float('nan'):7.3f} s"
              f"   P99 TBT {r.get('p99_tbt_s') or float('nan'):6.3f} s")
    best_chunk = max(chunks, key=lambda c: sim[f"chunk {c}"].get("capacity_qps", 0.0))
    fixed_qps = sim[f"chunk {best_chunk}"].get("capacity_qps", 0.0)
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "load_average": os.getloadavg()[0], "args": vars(args), "simulated": sim, "best_fixed_chunk": best_chunk,
           "engine": {}}
    points = [float(q) for q in args.engine_qps.split(",")] if args.engine_qps else [fixed_qps]
    configs = {f"chunk {best_chunk}": SchedulerConfig(chunk_size=best_chunk, max_num_seqs=args.max_num_seqs),
               "slo budget": SchedulerConfig(chunk_size=max(chunks), max_num_seqs=args.max_num_seqs, tbt_slo=args.tbt_slo)}
    for qps in ([] if args.skip_engine else [q for q in points if q > 0]):
        # The same requests through the simulator and the engine: a P99 over a few hundred
        # TBT samples flips with the sample, so both must see the identical workload.
        workload = generate(WorkloadConfig(num_requests=args.engine_requests, trace="arxiv", length_scale=args.length_scale,
                                           qps=qps, seed=1))
        runs = {}
        for name, sched in configs.items():
            config = EngineConfig(max_model_len=args.max_model_len, scheduler=sched, profile=args.profile)
            engine, run = run_engine(config, workload, clock=args.clock)
            predicted = run_sim(fitted, engine, workload).collector.summary()
            s = run.collector.summary()
            runs[name] = {"engine": {"p99_ttft_s": s["ttft"]["p99"], "p99_tbt_s": s["tbt"]["p99"], "passed": slo.check(s)},
                          "simulated": {"p99_ttft_s": predicted["ttft"]["p99"], "p99_tbt_s": predicted["tbt"]["p99"],
                                        "passed": slo.check(predicted)},
                          "budget_scale": engine.token_budget.scale if engine.token_budget else None, "wall_s": run.wall_s}
            del engine
        print(f"at {qps:.3f} QPS ({args.engine_requests} requests, clock {args.clock}; the best fixed chunk's simulated "
              f"capacity is {fixed_qps:.3f} QPS):", flush=True)
        for name, r in runs.items():
            for side in ("simulated", "engine"):
                x = r[side]
                print(f"  {name:<12} {side:<9} P99 TTFT {x['p99_ttft_s']:7.3f} s   P99 TBT {x['p99_tbt_s']:6.3f} s   "
                      f"{'meets' if x['passed'] else 'misses'} the SLO", flush=True)
        out["engine"][f"{qps:.3f} QPS"] = runs
    print(f"load average {os.getloadavg()[0]:.1f}, {time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(out, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
