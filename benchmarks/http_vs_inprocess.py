"""HTTP overhead: the same streaming workload over the OpenAI API and against the Engine in-process.

For each concurrency C, C closed-loop clients send ``C * --requests-per-client`` requests
(random prompt token ids, ``--max-tokens`` each with ignore_eos, greedy). HTTP mode runs them
through ``podserve serve`` (a subprocess, default model and engine flags) with
podserve.bench.http_client; in-process mode drives an Engine built with the same flags in
this process, stepped on the main thread as serve's engine process steps it
(``--inprocess-thread worker`` for the thread the server used before the engine process),
keeping at most C requests in flight. Runs alternate HTTP / in-process so background load
on a shared machine hits both alike.

    PYTHONPATH=. python benchmarks/http_vs_inprocess.py --concurrency 16 64
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from podserve.bench.http_client import HttpRequestSpec, RequestRecord, run_http, summarize
from podserve.config import EngineConfig
from podserve.engine.engine import Engine
from podserve.request import SamplingParams

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_inprocess(engine: Engine, specs: list[HttpRequestSpec], max_concurrency: int) -> tuple[list[RequestRecord], float]:
    """The HTTP client's semantics without HTTP: same slots, same params, same clock points."""
    records: list[RequestRecord | None] = [None] * len(specs)
    in_flight: dict[str, int] = {}
    next_index = 0
    busy_s = 0.0
    t0 = time.perf_counter()
    while next_index < len(specs) or in_flight:
        now = time.perf_counter()
        while next_index < len(specs) and len(in_flight) < max_concurrency and specs[next_index].arrival_time <= now - t0:
            spec = specs[next_index]
            rid = f"inproc-{next_index}"
            records[next_index] = RequestRecord(sent_time=time.perf_counter())
            engine.add_request(spec.prompt, SamplingParams(max_tokens=spec.max_tokens, temperature=0.0, ignore_eos=True), rid)
            in_flight[rid] = next_index
            next_index += 1
        if not in_flight:
            time.sleep(max(0.0, specs[next_index].arrival_time - (time.perf_counter() - t0)))
            continue
        step_start = time.perf_counter()
        outputs = engine.step()
        now = time.perf_counter()
        busy_s += now - step_start
        for out in outputs:
            record = records[in_flight[out.request_id]]
            if out.delta_token_ids:
                record.chunk_times.extend([now] * len(out.delta_token_ids))
                if record.first_token_time is None:
                    record.first_token_time = now
            if out.finished:
                record.num_output_tokens = len(out.outputs[0].token_ids)
                record.finish_time = now
                del in_flight[out.request_id]
    run_inprocess.last_busy_s = busy_s
    return records, time.perf_counter() - t0


def engine_busy_s(base_url: str) -> float:
    """The server's podserve:engine_busy_seconds_total."""
    for line in httpx.get(base_url + "/metrics").text.splitlines():
        if line.startswith("podserve:engine_busy_seconds_total"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError("podserve:engine_busy_seconds_total")


def in_worker_thread(fn, *args):
    """Run ``fn`` on a fresh thread, as AsyncEngine runs the engine.

    Not a detail: on this 2-core box under load, torch ops issued from the main thread run
    ~4x slower than from a worker thread (OpenMP's 2-thread team vs what a new thread gets;
    see docs/benchmarks-server.md), so stepping in the main thread would compare threading
    setups, not HTTP overhead.
    """
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn(*args)))
    thread.start()
    thread.join()
    return result["value"]


def server_cpu(pid: int) -> tuple[float, float]:
    """(event-loop thread, every other thread) CPU seconds of the server. uvicorn runs the
    event loop on the main thread, whose Linux thread id is the process id; the engine thread
    and torch's worker threads are the rest."""
    loop = other = 0.0
    proc = psutil.Process(pid)
    for t in proc.threads():
        if t.id == pid:
            loop += t.user_time + t.system_time
        else:
            other += t.user_time + t.system_time
    for child in proc.children(recursive=True):  # the engine process (serve's default)
        times = child.cpu_times()
        other += times.user + times.system
    return loop, other


def make_specs(num_requests: int, prompt_tokens: int, max_tokens: int, vocab_size: int, seed: int) -> list[HttpRequestSpec]:
    rng = random.Random(seed)
    return [HttpRequestSpec(0.0, [rng.randrange(vocab_size) for _ in range(prompt_tokens)], max_tokens)
            for _ in range(num_requests)]


def start_server(port: int, extra_args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "podserve.entrypoints.cli", "serve", "--port", str(port),
                             "--log-level", "warning", *extra_args], cwd=REPO_ROOT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
    proc.terminate()
    raise RuntimeError("server did not start")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="HTTP/in-process pairs per concurrency (alternating order)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--json", type=Path, default=None, help="also write every run's summary here")
    p.add_argument("--inprocess-thread", choices=["main", "worker"], default="main",
                   help="step the in-process engine on the main thread (as serve's engine process does, "
                        "the default) or on a worker thread (as --no-engine-process does)")
    p.add_argument("--server-args", default="", help="extra 'podserve serve' flags, e.g. '--no-engine-process'")
    args = p.parse_args(argv)

    server = start_server(args.port, args.server_args.split())
    base_url = f"http://127.0.0.1:{args.port}"
    try:
        engine = Engine(EngineConfig())
        vocab = engine.model_config.vocab_size
        warm = make_specs(4, 8, 4, vocab, seed=99)
        run_http(base_url, warm, max_concurrency=4)
        step_in = in_worker_thread if args.inprocess_thread == "worker" else (lambda fn, *a: fn(*a))
        step_in(run_inprocess, engine, warm, 4)
        runs = []
        for concurrency in args.concurrency:
            specs = make_specs(concurrency * args.requests_per_client, args.prompt_tokens, args.max_tokens, vocab,
                               seed=concurrency)
            for repeat in range(args.repeats):
                order = ("http", "inprocess") if repeat % 2 == 0 else ("inprocess", "http")
                for mode in order:
                    cpu_before, server_before = time.process_time(), server_cpu(server.pid)
                    if mode == "http":
                        busy_before = engine_busy_s(base_url)
                        records, wall = run_http(base_url, specs, max_concurrency=concurrency)
                        busy = engine_busy_s(base_url) - busy_before
                    else:
                        records, wall = step_in(run_inprocess, engine, specs, concurrency)
                        busy = run_inprocess.last_busy_s
                    cpu = time.process_time() - cpu_before
                    server_after = server_cpu(server.pid)
                    # CPU seconds by role: noise-free evidence of what HTTP costs, unlike wall time here
                    if mode == "http":
                        cpu_split = {"client_cpu_s": cpu, "server_loop_cpu_s": server_after[0] - server_before[0],
                                     "engine_cpu_s": server_after[1] - server_before[1]}
                    else:
                        cpu_split = {"client_cpu_s": 0.0, "server_loop_cpu_s": 0.0, "engine_cpu_s": cpu}
                    summary = {"mode": mode, "concurrency": concurrency, "repeat": repeat, **summarize(records, wall),
                               **cpu_split, "engine_busy_s": busy}
                    runs.append(summary)
                    print(json.dumps(summary), flush=True)
    finally:
        server.terminate()
        server.wait(60)

    print("\nMedians over the runs; the ratio is the median of HTTP/in-process over each adjacent pair.\n")
    print("| clients | mode | runs | throughput (tok/s) | TTFT P50 / P99 (s) | TBT P50 / P99 (s) | errors |")
    print("|---|---|---|---|---|---|---|")
    for concurrency in args.concurrency:
        for mode in ("inprocess", "http"):
            rs = [r for r in runs if r["concurrency"] == concurrency and r["mode"] == mode]
            med = {k: statistics.median(r[k] for r in rs) for k in ("throughput_tok_s", "ttft_p50_s", "ttft_p99_s",
                                                                    "tbt_p50_s", "tbt_p99_s")}
            print(f"| {concurrency} | {mode} | {len(rs)} | {med['throughput_tok_s']:.1f} | "
                  f"{med['ttft_p50_s']:.2f} / {med['ttft_p99_s']:.2f} | {med['tbt_p50_s']:.3f} / {med['tbt_p99_s']:.3f} | "
                  f"{sum(r['num_errors'] for r in rs)} |")
        ratios = [http["throughput_tok_s"] / inproc["throughput_tok_s"]
                  for repeat in range(args.repeats)
                  for http in runs if http["concurrency"] == concurrency and http["repeat"] == repeat and http["mode"] == "http"
                  for inproc in runs if inproc["concurrency"] == concurrency and inproc["repeat"] == repeat and inproc["mode"] == "inprocess"]
        print(f"| {concurrency} | HTTP / in-process | {len(ratios)} pairs | {statistics.median(ratios):.1%} "
              f"(pairs: {', '.join(f'{r:.0%}' for r in ratios)}) | | | |")
    print("\nPer run (medians): CPU seconds of the HTTP client, the server event loop and the engine (+ torch")
    print("threads); wall seconds inside engine steps (busy) and out of them (idle: waiting for requests).\n")
    print("| clients | mode | client CPU | server loop CPU | engine CPU | HTTP share of CPU | engine busy | engine idle |")
    print("|---|---|---|---|---|---|---|---|")
    for concurrency in args.concurrency:
        for mode in ("inprocess", "http"):
            rs = [r for r in runs if r["concurrency"] == concurrency and r["mode"] == mode]
            cpu_keys = ("client_cpu_s", "server_loop_cpu_s", "engine_cpu_s")
            med = {k: statistics.median(r[k] for r in rs) for k in cpu_keys + ("engine_busy_s",)}
            idle = statistics.median(r["wall_s"] - r["engine_busy_s"] for r in rs)
            http_share = (med["client_cpu_s"] + med["server_loop_cpu_s"]) / sum(med[k] for k in cpu_keys)
            print(f"| {concurrency} | {mode} | {med['client_cpu_s']:.2f} | {med['server_loop_cpu_s']:.2f} | "
                  f"{med['engine_cpu_s']:.2f} | {http_share:.1%} | {med['engine_busy_s']:.1f} | {idle:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
