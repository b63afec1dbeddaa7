"""/metrics: vLLM's names under podserve:, labelled model_name, and counters that move."""
from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

MODEL = "SmolLM2-135M-Instruct"
GAUGES = ("podserve:num_requests_running", "podserve:num_requests_waiting", "podserve:kv_cache_usage_perc")
COUNTERS = ("podserve:prompt_tokens", "podserve:generation_tokens", "podserve:request_success",
            "podserve:num_preemptions")
HISTOGRAMS = ("podserve:time_to_first_token_seconds", "podserve:inter_token_latency_seconds",
              "podserve:e2e_request_latency_seconds", "podserve:request_queue_time_seconds")


def scrape(server) -> dict[str, list]:
    resp = httpx.get(server.base_url + "/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(resp.text)}


def total(samples, suffix="", **labels) -> float:
    return sum(s.value for s in samples if s.name.endswith(suffix) and all(s.labels.get(k) == v for k, v in labels.items()))


def test_every_metric_is_exported_with_model_name(server):
    families = scrape(server)
    for name in GAUGES + COUNTERS + HISTOGRAMS:
        assert name in families, name
        assert families[name] and all(s.labels.get("model_name") == MODEL for s in families[name]), name


def test_counters_and_histograms_follow_requests(server):
    before = scrape(server)
    prompt_ids = httpx.post(server.base_url + "/tokenize", json={"prompt": "Count: one two"}).json()["tokens"]
    body = {"model": MODEL, "prompt": prompt_ids, "max_tokens": 5, "ignore_eos": True}
    for _ in range(2):
        assert httpx.post(server.base_url + "/v1/completions", json=body, timeout=120).status_code == 200
    after = scrape(server)

    def delta(name, suffix="", **labels):
        return total(after[name], suffix, **labels) - total(before[name], suffix, **labels)

    assert delta("podserve:generation_tokens", "_total") == 10
    assert delta("podserve:prompt_tokens", "_total") == 2 * len(prompt_ids)
    assert delta("podserve:request_success", "_total", finished_reason="length") == 2
    assert delta("podserve:time_to_first_token_seconds", "_count") == 2
    assert delta("podserve:e2e_request_latency_seconds", "_count") == 2
    assert delta("podserve:request_queue_time_seconds", "_count") == 2
    assert delta("podserve:inter_token_latency_seconds", "_count") == 2 * 4  # 5 tokens, 4 gaps each
    assert total(after["podserve:num_requests_running"]) == 0
