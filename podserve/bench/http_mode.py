"""``podserve bench --http URL``: the bench workload sent over the OpenAI API instead of in-process.

Same workload generator, same seeded prompt token ids, same arrival times and context
clipping as the in-process runner; requests stream through podserve.bench.http_client.
"""
from __future__ import annotations

import datetime
import json
import sys
from dataclasses import asdict
from pathlib import Path

import httpx

from podserve.bench.http_client import HttpRequestSpec, run_http, summarize
from podserve.bench.runner import fit_to_context
from podserve.bench.workloads import WorkloadConfig, generate, prompt_token_ids


def http_specs(config: WorkloadConfig, max_model_len: int, vocab_size: int) -> tuple[list[HttpRequestSpec], int]:
    """The workload of ``config`` as HTTP requests (and how many were clipped to the context)."""
    workload, num_clipped = fit_to_context(sorted(generate(config), key=lambda r: r.arrival_time), max_model_len)
    prompts = prompt_token_ids(workload, vocab_size, config.seed)
    return [HttpRequestSpec(r.arrival_time, p, r.num_output_tokens) for r, p in zip(workload, prompts)], num_clipped


def run_http_bench(base_url: str, config: WorkloadConfig, out_dir: Path, *, api_key: str | None = None,
                   vocab_size: int | None = None, max_concurrency: int | None = None) -> dict:
    """Run the workload against a live server; print and save a summary; return it."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    card = httpx.get(base_url.rstrip("/") + "/v1/models", headers=headers, timeout=30).json()["data"][0]
    vocab_size = vocab_size or card["vocab_size"]  # podserve's model card carries it (as it does max_model_len)
    specs, num_clipped = http_specs(config, card["max_model_len"], vocab_size)
    records, wall = run_http(base_url, specs, model=card["id"], api_key=api_key, max_concurrency=max_concurrency)
    summary = {"mode": "http", "base_url": base_url, "model": card["id"], "num_clipped": num_clipped,
               **summarize(records, wall)}
    header = {"command": " ".join(sys.argv), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "workload": asdict(config)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results_http.json").write_text(json.dumps({**header, "summary": summary, "requests": [
        {"sent_time": r.sent_time, "ttft_s": r.ttft, "tbts_s": r.tbts, "num_output_tokens": r.num_output_tokens,
         "error": r.error} for r in records]}, indent=1))
    print(f"HTTP {base_url}: {summary['num_requests']} requests ({summary['num_errors']} errors), {wall:.1f}s, "
          f"{summary['throughput_tok_s']:.1f} output tok/s")
    print(f"  TTFT p50 {summary['ttft_p50_s']:.3f}s  p99 {summary['ttft_p99_s']:.3f}s   "
          f"TBT p50 {summary['tbt_p50_s']:.3f}s  p99 {summary['tbt_p99_s']:.3f}s")
    print(f"results in {out_dir}/results_http.json")
    return summary

