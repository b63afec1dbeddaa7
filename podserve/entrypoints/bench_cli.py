"""``podserve bench`` and ``podserve capacity``: serving benchmarks against the in-process engine."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

from podserve.entrypoints.engine_args import add_engine_args, engine_config_from_args


def register(subparsers) -> None:
    """Add the ``bench`` and ``capacity`` subcommands to the podserve CLI."""
    bench = subparsers.add_parser("bench", help="run a workload at its arrival times; write metrics, CSVs and plots")
    add_engine_args(bench)
    _workload_args(bench, arrival=True)
    _output_args(bench)
    bench.add_argument("--tbt-slo", type=float, default=None,
                       help="TBT SLO in seconds: sarathi sizes each iteration's token budget so its predicted time stays "
                            "under it (--chunk-size is then the cap; needs --profile); drawn on the CDF plot")
    _profile_arg(bench)
    bench.add_argument("--http", default=None, metavar="URL", help="send the workload to a running `podserve serve` at URL (OpenAI API, streaming) instead of an in-process engine")
    bench.add_argument("--api-key", default=None, help="with --http: the server's API key")
    bench.add_argument("--no-roofline", action="store_true", help="skip measuring the device's GEMM rate and copy bandwidth and the per-iteration roofline efficiency")
    bench.add_argument("--no-detokenize", action="store_true", help="return token ids only (no tokenizer work on the host), as vLLM's --disable-detokenize")
    bench.set_defaults(func=cmd_bench)

    cap = subparsers.add_parser("capacity", help="highest Poisson QPS within a TBT and scheduling-delay SLO")
    add_engine_args(cap)  # --scheduler takes a comma-separated list here
    _workload_args(cap, arrival=False)
    _output_args(cap)
    g = cap.add_argument_group("SLO and search")
    g.add_argument("--tbt-slo", default="5x", help="P99 TBT bound: seconds, or NxM meaning N times a measured decode-only iteration (default: 5x, the strict SLO)")
    g.add_argument("--delay-slo", type=float, default=2.0, help="P50 scheduling-delay bound in seconds (default: 2)")
    g.add_argument("--calibration-batch", type=int, default=8, help="decode batch size whose iteration time is the SLO unit (default: 8)")
    g.add_argument("--tolerance", type=float, default=0.1, help="stop when (fail - pass) / fail <= this (default: 0.1)")
    g.add_argument("--max-probes", type=int, default=10, help="most probes per scheduler (default: 10)")
    g.add_argument("--min-qps", type=float, default=0.01, help="give up below this QPS (default: 0.01)")
    _profile_arg(cap)
    cap.set_defaults(func=cmd_capacity)


def _profile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="profile of this model on this device (`podserve profile`): with a TBT SLO, sarathi picks each "
                        "iteration's token budget as the largest whose time, predicted from it, meets the SLO")


def _workload_args(p: argparse.ArgumentParser, arrival: bool) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--num-requests", type=int, default=64, help="requests in the workload (default: 64)")
    g.add_argument("--lengths", default="trace", choices=["trace", "fixed", "uniform", "zipf"], help="request-length source (default: trace)")
    g.add_argument("--trace", default="arxiv", help="trace CSV path or name prefix in ../shared/traces (default: arxiv)")
    g.add_argument("--prompt-tokens", type=int, default=512, help="prompt length for --lengths fixed")
    g.add_argument("--output-tokens", type=int, default=128, help="output length for --lengths fixed")
    g.add_argument("--length-scale", type=float, default=1.0, help="multiply trace/synthetic lengths by this before clipping")
    g.add_argument("--min-prompt-tokens", type=int, default=1)
    g.add_argument("--max-prompt-tokens", type=int, default=4096)
    g.add_argument("--min-output-tokens", type=int, default=1)
    g.add_argument("--max-output-tokens", type=int, default=1024)
    g.add_argument("--zipf-theta", type=float, default=0.6)
    g.add_argument("--workload-seed", type=int, default=0, help="seed of lengths, arrivals and prompt token ids")
    g.add_argument("--qps", type=float, default=1.0, help="mean arrival rate" + ("" if arrival else "; capacity: the search's first probe"))
    if arrival:
        g.add_argument("--arrival", default="poisson", choices=["poisson", "gamma", "static", "trace"])
        g.add_argument("--cv", type=float, default=1.0, help="coefficient of variation of gamma inter-arrival times")


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default=None, help="where results go (default: runs/<command>-<time>)")
    p.add_argument("--no-plots", action="store_true", help="skip the matplotlib figures")


def _workload_config(args, **overrides):
    from podserve.bench.workloads import WorkloadConfig

    fields = dict(
        num_requests=args.num_requests, lengths=args.lengths, trace=args.trace, prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens, length_scale=args.length_scale, min_prompt_tokens=args.min_prompt_tokens,
        max_prompt_tokens=args.max_prompt_tokens, min_output_tokens=args.min_output_tokens,
        max_output_tokens=args.max_output_tokens, zipf_theta=args.zipf_theta, seed=args.workload_seed, qps=args.qps,
        arrival=getattr(args, "arrival", "poisson"), cv=getattr(args, "cv", 1.0),
    )
    fields.update(overrides)
    return WorkloadConfig(**fields)


def _output_dir(args) -> Path:
    if args.output_dir:
        path = Path(args.output_dir)
    else:
        path = Path("runs") / f"{args.command}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _device_description(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def _header(args, engine_config) -> dict:
    return {
        "command": "podserve " + " ".join(sys.argv[1:]),  # also when run as python -m ...cli
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": _device_description(engine_config.device),
        "engine": asdict(engine_config),
    }


# --- bench ---------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    from podserve.bench.report import format_host_device, format_piggyback, format_summary
    from podserve.bench.runner import run_workload
    from podserve.bench.workloads import generate
    from podserve.engine.engine import Engine

    wcfg = _workload_config(args)
    out = _output_dir(args)
    if args.http:
        from podserve.bench.http_mode import run_http_bench

        run_http_bench(args.http, wcfg, out, api_key=args.api_key)
        return 0
    config = engine_config_from_args(args)
    if args.tbt_slo is not None and config.scheduler.policy == "sarathi":
        config = replace(config, profile=args.profile, scheduler=replace(config.scheduler, tbt_slo=args.tbt_slo))
    with Engine(config) as engine:  # closing stops tensor/pipeline-parallel workers
        engine.freeze_heap()  # no full-heap GC pauses in the measured run; undone on close
        run = run_workload(engine, generate(wcfg), seed=args.workload_seed, progress=True, desc=config.scheduler.policy,
                           detokenize=not args.no_detokenize)
        roofline = None if args.no_roofline else _roofline(engine, run.collector.iterations)
    summary = run.collector.summary()
    header = {**_header(args, engine.config), "workload": asdict(wcfg), "wall_s": run.wall_s, "num_clipped": run.num_clipped}
    if roofline is not None:
        header["roofline"] = roofline["summary"]
        _write_rows(out / "iterations_roofline.csv", roofline["iterations"])
    run.collector.write_json(out / "results.json", extra=header)
    run.collector.write_csv(out)
    print(format_summary(summary, title=f"{config.scheduler.policy}: {run.num_requests} requests, {run.wall_s:.1f}s"))
    print(format_host_device(summary["iterations"]))
    if roofline is not None:
        from podserve.bench.roofline import format_roofline

        print(format_roofline(roofline["summary"]))
    print(format_piggyback(summary["iterations"]["piggyback"]))
    if not args.no_plots:
        from podserve.bench.plots import plot_batch_composition, plot_latency_cdfs

        plot_latency_cdfs({config.scheduler.policy: run.collector}, out / "latency_cdf.png", args.tbt_slo)
        plot_batch_composition(run.collector, out / "batch_composition.png")
    print(f"results in {out}/ (results.json, requests.csv, iterations.csv{'' if args.no_plots else ', *.png'})")
    return 0


def _roofline(engine, records) -> dict:
    """Measure the engine's device in its dtype, then rate every iteration against it (per
    tensor-parallel rank; under pipeline parallelism the whole model's work per iteration)."""
    import torch

    from podserve.bench.roofline import measure_device_rates, roofline_report
    from podserve.executor.model_runner import resolve_dtype

    config = engine.config
    device = torch.device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    rates = measure_device_rates(device, dtype)
    tp = config.parallel.tensor_parallel_size
    return roofline_report(records, engine.model_config, rates, dtype.itemsize, tp=tp)


def _write_rows(path: Path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


# --- capacity ------------------------------------------------------------------------------
def cmd_capacity(args) -> int:
    from podserve.bench.capacity import Probe, decode_iteration_time, find_capacity
    from podserve.bench.report import format_capacity_table
    from podserve.bench.runner import run_workload
    from podserve.bench.slo import SLOWatch
    from podserve.bench.workloads import generate
    from podserve.core.scheduler import SCHEDULERS
    from podserve.engine.engine import Engine
    from podserve.metrics import distribution

    policies = [p.strip() for p in args.scheduler.split(",") if p.strip()]
    unknown = [p for p in policies if p not in SCHEDULERS]
    if not policies or unknown:
        raise ValueError(f"unknown scheduler(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SCHEDULERS)}")
    out = _output_dir(args)
    base = engine_config_from_args(args)
    results: dict = {}
    collectors: dict = {}
    slo = None
    header = None
    calibrations: dict = {}
    for policy in policies:
        engine = Engine(replace(base, scheduler=replace(base.scheduler, policy=policy)))
        # Calibrating also warms every engine up; the first one's measurement sets the one
        # SLO shared by all schedulers (the decode-only iteration does not depend on policy).
        resolved, calibration = _resolve_slo(args, engine, decode_iteration_time)
        calibrations[policy] = calibration
        if slo is None:
            slo = resolved
            print(f"SLO: P99 TBT <= {slo.tbt_s * 1e3:.1f} ms ({calibration['tbt_slo_rule']}), P50 scheduling delay <= {slo.delay_s:.2f} s")
        if args.profile and policy == "sarathi":
            engine.set_tbt_slo(slo.tbt_s)  # capacity under this SLO with the SLO-aware token budget
            print(f"[sarathi] token budget per iteration: the largest whose time predicted from {args.profile} meets the SLO")
        if header is None:
            header = {**_header(args, engine.config), "slo": {"tbt_s": slo.tbt_s, "delay_s": slo.delay_s, **calibration}}
        last = {}

        def probe(qps: float, engine=engine, policy=policy, last=last) -> Probe:
            workload = generate(_workload_config(args, qps=qps, arrival="poisson"))
            run = run_workload(engine, workload, seed=args.workload_seed, stop_rule=SLOWatch(slo, workload))
            s = run.collector.summary()
            passed = run.stopped_early is None and slo.check(s)
            if passed or "run" not in last:
                last["run"], last["qps"] = run, qps  # keep the highest passing run for the plots
            tbt, delay = s["tbt"]["p99"], s["scheduling_delay"]["p50"]
            if run.stopped_early:  # its requests were aborted: report what they had measured
                records = run.collector.requests
                tbt = distribution(x for r in records for x in r.tbt)["p99"]
                delay = distribution(r.scheduling_delay for r in records)["p50"]
            return Probe(qps, passed, tbt, delay, run.wall_s, run.stopped_early, s)

        def report(p: Probe, policy=policy) -> None:
            tbt = "n/a" if p.p99_tbt_s is None else f"{p.p99_tbt_s * 1e3:8.1f} ms"
            delay = "n/a" if p.p50_delay_s is None else f"{p.p50_delay_s:6.2f} s"
            note = f"  (stopped early: {p.stopped_early})" if p.stopped_early else ""
            print(f"[{policy}] qps={p.qps:8.3f}  p99 TBT={tbt}  p50 delay={delay}  -> {'PASS' if p.passed else 'fail'}  "
                  f"[{p.wall_s:.0f}s]{note}", flush=True)

        result = find_capacity(probe, qps_start=args.qps, tolerance=args.tolerance, min_qps=args.min_qps,
                               max_probes=args.max_probes, on_probe=report)
        results[policy] = result
        collectors[f"{policy} @ {last['qps']:.3g} QPS"] = last["run"].collector
        print(f"[{policy}] capacity: {result.capacity_qps:.3f} QPS (bracket {result.bracket}, tolerance {result.tolerance:.0%})", flush=True)
        engine.close()  # free the devices of parallel workers before the next policy's engine
        del engine
    data = {**header, "workload": asdict(_workload_config(args, arrival="poisson")),
            "calibrations": calibrations, "results": {p: r.to_json() for p, r in results.items()}}
    (out / "capacity.json").write_text(json.dumps(data, indent=2))
    print(format_capacity_table({p: r.capacity_qps for p, r in results.items()}, {p: r.bracket for p, r in results.items()}))
    if not args.no_plots:
        from podserve.bench.plots import plot_capacity, plot_latency_cdfs

        title = f"P99 TBT <= {slo.tbt_s * 1e3:.0f} ms, P50 delay <= {slo.delay_s:g} s"
        plot_capacity({p: r.capacity_qps for p, r in results.items()}, out / "capacity.png", title)
        plot_latency_cdfs(collectors, out / "latency_cdf_at_capacity.png", slo.tbt_s)
    print(f"results in {out}/")
    return 0


def _resolve_slo(args, engine, decode_iteration_time):
    from podserve.bench.slo import SLO
    from podserve.bench.workloads import generate

    text = str(args.tbt_slo).strip().lower()
    if text.endswith("x"):
        factor = float(text[:-1])
        prompts = sorted(r.num_prompt_tokens for r in generate(_workload_config(args, qps=1.0, arrival="static")))
        prompt = prompts[len(prompts) // 2]
        decode_s = decode_iteration_time(engine, batch_size=args.calibration_batch, prompt_tokens=prompt, seed=args.workload_seed)
        rule = f"{factor:g}x a decode-only iteration of {args.calibration_batch} requests at the median prompt ({prompt} tokens): {decode_s * 1e3:.1f} ms"
        return SLO(factor * decode_s, args.delay_slo), {"tbt_slo_rule": rule, "decode_iteration_s": decode_s, "factor": factor}
    return SLO(float(text), args.delay_slo), {"tbt_slo_rule": "given in seconds"}


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m podserve.entrypoints.bench_cli bench ...``)."""
    parser = argparse.ArgumentParser(prog="podserve")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"podserve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
