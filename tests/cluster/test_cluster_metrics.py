"""The cluster /metrics merge: replica registries relabelled, text that Prometheus parses back."""
from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from podserve.cluster.metrics import _Families, relabel
from podserve.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput


class _Stats:
    num_running = 1
    num_waiting = 0
    kv_cache_usage = 0.25
    num_preemptions = 0
    busy_s = 1.5


class _FakeEngine:
    stats = _Stats()


def _registry_families(num_finished: int):
    from podserve.entrypoints.openai.prom_metrics import ServerMetrics

    metrics = ServerMetrics(_FakeEngine(), "m")
    for i in range(num_finished):
        times = RequestMetrics(arrival_time=0.0, first_scheduled_time=0.01, first_token_time=0.1,
                               token_times=[0.1, 0.2], finished_time=0.2)
        metrics.observe(RequestOutput(f"r{i}", None, [1, 2, 3], [CompletionOutput(0, "ab", [5, 6], "length")],
                                      True, times, "ab", [5, 6]))
    return list(metrics.registry.collect())


def test_relabel_keeps_every_sample_once_per_replica():
    text = generate_latest(_Families(relabel({0: _registry_families(2), 1: _registry_families(3)}))).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    success = {s.labels["replica"]: s.value for s in families["podserve:request_success"].samples
               if s.name.endswith("_total") and s.labels["finished_reason"] == "length"}
    assert success == {"0": 2.0, "1": 3.0}
    ttft_counts = {s.labels["replica"]: s.value for s in families["podserve:time_to_first_token_seconds"].samples
                   if s.name.endswith("_count")}
    assert ttft_counts == {"0": 2.0, "1": 3.0}
    running = {s.labels["replica"]: s.value for s in families["podserve:num_requests_running"].samples}
    assert running == {"0": 1.0, "1": 1.0}
    # One HELP/TYPE per family, however many replicas contribute samples.
    assert text.count("# TYPE podserve:generation_tokens_total counter") == 1
