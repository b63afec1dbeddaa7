"""Re-simulate a recorded GPU fidelity run against its recorded engine measurements.

    PYTHONPATH=. python benchmarks/sim_fidelity_replay.py \
        --results docs/data/gpu-2026-11-22b/sim_fidelity_gpu_run12.json \
        --profile docs/data/gpu-2026-11-22b/profile-llama-3-8b-h100 --trace .gpu/arxiv.csv

``benchmarks/gpu_sim_fidelity.py`` stores each engine run's summary and the profile it
fitted. This rebuilds the same workloads (same trace, clipping and seed), simulates them with
the current cost model on that profile, and compares with the stored engine numbers: how a
change to the simulator moves fidelity without a GPU. The engine side is not re-measured,
and the KV block count is not recorded by the run (``--num-kv-blocks``; those runs had no
preemptions, so any count that holds their requests gives the same result).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True)
    ap.add_argument("--profile", required=True, help="profile directory, or the profile.tar.gz a GPU run wrote")
    ap.add_argument("--trace", default=None, help="trace CSV (default: the run's own --trace)")
    ap.add_argument("--num-kv-blocks", type=int, default=27000)
    args = ap.parse_args(argv)

    from podserve.bench.workloads import WorkloadConfig, generate
    from podserve.config import SchedulerConfig
    from podserve.sim.cost_model import CostModel
    from podserve.sim.fidelity import compare
    from podserve.sim.predictors import fit_profile
    from podserve.sim.profile_io import load_profile
    from podserve.sim.simulator import ClusterConfig, Simulator

    recorded = json.load(open(args.results))
    a = recorded["args"]
    profile_path = args.profile
    if profile_path.endswith(".tar.gz"):  # gpu_sim_fidelity.py's archive of its profile directory
        import tarfile
        import tempfile

        where = tempfile.mkdtemp(prefix="podserve-replay-")
        with tarfile.open(profile_path) as tar:
            tar.extractall(where, filter="data")
        profile_path = f"{where}/profile"
    profile = load_profile(profile_path)
    fitted = fit_profile(profile)
    errors = []
    print(f"replaying {args.results} ({recorded['device']}, {recorded['date']}) on {args.profile}")
    for run in recorded["runs"]:
        if "engine" not in run:
            continue
        wl = generate(WorkloadConfig(num_requests=a["num_requests"], trace=args.trace or a["trace"], qps=run["qps"],
                                     max_prompt_tokens=a["max_prompt_tokens"], max_output_tokens=a["max_output_tokens"],
                                     length_scale=a["length_scale"], seed=a["seed"]))
        sched = SchedulerConfig(policy=run["scheduler"], chunk_size=a["chunk_size"], max_num_seqs=a["max_num_seqs"],
                                max_model_len=a["max_model_len"])
        sim = Simulator(ClusterConfig(scheduler=sched), CostModel(fitted), args.num_kv_blocks)
        simulated = sim.run(wl).collector.summary()
        report = compare(run["engine"], simulated)
        errors += [abs(r["error"]) for r in report.rows]
        was = run.get("median_abs_error")
        print(f"{run['scheduler']:<8} {run['qps']:>5.2f} req/s: median abs error {report.median_abs_error:.1%}"
              + (f" (recorded run: {was:.1%})" if was is not None else "")
              + "  " + ", ".join(f"{r['metric'].split(' (')[0]} {r['error']:+.1%}" for r in report.rows))
    if errors:
        print(f"overall median absolute error: {statistics.median(errors):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
