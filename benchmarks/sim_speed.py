"""Speed of the simulator: 10,000 arxiv-trace requests on one replica, from a cached
profile, including fitting the cost model (cold) or loading the cached fit.

    PYTHONPATH=. python benchmarks/sim_speed.py --num-requests 10000 --qps 6

Prints one line per phase and, with --profile-hot-path, where the simulation time goes
(shared scheduler vs simulator), from cProfile.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--profile", default="h100", help="profile directory or derivable device")
    ap.add_argument("--num-requests", type=int, default=10000)
    ap.add_argument("--qps", type=float, default=6.0)
    ap.add_argument("--scheduler", default="sarathi")
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--max-num-seqs", type=int, default=128)
    ap.add_argument("--profile-hot-path", action="store_true")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    c_start = time.process_time()
    from podserve.bench.workloads import WorkloadConfig, generate
    from podserve.config import SchedulerConfig
    from podserve.sim.cache import fitted_profile
    from podserve.sim.cost_model import CostModel
    from podserve.sim.deployment import default_max_model_len, model_shape, resolve_profile
    from podserve.sim.memory import num_kv_blocks
    from podserve.sim.simulator import ClusterConfig, Simulator

    t_import = time.perf_counter()
    profile = resolve_profile(args.profile, args.model)
    t_profile = time.perf_counter()
    c_profile = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PODSERVE_CACHE"] = tmp
        fitted = fitted_profile(profile)  # cold: fits and writes the cache
        t_fit = time.perf_counter()
        c_fit = time.process_time()
        fitted = fitted_profile(profile)  # warm: loads the pickle
        t_cached = time.perf_counter()
        c_cached = time.process_time()
    _, config = model_shape(args.model, profile)
    sched = SchedulerConfig(policy=args.scheduler, chunk_size=args.chunk_size, max_num_seqs=args.max_num_seqs,
                            max_model_len=default_max_model_len(config, profile))
    workload = generate(WorkloadConfig(num_requests=args.num_requests, trace="arxiv", qps=args.qps))
    t_workload = time.perf_counter()
    sim = Simulator(ClusterConfig(scheduler=sched), CostModel(fitted, config), num_kv_blocks(config, fitted.meta))
    t_setup = time.perf_counter()
    if args.profile_hot_path:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        result = prof.runcall(sim.run, workload)
        stats = pstats.Stats(prof)
        total = sum(v[2] for v in stats.stats.values())  # sum of tottime
        by_area: dict[str, float] = {}
        for (path, _, _), v in stats.stats.items():
            area = ("core/scheduler" if "core/scheduler" in path else "core/kv" if "core/kv" in path
                    else "request.py" if path.endswith("request.py") else "metrics" if "metrics" in path
                    else "sim" if "/sim/" in path else "other")
            by_area[area] = by_area.get(area, 0.0) + v[2]
        print("hot path (cProfile tottime share): " + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(by_area.items(), key=lambda kv: -kv[1])))
    else:
        result = sim.run(workload)
    t_sim = time.perf_counter()
    c_sim = time.process_time()
    s = result.collector.summary()
    out = {
        "requests": result.num_requests, "iterations": result.num_iterations,
        "import_s": t_import - t_start, "profile_s": t_profile - t_import, "fit_cold_s": t_fit - t_profile,
        "fit_cached_s": t_cached - t_fit, "workload_s": t_workload - t_cached, "setup_s": t_setup - t_workload,
        "simulate_s": t_sim - t_setup,
        "total_with_cached_fit_s": (t_sim - t_start) - (t_fit - t_profile),
        "total_with_cold_fit_s": (t_sim - t_start) - (t_cached - t_fit),
        # CPU time of this process (fairer than wall on a shared box)
        "cpu_fit_cold_s": c_fit - c_profile,
        "cpu_total_with_cached_fit_s": (c_sim - c_start) - (c_fit - c_profile),
        "cpu_total_with_cold_fit_s": (c_sim - c_start) - (c_cached - c_fit),
        "p50_ttft_s": s["ttft"]["p50"], "p99_tbt_s": s["tbt"]["p99"], "throughput_rps": s["throughput_requests_per_s"],
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
