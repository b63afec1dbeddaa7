"""A client that goes away mid-generation: its request is aborted and its KV freed at once."""
from __future__ import annotations

import time

import httpx
import pytest

from tests.server.util import metric_value

LONG = {"model": "SmolLM2-135M-Instruct", "prompt": "Tell me everything.", "max_tokens": 4000, "ignore_eos": True}


def _engine_state(server) -> tuple[float, float]:
    text = httpx.get(server.base_url + "/metrics").text
    return metric_value(text, "podserve:num_requests_running"), metric_value(text, "podserve:kv_cache_usage_perc")


def _wait_freed(server, timeout: float) -> float:
    """Seconds until nothing runs and no KV is used; fails after ``timeout``."""
    start = time.monotonic()
    while _engine_state(server) != (0, 0):
        assert time.monotonic() - start < timeout, f"still {_engine_state(server)} after {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_streaming_disconnect_aborts(server):
    with httpx.stream("POST", server.base_url + "/v1/completions", json={**LONG, "stream": True}, timeout=60) as resp:
        lines = resp.iter_lines()
        for _ in range(3):
            next(lines)
        assert _engine_state(server)[0] == 1 and _engine_state(server)[1] > 0
    # 4000 tokens would take minutes; an abort takes one engine iteration (well under a second here)
    _wait_freed(server, timeout=10)


def test_non_streaming_disconnect_aborts(server):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + "/v1/completions", json=LONG, timeout=httpx.Timeout(60, read=2.0))
    _wait_freed(server, timeout=10)
