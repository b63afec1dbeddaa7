"""64 concurrent streaming clients, a third of them disconnecting at random points, two rounds."""
from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import psutil

from tests.server.util import metric_value

NUM_CLIENTS = 64
RSS_TOLERANCE_BYTES = 48 * 2**20  # allocator noise; a leak of per-request state over 64 requests shows above it


async def _client(http: httpx.AsyncClient, i: int, rng: random.Random) -> dict:
    max_tokens = rng.randint(8, 12)
    disconnect_after = rng.randint(0, max_tokens - 1) if i % 3 == 0 else None
    body = {"model": "SmolLM2-135M-Instruct", "prompt": f"Client {i} says:" + " word" * rng.randint(1, 40),
            "max_tokens": max_tokens, "temperature": 0.8, "seed": i, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    result = {"max_tokens": max_tokens, "disconnected": disconnect_after is not None, "usage": None,
              "finish_reason": None, "done": False}
    async with http.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        chunks = 0
        async for line in resp.aiter_lines():
            if not line:
                continue
            if disconnect_after is not None and chunks >= disconnect_after:
                return result  # leaving the block closes the connection mid-stream
            chunks += 1
            payload = line[len("data: "):]
            if payload == "[DONE]":
                result["done"] = True
                continue
            event = json.loads(payload)
            if event.get("usage"):
                result["usage"] = event["usage"]
            if event["choices"] and event["choices"][0]["finish_reason"]:
                result["finish_reason"] = event["choices"][0]["finish_reason"]
    return result


async def _round(base_url: str, seed: int) -> list[dict]:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=NUM_CLIENTS, max_keepalive_connections=NUM_CLIENTS)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as http:
        return await asyncio.gather(*(_client(http, i, rng) for i in range(NUM_CLIENTS)))


def _wait_idle(base_url: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(base_url + "/metrics").text
        idle = (metric_value(text, "podserve:num_requests_running") == 0
                and metric_value(text, "podserve:num_requests_waiting") == 0)
        if idle or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def _successes(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("podserve:request_success_total{"))


def test_64_streaming_clients_with_disconnects(server):
    process = psutil.Process(server.proc.pid)
    rss = []
    for round_index in range(2):
        before = _successes(httpx.get(server.base_url + "/metrics").text)
        results = asyncio.run(_round(server.base_url, seed=round_index))
        completed = [r for r in results if not r["disconnected"]]
        assert len(completed) == NUM_CLIENTS - len(range(0, NUM_CLIENTS, 3))
        for r in completed:
            assert r["done"] and r["finish_reason"] == "length"
            assert r["usage"]["completion_tokens"] == r["max_tokens"]
        text = _wait_idle(server.base_url)
        assert metric_value(text, "podserve:num_requests_running") == 0
        assert metric_value(text, "podserve:num_requests_waiting") == 0
        assert metric_value(text, "podserve:kv_cache_usage_perc") == 0
        # every completed request was counted; aborted ones only if they had finished anyway,
        # and some must really have been aborted mid-generation (else this tests no disconnect)
        assert len(completed) <= _successes(text) - before < NUM_CLIENTS
        # the server and its engine process (the default), together
        rss.append(sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]))
        print(f"round {round_index}: RSS {rss[-1] >> 20} MiB")
    assert rss[1] - rss[0] < RSS_TOLERANCE_BYTES, f"RSS grew from {rss[0] >> 20} MiB to {rss[1] >> 20} MiB"
    assert server.proc.poll() is None
