"""Throughput of one endpoint over N engine replicas on Ray vs one in-process engine.

Starts ``podserve serve`` once per configuration (one at a time, the same model and engine
flags), sends the same closed-loop streaming workload with ``podserve/bench/http_client.py``
and prints throughput and latency percentiles. Configurations:

- ``local``: no ``--replicas`` (the engine in the server process, torch's default threads);
- ``ray1``: ``--replicas 1 --replica-num-cpus C`` (the same engine in one Ray actor with C
  torch threads: the cost of the Ray hop);
- ``ray2``: ``--replicas 2 --replica-num-cpus C/2`` (two engines sharing the same C cores).

On a machine whose cores the engine already saturates, two replicas split the same cores and
cannot add throughput; the comparison shows the routing/streaming overhead there, and scaling
only where replicas get hardware of their own (GPUs, or more cores than one engine uses).

    PYTHONPATH=. python benchmarks/replicas_scaling.py --configs local ray1 ray2 --repeats 2
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from podserve.bench.http_client import HttpRequestSpec, run_http, summarize

REPO_ROOT = Path(__file__).resolve().parents[1]


def start_server(port: int, extra: list[str], log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, "-m", "podserve.entrypoints.cli", "serve", "--port", str(port), "--log-level", "warning", *extra]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["local", "ray1", "ray2"], choices=["local", "ray1", "ray2"])
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPUs the replicas share (default: all)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--num-requests", type=int, default=48)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="runs per configuration, configurations interleaved")
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--log-dir", type=Path, default=Path("/tmp"), help="server logs go here (default: /tmp)")
    args = p.parse_args(argv)

    engine_flags = ["--kv-cache-memory", "256MiB"] + (["--model", args.model] if args.model else [])
    flags = {
        "local": [],
        "ray1": ["--replicas", "1", "--replica-num-cpus", str(args.cores)],
        "ray2": ["--replicas", "2", "--replica-num-cpus", str(max(1, args.cores // 2))],
    }
    rng = random.Random(0)
    vocab = 49152
    specs = [HttpRequestSpec(0.0, [rng.randrange(vocab) for _ in range(args.prompt_tokens)], args.max_tokens)
             for _ in range(args.num_requests)]
    runs: list[dict] = []
    for repeat in range(args.repeats):
        order = args.configs if repeat % 2 == 0 else list(reversed(args.configs))
        for name in order:
            log_path = args.log_dir / f"replicas_scaling-{name}-{repeat}.log"
            proc = start_server(args.port, flags[name] + engine_flags, log_path)
            try:
                base = f"http://127.0.0.1:{args.port}"
                run_http(base, specs[: args.concurrency], max_concurrency=args.concurrency)  # warm-up
                records, wall = run_http(base, specs, max_concurrency=args.concurrency)
                summary = summarize(records, wall)
                summary.update(config=name, repeat=repeat)
                errors = [r.error for r in records if r.error]
                if errors:
                    summary["first_error"] = errors[0]
                if name != "local":
                    summary["replicas"] = [(r["replica"], r["num_routed"]) for r in httpx.get(base + "/health").json()["replicas"]]
                runs.append(summary)
                print(f"{name:5s} repeat {repeat}: {summary['throughput_tok_s']:.1f} tok/s, TTFT P50 "
                      f"{summary['ttft_p50_s']:.2f} s, TBT P50 {summary['tbt_p50_s'] * 1e3:.0f} ms, "
                      f"errors {summary['num_errors']}" + (f", routed {summary.get('replicas')}" if name != "local" else "")
                      + (f"; first error: {summary['first_error'][:300]}" if errors else ""), flush=True)
            finally:
                stop_server(proc)
    print("\nmedian throughput (tok/s):")
    for name in args.configs:
        values = [r["throughput_tok_s"] for r in runs if r["config"] == name]
        print(f"  {name:5s} {statistics.median(values):.1f}  (runs: {', '.join(f'{v:.1f}' for v in values)})")
    if args.json:
        args.json.write_text(json.dumps({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                                         "args": vars(args) | {"json": str(args.json)}, "runs": runs}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
