"""HTTP-client mode of the benchmarks: send a workload over the OpenAI API, streaming, and time it.

Each request is a ``/v1/completions`` stream with ``ignore_eos`` (a vLLM extension podserve
honours) so it yields exactly ``max_tokens`` tokens. Times are client-side
``time.perf_counter()``: TTFT from sending the request to the first content chunk, TBT between
consecutive content chunks (a chunk is usually one token; the server holds a token back only
while it ends mid UTF-8 character, so chunk gaps can exceed token gaps there).
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Sequence

import httpx


@dataclass(frozen=True)
class HttpRequestSpec:
    """One request of a workload: when to send it, what to send, how many tokens to ask for."""

    arrival_time: float
    """Seconds after the start of the run."""
    prompt: str | list[int]
    """Text or prompt token ids."""
    max_tokens: int


@dataclass
class RequestRecord:
    """What one request measured, on the ``time.perf_counter()`` clock of the process that ran it."""

    sent_time: float
    first_token_time: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    """When each piece of output arrived (one entry per token in-process; per content chunk over HTTP)."""
    num_output_tokens: int = 0
    finish_time: float | None = None
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.sent_time

    @property
    def tbts(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]


async def _one(client: httpx.AsyncClient, spec: HttpRequestSpec, model: str | None, extra: dict) -> RequestRecord:
    body = {"prompt": spec.prompt, "max_tokens": spec.max_tokens, "stream": True, "temperature": 0.0,
            "ignore_eos": True, "stream_options": {"include_usage": True}, **extra}
    if model:
        body["model"] = model
    record = RequestRecord(sent_time=time.perf_counter())
    try:
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                record.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return record
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload == "[DONE]":
                    break
                event = json.loads(payload)
                now = time.perf_counter()
                if "error" in event:
                    record.error = event["error"].get("message", "error")
                    break
                if event.get("usage"):
                    record.num_output_tokens = event["usage"]["completion_tokens"]
                if event.get("choices") and event["choices"][0].get("text"):
                    record.chunk_times.append(now)
                    if record.first_token_time is None:
                        record.first_token_time = now
    except httpx.HTTPError as e:
        record.error = f"{type(e).__name__}: {e}"
    record.finish_time = time.perf_counter()
    return record


async def run_http_async(base_url: str, specs: Sequence[HttpRequestSpec], *, model: str | None = None,
                         max_concurrency: int | None = None, api_key: str | None = None,
                         timeout_s: float = 600.0, extra_body: dict | None = None) -> tuple[list[RequestRecord], float]:
    """Send every request at its arrival time (and when a concurrency slot is free); return
    the records in input order and the wall time of the whole run."""
    limit = max_concurrency or len(specs)
    semaphore = asyncio.Semaphore(limit)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    extra = dict(extra_body or {})
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout_s, limits=limits) as client:
        t0 = time.perf_counter()

        async def scheduled(spec: HttpRequestSpec) -> RequestRecord:
            await asyncio.sleep(max(0.0, t0 + spec.arrival_time - time.perf_counter()))
            async with semaphore:
                return await _one(client, spec, model, extra)

        records = await asyncio.gather(*(scheduled(s) for s in specs))
        return list(records), time.perf_counter() - t0


def run_http(base_url: str, specs: Sequence[HttpRequestSpec], **kwargs) -> tuple[list[RequestRecord], float]:
    """Blocking wrapper of :func:`run_http_async`."""
    return asyncio.run(run_http_async(base_url, specs, **kwargs))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(records: Sequence[RequestRecord], wall_s: float) -> dict:
    """Throughput and latency percentiles of a run (seconds; throughput in output tokens/s)."""
    ok = [r for r in records if r.error is None]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    tbts = [t for r in ok for t in r.tbts]
    num_tokens = sum(r.num_output_tokens for r in ok)
    return {
        "num_requests": len(records),
        "num_errors": len(records) - len(ok),
        "wall_s": wall_s,
        "output_tokens": num_tokens,
        "throughput_tok_s": num_tokens / wall_s if wall_s > 0 else float("nan"),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "tbt_p50_s": percentile(tbts, 50),
        "tbt_p99_s": percentile(tbts, 99),
    }
