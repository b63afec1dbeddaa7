"""CPU fidelity of the simulator against the engine (numbers for docs/benchmarks-sim.md).

    PYTHONPATH=. python benchmarks/sim_fidelity.py --num-requests 32 --qps 0.8 --length-scale 0.05

Profiles the model on this CPU (quick grid, one torch thread), runs the same shrunken
arxiv workload through the engine and the simulator, and prints the comparison.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct")
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--qps", type=float, default=0.8)
    ap.add_argument("--length-scale", type=float, default=0.05)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--scheduler", default="sarathi")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile-dir", default=None)
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="cpu: time profile and engine in their thread's CPU time, idle skipped (a dedicated core's view)")
    ap.add_argument("--engine-runs", type=int, default=1,
                    help="run the engine this many times and compare the median of each number")
    args = ap.parse_args(argv)

    from podserve.bench.workloads import WorkloadConfig, generate
    from podserve.config import SchedulerConfig
    from podserve.sim.fidelity import run_fidelity

    workload = generate(WorkloadConfig(num_requests=args.num_requests, trace="arxiv", length_scale=args.length_scale,
                                       qps=args.qps, seed=args.seed))
    t0, c0 = time.perf_counter(), time.process_time()
    report = run_fidelity(args.model, workload, scheduler=SchedulerConfig(policy=args.scheduler, chunk_size=args.chunk_size,
                                                                          max_num_seqs=32), profile_dir=args.profile_dir,
                          clock=args.clock, engine_runs=args.engine_runs)
    print(f"date {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}, device: cpu "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 torch thread), "
          f"load average {os.getloadavg()[0]:.1f}, clock {args.clock}, total {time.perf_counter() - t0:.0f}s wall, "
          f"{time.process_time() - c0:.0f}s CPU")
    print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
