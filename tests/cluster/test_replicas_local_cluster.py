"""``podserve serve --replicas 2`` on its own local Ray cluster (no --ray-address): serve, balance, stop clean."""
from __future__ import annotations

import asyncio
import signal
import time

import httpx
import openai
import pytest

from tests.server.util import ServerProcess

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

MODEL = "tiny-llama"


@pytest.mark.slow  # starts a Ray cluster of its own: ~30-40 s on 2 busy cores
def test_local_cluster_serves_balances_and_stops_cleanly(monkeypatch):
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "0")  # see test_replicas_on_ray.py
    server = ServerProcess("--replicas", "2", "--model", MODEL, "--kv-cache-memory", "32MiB")
    try:
        descendants = psutil.Process(server.proc.pid).children(recursive=True)
        assert any("ReplicaActor" in " ".join(p.cmdline()) for p in descendants if p.is_running())
        report = httpx.get(server.base_url + "/health", timeout=10).json()
        assert report["routing"] == "least-outstanding" and [r["state"] for r in report["replicas"]] == ["healthy"] * 2

        client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)

        async def one(i):
            stream = await client.completions.create(model=MODEL, prompt=f"p{i}", max_tokens=32, stream=True,
                                                     extra_body={"ignore_eos": True})
            return [c async for c in stream]

        async def burst():
            return await asyncio.gather(*(one(i) for i in range(8)))

        chunks = asyncio.run(burst())
        assert all(c[-1].choices[0].finish_reason == "length" for c in chunks)
        routed = [r["num_routed"] for r in httpx.get(server.base_url + "/health", timeout=10).json()["replicas"]]
        assert sum(routed) == 8 and min(routed) >= 2  # least-outstanding spread the burst
    finally:
        server.proc.send_signal(signal.SIGTERM)
        code = server.stop(timeout=60)
    assert code == 0, server.log_text()
    deadline = time.monotonic() + 30
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in descendants):
        assert time.monotonic() < deadline, [p.cmdline() for p in descendants if p.is_running()]
        time.sleep(0.5)
