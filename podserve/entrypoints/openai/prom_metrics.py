"""Prometheus exporter for the server, with vLLM's metric names under a ``podserve:`` prefix.

Each app owns a ``CollectorRegistry`` (never the global one) so tests can run several apps in
one process. Gauges and the preemption counter are read from the AsyncEngine's stats snapshot
at scrape time; token counters and latency histograms are fed by an output listener that
runs on the engine thread after every step.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from podserve.engine.outputs import RequestOutput

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Bucket edges copied from vLLM so existing dashboards' quantile panels look the same.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                480.0, 960.0, 1920.0, 7680.0)


class _EngineStatsCollector:
    """Scrape-time view of the AsyncEngine's snapshot: running/waiting, KV usage, preemptions."""

    def __init__(self, async_engine, model_name: str):
        self.async_engine = async_engine
        self.model_name = model_name

    def collect(self):
        stats = self.async_engine.stats
        labels = ["model_name"]
        for name, doc, value in (
            ("podserve:num_requests_running", "Requests in the running batch.", stats.num_running),
            ("podserve:num_requests_waiting", "Requests waiting for admission.", stats.num_waiting),
            ("podserve:kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 = full).", stats.kv_cache_usage),
        ):
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric([self.model_name], value)
            yield g
        c = CounterMetricFamily("podserve:num_preemptions", "Preemptions (recompute) since start.", labels=labels)
        c.add_metric([self.model_name], stats.num_preemptions)
        yield c
        # Not a vLLM metric: time inside engine steps, so utilisation = rate(busy) and idle gaps show.
        c = CounterMetricFamily("podserve:engine_busy_seconds", "Wall time spent in engine steps.", labels=labels)
        c.add_metric([self.model_name], stats.busy_s)
        yield c


class ServerMetrics:
    """The server's Prometheus registry. Call ``observe`` for every engine output."""

    def __init__(self, async_engine, model_name: str):
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineStatsCollector(async_engine, model_name))
        r, m = self.registry, ["model_name"]
        self.prompt_tokens = Counter("podserve:prompt_tokens", "Prompt tokens prefilled.", m, registry=r)
        self.generation_tokens = Counter("podserve:generation_tokens", "Tokens generated.", m, registry=r)
        self.request_success = Counter("podserve:request_success", "Requests that finished (stop or length).",
                                       m + ["finished_reason"], registry=r)
        self.ttft = Histogram("podserve:time_to_first_token_seconds", "Arrival to first token.", m,
                              buckets=_TTFT_BUCKETS, registry=r)
        self.itl = Histogram("podserve:inter_token_latency_seconds", "Time between consecutive tokens.", m,
                             buckets=_ITL_BUCKETS, registry=r)
        self.e2e = Histogram("podserve:e2e_request_latency_seconds", "Arrival to last token.", m,
                             buckets=_E2E_BUCKETS, registry=r)
        self.queue_time = Histogram("podserve:request_queue_time_seconds", "Arrival to first scheduled.", m,
                                    buckets=_E2E_BUCKETS, registry=r)
        # Pre-create the label sets so a fresh server exports zeros rather than nothing.
        for reason in ("stop", "length"):
            self.request_success.labels(model_name, reason)
        self.prompt_tokens.labels(model_name)
        self.generation_tokens.labels(model_name)
        for histogram in (self.ttft, self.itl, self.e2e, self.queue_time):
            histogram.labels(model_name)

    def observe(self, out: RequestOutput) -> None:
        """Account one step's output of one request (runs on the engine thread)."""
        name = self.model_name
        num_new = len(out.delta_token_ids)
        self.generation_tokens.labels(name).inc(num_new)
        metrics = out.metrics
        if num_new and len(out.outputs[0].token_ids) == num_new:  # first token: its prompt is now prefilled
            self.prompt_tokens.labels(name).inc(len(out.prompt_token_ids))
            if metrics.first_token_time is not None:
                self.ttft.labels(name).observe(metrics.first_token_time - metrics.arrival_time)
            if metrics.first_scheduled_time is not None:
                self.queue_time.labels(name).observe(metrics.first_scheduled_time - metrics.arrival_time)
        if out.finished:
            reason = out.outputs[0].finish_reason or "stop"
            self.request_success.labels(name, reason).inc()
            if metrics.finished_time is not None:
                self.e2e.labels(name).observe(metrics.finished_time - metrics.arrival_time)
            times = metrics.token_times
            itl = self.itl.labels(name)
            for earlier, later in zip(times, times[1:]):
                itl.observe(later - earlier)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
