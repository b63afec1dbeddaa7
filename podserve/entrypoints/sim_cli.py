"""``podserve profile``, ``podserve simulate`` and ``podserve search``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from podserve.entrypoints.bench_cli import _output_args, _output_dir, _workload_args, _workload_config
from podserve.entrypoints.engine_args import add_engine_args, engine_config_from_args


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _strs(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(subparsers) -> None:
    """Add the ``profile``, ``simulate`` and ``search`` subcommands to the podserve CLI."""
    prof = subparsers.add_parser("profile", help="time the model's operators on this device; write a profile directory")
    prof.add_argument("--model", default=None, help="HF directory, .gguf or preset (default: SmolLM2-135M-Instruct)")
    prof.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    prof.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    prof.add_argument("--attention", default="torch", help="attention backend to profile (default: torch)")
    prof.add_argument("--threads", type=int, default=None, help="torch CPU threads while profiling (serve with the same)")
    prof.add_argument("--quick", action="store_true", help="a small grid (CPU SmolLM2: well under a minute)")
    prof.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                      help="cpu (with --threads 1): time in the profiling thread's CPU time, what a dedicated core would "
                           "take on a shared machine (default: wall)")
    prof.add_argument("--output-dir", default=None, help="default: profiles/<model>-<device>-<date>")
    prof.add_argument("--import-vidur", metavar="DIR", default=None,
                      help="instead of measuring: derive a profile for --model from Vidur's CSVs in DIR "
                           "(compute/<device>/.../mlp.csv + network/) and roofline attention")
    prof.add_argument("--vidur-device", default="h100", help="device folder of --import-vidur (default: h100)")
    prof.add_argument("--add-network", metavar="VIDUR_NETWORK_DIR", default=None,
                      help="add Vidur all_reduce.csv/send_recv.csv (e.g. network/h100_dgx) to the profile written")
    prof.add_argument("--add-all-reduce", metavar="ALLREDUCE_JSON", default=None,
                      help="all-reduce times measured by benchmarks/allreduce.py (the engine's own one-shot/NCCL "
                           "choice, in CUDA graphs); replaces the profile's all_reduce table for that world size")
    prof.set_defaults(func=cmd_profile)

    sim = subparsers.add_parser("simulate", help="simulate a workload on a deployment; same outputs as `podserve bench`")
    add_engine_args(sim)
    _workload_args(sim, arrival=True)
    _output_args(sim)
    _deployment_args(sim)
    sim.add_argument("--tbt-slo", type=float, default=None,
                     help="sarathi: pick each iteration's token budget as the largest whose predicted time <= this "
                          "(seconds); --chunk-size is then the cap. Also drawn on the CDF plot")
    sim.set_defaults(func=cmd_simulate)

    search = subparsers.add_parser("search", help="capacity of every deployment in a grid under P99 TTFT/TBT SLOs")
    _workload_args(search, arrival=False)
    _output_args(search)
    g = search.add_argument_group("search space")
    g.add_argument("--models", default="llama-3-70b", help="comma-separated presets (default: llama-3-70b)")
    g.add_argument("--profiles", default="h100", help="comma-separated profile dirs or derivable devices (default: h100)")
    g.add_argument("--tp", default="1,2,4,8", help="tensor-parallel degrees (default: 1,2,4,8)")
    g.add_argument("--pp", default="1,2,4", help="pipeline-parallel degrees (default: 1,2,4)")
    g.add_argument("--pipeline-microbatches", default="default",
                   help="with pp > 1, micro-batches in flight to try: default, pp+K or integers (e.g. default,pp+1)")
    g.add_argument("--replicas", default="1,2", help="replica counts (default: 1,2)")
    g.add_argument("--schedulers", default="sarathi,vllm,orca", help="policies (default: sarathi,vllm,orca)")
    g.add_argument("--chunk-sizes", default="256,512,1024,2048", help="for chunked policies (default: 256,512,1024,2048)")
    g.add_argument("--max-num-seqs", default="64,128,256", help="batch caps (default: 64,128,256)")
    g.add_argument("--with-slo-budget", action="store_true", help="also try sarathi with the SLO-aware token budget")
    g.add_argument("--max-gpus", type=int, default=None, help="skip deployments with more GPUs than this")
    g.add_argument("--max-model-len", type=int, default=None)
    s = search.add_argument_group("SLOs and execution")
    s.add_argument("--ttft-slo", type=float, default=2.0, help="P99 TTFT bound in seconds (default: 2)")
    s.add_argument("--tbt-slo", type=float, default=0.2, help="P99 TBT bound in seconds (default: 0.2)")
    s.add_argument("--tolerance", type=float, default=0.1, help="bisection stops at (fail - pass) / fail <= this")
    s.add_argument("--max-probes", type=int, default=12)
    s.add_argument("--price-table", default=None,
                   help="$/GPU-hour per profile device, JSON file or 'h100=2.5,cpu=0.1': adds capacity per dollar")
    s.add_argument("--workers", type=int, default=2, help="local processes (default: 2)")
    s.add_argument("--ray-address", default=None, help="run configurations as Ray tasks on this cluster (needs ray)")
    search.set_defaults(func=cmd_search)


def _deployment_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("simulated deployment")
    g.add_argument("--profile", required=True, help="profile directory, or a device to derive one for --model (h100)")
    g.add_argument("--tp", type=int, default=1, help="tensor-parallel degree per replica")
    g.add_argument("--pp", type=int, default=1, help="pipeline-parallel stages per replica")
    g.add_argument("--num-replicas", type=int, default=1)
    g.add_argument("--global-scheduler", default="round_robin", choices=["round_robin", "lor", "random"])
    g.add_argument("--num-kv-blocks", type=int, default=None, help="force the KV block count per replica")
    g.add_argument("--no-cache", action="store_true", help="refit the cost model instead of using the cached fit")


# --- profile ---------------------------------------------------------------------------------
def cmd_profile(args) -> int:
    import datetime

    from podserve.sim.profile_io import load_profile

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.import_vidur:
        from podserve.sim.deployment import model_shape
        from podserve.sim.derive import derive_profile

        name, config = model_shape(args.model or "llama-3-8b")
        profile = derive_profile(name, config, device=args.vidur_device, vidur_dir=Path(args.import_vidur))
    else:
        from podserve.sim.profiler import ProfileGrid, Profiler

        grid = ProfileGrid.quick() if args.quick else None  # None: the device's default grid (longer engine phase on CUDA)
        profile = Profiler(args.model, args.device, args.dtype, args.attention, grid, threads=args.threads,
                           clock=args.clock).run()
    if args.add_network:
        from podserve.sim.vidur_import import import_network

        profile.tables["all_reduce"], profile.tables["send_recv"] = import_network(args.add_network)
        profile.meta["network"] = f"imported from Vidur layout: {args.add_network}"
    if args.add_all_reduce:
        from podserve.sim.vidur_import import import_allreduce_benchmark

        rows = import_allreduce_benchmark(args.add_all_reduce)
        worlds = {r["num_workers"] for r in rows}
        kept = [r for r in profile.tables.get("all_reduce", []) if int(r["num_workers"]) not in worlds]
        profile.tables["all_reduce"] = kept + rows
        profile.meta["all_reduce"] = f"measured by benchmarks/allreduce.py: {args.add_all_reduce} (world {sorted(worlds)})"
    out = Path(args.output_dir or f"profiles/{profile.meta['model']}-{profile.meta['device']}-{stamp}")
    profile.save(out)
    _print_fit(load_profile(out))
    print(f"profile in {out}/")
    return 0


def _print_fit(profile) -> None:
    from podserve.sim.cache import fitted_profile

    fitted = fitted_profile(profile, use_cache=False)
    print(f"cost model fitted in {fitted.fit_seconds:.2f}s; cross-validated error per operator:")
    for name, e in fitted.errors().items():
        mape = "-" if e["mape"] is None else f"{e['mape']:.1%}"
        p90 = "-" if e["p90_ape"] is None else f"{e['p90_ape']:.1%}"
        print(f"  {name:<26} rows {e['rows']:>5}   MAPE {mape:>7}   P90 APE {p90:>7}")


# --- simulate --------------------------------------------------------------------------------
def cmd_simulate(args) -> int:
    from podserve.bench.report import format_piggyback, format_summary
    from podserve.bench.workloads import generate
    from podserve.sim.cache import fitted_profile
    from podserve.sim.cost_model import CostModel
    from podserve.sim.deployment import default_max_model_len, model_shape, resolve_profile
    from podserve.sim.memory import num_kv_blocks
    from podserve.sim.simulator import ClusterConfig, Simulator
    from podserve.sim.token_budget import SLOTokenBudget

    t0 = time.perf_counter()
    wcfg = _workload_config(args)
    out = _output_dir(args)
    profile = resolve_profile(args.profile, args.model)
    fitted = fitted_profile(profile, use_cache=not args.no_cache)
    name, config = model_shape(args.model, profile)
    engine_config = engine_config_from_args(args)
    sched = replace(engine_config.scheduler, max_model_len=args.max_model_len or default_max_model_len(config, profile))
    cost = CostModel(fitted, config, args.tp, args.pp)
    blocks = num_kv_blocks(config, fitted.meta, tp=args.tp, pp=args.pp, block_size=args.block_size,
                           kv_cache_memory=args.kv_cache_memory, num_blocks=args.num_kv_blocks)
    cluster = ClusterConfig(scheduler=sched, num_replicas=args.num_replicas, tp=args.tp, pp=args.pp,
                            pipeline_microbatches=engine_config.parallel.pipeline_microbatches,
                            global_scheduler=args.global_scheduler, block_size=args.block_size, seed=args.workload_seed)
    budget = SLOTokenBudget(cost, args.tbt_slo) if args.tbt_slo is not None else None
    setup_s = time.perf_counter() - t0
    result = Simulator(cluster, cost, blocks, token_budget=budget).run(generate(wcfg))
    summary = result.collector.summary()
    header = {
        "command": "podserve " + " ".join(sys.argv[1:]), "simulated": True,
        "profile": {"path": str(profile.path) if profile.path else args.profile, "hash": fitted.profile_hash,
                    **{k: fitted.meta.get(k) for k in ("device", "device_name", "model", "dtype", "source", "date")}},
        "model": name, "deployment": {**asdict(cluster), "num_gpus": cluster.num_gpus, "kv_blocks_per_replica": blocks,
                                      "tbt_slo_budget": args.tbt_slo},
        "workload": asdict(wcfg), "wall_s": result.wall_s, "setup_s": setup_s, "num_iterations": result.num_iterations,
        "num_clipped": result.num_clipped,
    }
    result.collector.write_json(out / "results.json", extra=header)
    result.collector.write_csv(out)
    title = (f"simulated {sched.policy} on {name} ({fitted.meta.get('device')}, tp{args.tp} pp{args.pp} x{args.num_replicas}): "
             f"{result.num_requests} requests, {result.num_iterations} iterations in {result.wall_s:.2f}s (+{setup_s:.2f}s setup)")
    print(format_summary(summary, title=title))
    print(format_piggyback(summary["iterations"]["piggyback"]))
    if not args.no_plots:
        from podserve.bench.plots import plot_batch_composition, plot_latency_cdfs

        plot_latency_cdfs({sched.policy: result.collector}, out / "latency_cdf.png", args.tbt_slo)
        plot_batch_composition(result.collector, out / "batch_composition.png")
    print(f"results in {out}/ (results.json, requests.csv, iterations.csv{'' if args.no_plots else ', *.png'})")
    return 0


# --- search ----------------------------------------------------------------------------------
def _prices(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    path = Path(text)
    if path.is_file():
        return {k.lower(): float(v) for k, v in json.loads(path.read_text()).items()}
    try:
        return {k.strip().lower(): float(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise ValueError(f"--price-table {text!r}: expected a JSON file or 'device=dollars_per_gpu_hour,...'") from None


def cmd_search(args) -> int:
    from podserve.sim.cache import fitted_profile
    from podserve.sim.deployment import resolve_profile
    from podserve.sim.search import grid, group_tasks, pareto_front, run_local, run_ray
    from podserve.sim.slo_watch import LatencySLO

    out = _output_dir(args)
    prices = _prices(args.price_table)
    models, profiles = _strs(args.models), _strs(args.profiles)
    device_of = {}
    # Fit each (model, profile) once here so every worker finds the fit in the cache.
    for m in models:
        for p in profiles:
            prof = resolve_profile(p, m)
            fitted_profile(prof)
            device_of[p] = prof.meta.get("device", p)
    points = grid(models, profiles, _ints(args.tp), _ints(args.pp), _ints(args.replicas), _strs(args.schedulers),
                  _ints(args.chunk_sizes), _ints(args.max_num_seqs), args.with_slo_budget, args.max_gpus,
                  tuple(_strs(args.pipeline_microbatches)))
    slo = LatencySLO(args.ttft_slo, args.tbt_slo)
    wcfg = _workload_config(args, arrival="poisson")
    tasks = group_tasks(points, workload=wcfg, slo=slo, tolerance=args.tolerance, max_probes=args.max_probes,
                        qps_start=args.qps, max_model_len=args.max_model_len)
    total = len(points)
    print(f"searching {total} configurations, {args.num_requests} requests per replica per probe, SLO P99 TTFT <= {slo.ttft_s}s, "
          f"P99 TBT <= {slo.tbt_s * 1e3:.0f}ms, {'Ray at ' + args.ray_address if args.ray_address else f'{args.workers} processes'}", flush=True)
    t0 = time.perf_counter()
    done = [0]

    def on_result(r: dict) -> None:
        done[0] += 1
        price = prices.get(str(device_of.get(r["point"]["profile"], "")).lower())
        if r.get("feasible") and price:
            r["capacity_per_dollar_hour"] = r["capacity_qps"] * 3600 / (price * r["num_gpus"])  # requests per dollar
        elapsed = time.perf_counter() - t0
        eta = elapsed / done[0] * (total - done[0])
        what = (f"{r['capacity_qps']:7.3f} QPS ({r['capacity_per_gpu']:.3f}/GPU)" if r.get("feasible")
                else f"infeasible: {r['reason'][:70]}")
        if r.get("same_as"):
            what += " (cap never reached: as " + r["same_as"].rsplit(" ", 1)[-1] + ")"
        print(f"[{done[0]:>4}/{total} {elapsed:6.0f}s eta {eta:5.0f}s] {r['label']:<58} {what}", flush=True)

    if args.ray_address:
        results = run_ray(tasks, args.ray_address, on_result)
    else:
        results = run_local(tasks, args.workers, on_result)
    wall = time.perf_counter() - t0
    feasible = [r for r in results if r.get("feasible") and r["capacity_qps"] > 0]
    key = "capacity_per_dollar_hour" if prices and any("capacity_per_dollar_hour" in r for r in feasible) else "capacity_per_gpu"
    winner = max(feasible, key=lambda r: r.get(key, 0.0)) if feasible else None
    data = {"command": "podserve " + " ".join(sys.argv[1:]), "wall_s": wall, "num_configs": total,
            "slo": asdict(slo), "workload": asdict(wcfg), "objective": key, "prices": prices,
            "winner": winner, "pareto_front": [r["label"] for r in pareto_front(feasible, key_y=key)], "results": results}
    (out / "search.json").write_text(json.dumps(data, indent=2))
    _write_csv(out / "search.csv", results)
    print(f"{total} configurations in {wall:.0f}s ({len(feasible)} with capacity > 0)")
    if winner:
        m = winner["slo_margins"]
        print(f"winner by {key}: {winner['label']}: {winner['capacity_qps']:.3f} QPS on {winner['num_gpus']} GPUs "
              f"({winner['capacity_per_gpu']:.3f} QPS/GPU); at capacity P99 TTFT {winner['p99_ttft_s']:.3f}s "
              f"(margin {m['ttft']:.0%}), P99 TBT {winner['p99_tbt_s'] * 1e3:.0f}ms (margin {m['tbt']:.0%})")
    if not args.no_plots and feasible:
        from podserve.sim.plots import plot_pareto

        plot_pareto(feasible, out / "pareto.png", key_y=key,
                    ylabel="requests per dollar" if key != "capacity_per_gpu" else "capacity per GPU (QPS)")
    print(f"results in {out}/ (search.json, search.csv{'' if args.no_plots else ', pareto.png'})")
    return 0


def _write_csv(path: Path, results: list[dict]) -> None:
    import csv

    fields = ["label", "feasible", "num_gpus", "capacity_qps", "capacity_per_gpu", "capacity_per_dollar_hour",
              "p99_ttft_s", "p99_tbt_s", "num_probes", "kv_blocks_per_replica", "wall_s", "reason"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields + list(results[0]["point"]) if results else fields, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow({**r, **r["point"]})
