"""Simulator fidelity on a GPU (issue 8): profile the model here, then run the same
Poisson workloads through the real engine and through the simulator, per policy and rate.

    python3 benchmarks/gpu_sim_fidelity.py --trace .gpu/arxiv.csv            # one H100, ~4-5 min
    python benchmarks/gpu_sim_fidelity.py --device cpu --model tiny-llama --smoke   # CPU check

Steps: ``podserve profile`` on this device in a child process (the engine's own modules,
attention backend and CUDA graphs; graphed decode steps get their own calibration), fit the
cost model; then for each ``--schedulers`` policy one engine (same dtype, attention,
context and graphs as profiled) serves each ``--qps`` rate, and the simulator replays the
same requests with that engine's scheduler config and KV block count. Compared: P50/P90 of
TTFT, TBT, E2E and request throughput (``podserve.sim.fidelity.compare``).

Writes ``$OUT/sim_fidelity_gpu.json`` (rewritten after every run) and the profile under
``$OUT/profile``; prints a compact table last. ``--budget-s`` skips what would not fit.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _profile_child(model, device, attention, max_model_len, grid_name, smoke, directory) -> None:
    from podserve.sim.profiler import ProfileGrid, Profiler

    grid = ProfileGrid.quick() if grid_name == "quick" else None  # None: the device's default grid
    if smoke:
        grid = ProfileGrid(tokens=(1, 8, 64), lm_head_tokens=(1, 8), prefill_q=(16, 64), prefill_prefix=(0, 64),
                           decode_batch=(1, 4), decode_ctx=(32, 128), overhead_batches=(1, 4), engine_prompt_tokens=(16, 64),
                           engine_output_tokens=6, time_budget_s=0.002, passes=1)
    profiler = Profiler(model, device=device, dtype="auto", attention=attention, grid=grid, max_model_len=max_model_len,
                        progress=lambda m: print(f"[profile] {m}", flush=True))
    profiler.run().save(directory)


def _policy_child(arg_dict: dict, policy: str, profile_dir: str, budget_s: float, entries_file: str) -> None:
    """One policy: an engine (as profiled) serves each rate; the simulator replays each."""
    from types import SimpleNamespace

    from podserve.bench.runner import run_workload
    from podserve.bench.workloads import WorkloadConfig, generate
    from podserve.config import CacheConfig, EngineConfig, SchedulerConfig
    from podserve.engine.engine import Engine
    from podserve.sim.fidelity import compare, run_sim
    from podserve.sim.predictors import fit_profile
    from podserve.sim.profile_io import load_profile

    args = SimpleNamespace(**arg_dict)
    t0 = time.perf_counter()
    fitted = fit_profile(load_profile(profile_dir))
    entries = []

    def save():
        Path(entries_file).write_text(json.dumps(entries, default=str))

    sched = SchedulerConfig(policy=policy, chunk_size=args.chunk_size, max_num_seqs=args.max_num_seqs,
                            max_model_len=args.max_model_len)
    engine = Engine(EngineConfig(model=args.model, device=args.device, dtype="auto", attention=args.attention,
                                 max_model_len=args.max_model_len, scheduler=sched, cache=CacheConfig()))
    run_workload(engine, generate(WorkloadConfig(num_requests=4, lengths="fixed", prompt_tokens=64, output_tokens=4,
                                                 arrival="static", seed=args.seed)), detokenize=False)  # warm-up
    for qps in [float(x) for x in args.qps.split(",")]:
        wl = generate(WorkloadConfig(num_requests=args.num_requests, trace=args.trace, qps=qps,
                                     max_prompt_tokens=args.max_prompt_tokens, max_output_tokens=args.max_output_tokens,
                                     length_scale=args.length_scale, seed=args.seed))
        expect = wl[-1].arrival_time + 10.0
        left = budget_s - (time.perf_counter() - t0)
        if left < expect + 10:
            entries.append({"scheduler": policy, "qps": qps, "skipped": f"budget ({left:.0f}s left, needs ~{expect:.0f}s)"})
            save()
            continue
        t_run = time.perf_counter()
        run = run_workload(engine, wl, detokenize=False)
        measured = run.collector.summary()
        simulated = run_sim(fitted, engine, wl).collector.summary()
        report = compare(measured, simulated)
        keys = ("ttft", "tbt", "e2e", "throughput_requests_per_s", "throughput_output_tokens_per_s", "num_preemptions")
        entries.append({"scheduler": policy, "qps": qps, "requests": len(wl), "wall_s": time.perf_counter() - t_run,
                        "median_abs_error": report.median_abs_error, "rows": report.rows,
                        "engine": {k: measured.get(k) for k in keys}, "simulated": {k: simulated.get(k) for k in keys}})
        print(f"[{policy} @ {qps} req/s] median abs error {report.median_abs_error:.1%}\n{report.format()}", flush=True)
        save()
    close = getattr(engine, "close", None)
    if close is not None:
        close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--attention", default=None, help="default: triton on CUDA, torch on CPU")
    ap.add_argument("--trace", default="arxiv")
    ap.add_argument("--schedulers", default="sarathi,vllm")
    ap.add_argument("--qps", default="1.0,2.0", help="Poisson rates (requests/s), comma-separated")
    ap.add_argument("--num-requests", type=int, default=48)
    ap.add_argument("--max-prompt-tokens", type=int, default=7168)
    ap.add_argument("--max-output-tokens", type=int, default=256)
    ap.add_argument("--length-scale", type=float, default=1.0)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--max-num-seqs", type=int, default=128)
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--grid", default="full", choices=["full", "quick"])
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script on CPU in seconds")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)
    if args.attention is None:
        args.attention = "triton" if args.device.startswith("cuda") else "torch"
    if args.smoke:
        args.num_requests, args.max_prompt_tokens, args.max_output_tokens = 6, 96, 8
        args.max_model_len, args.chunk_size, args.max_num_seqs, args.grid = 256, 64, 8, "quick"
        args.length_scale = 0.02
        args.qps = ",".join(args.qps.split(",")[:1])
    t_start = time.perf_counter()

    import torch

    from podserve.sim.predictors import fit_profile
    from podserve.sim.profile_io import load_profile

    out = Path(args.out) if args.out else None
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device_name, "torch": torch.__version__,
               "args": vars(args), "profile": {}, "runs": []}

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    def save() -> None:
        results["elapsed_s"] = time.perf_counter() - t_start
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "sim_fidelity_gpu.json").write_text(json.dumps(results, indent=1, default=str))

    # 1. Profile on this device as `podserve profile` does, in a child process: its engine's
    # KV pool and graph pools are gone when it exits, whatever still references them.
    t0 = time.perf_counter()
    # Profiled into a temporary directory and archived under $OUT as one file: the device tool
    # brings back at most 8 files, fewer than a profile has.
    profile_dir = Path(tempfile.mkdtemp(prefix="podserve-profile-")) / "profile"
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(
        target=_profile_child, args=(args.model, args.device, args.attention, args.max_model_len, args.grid, args.smoke,
                                     str(profile_dir)))
    child.start()
    child.join()
    if child.exitcode != 0:
        results["profile"] = {"error": f"profiling process exited with {child.exitcode}"}
        save()
        return 1
    if out is not None:
        import shutil

        shutil.make_archive(str(out / "profile"), "gztar", root_dir=profile_dir.parent, base_dir="profile")
    profile = load_profile(profile_dir)
    fitted = fit_profile(profile)
    engine_forward = profile.table("engine_forward")
    results["profile"] = {"seconds": time.perf_counter() - t0, "fit_seconds": fitted.fit_seconds,
                          "cuda_graph_max_batch": profile.meta.get("cuda_graph_max_batch"),
                          "engine_steps": len(engine_forward),
                          "graphed_steps": sum(int(float(r.get("graphed") or 0)) for r in engine_forward),
                          "cv_errors": {k: v for k, v in fitted.errors().items()}}
    print(f"profiled in {results['profile']['seconds']:.0f}s ({len(engine_forward)} engine steps, "
          f"{results['profile']['graphed_steps']} graphed)", flush=True)
    save()

    # 2. Engine vs simulator, per policy and rate; each policy's engine in its own process too.
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for policy in args.schedulers.split(","):
        if left() < 40:
            results["runs"].append({"scheduler": policy, "skipped": f"budget ({left():.0f}s left)"})
            continue
        entries_file = Path(tempfile.mkdtemp(prefix="podserve-fid-")) / "entries.json"
        child = ctx.Process(target=_policy_child, args=(vars(args), policy, str(profile_dir), left(), str(entries_file)))
        child.start()
        child.join()
        entries = json.loads(entries_file.read_text()) if entries_file.exists() else []
        if child.exitcode != 0:
            entries.append({"scheduler": policy, "error": f"engine process exited with {child.exitcode}"})
        results["runs"].extend(entries)
        save()
    save()

    # 3. The table.
    done = [r for r in results["runs"] if "rows" in r]
    print(f"\nsimulator fidelity on {device_name} ({args.model}, {args.attention}; profile {results['profile']['seconds']:.0f}s, "
          f"total {time.perf_counter() - t_start:.0f}s)")
    if done:
        metrics = [row["metric"] for row in done[0]["rows"]]
        short = [m.split(" (")[0] for m in metrics]
        print(f"{'policy':<9}{'qps':>6}" + "".join(f"{m:>16}" for m in short) + f"{'median |err|':>14}")
        for r in done:
            errs = "".join(f"{row['error']:>+16.1%}" for row in r["rows"])
            print(f"{r['scheduler']:<9}{r['qps']:>6.2f}{errs}{r['median_abs_error']:>14.1%}")
        import statistics

        overall = statistics.median(abs(row["error"]) for r in done for row in r["rows"])
        results["overall_median_abs_error"] = overall
        print(f"overall median absolute error: {overall:.1%} (target < 5%)")
    for r in results["runs"]:
        if "skipped" in r:
            print(f"skipped {r['scheduler']} {r.get('qps', '')}: {r['skipped']}")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
