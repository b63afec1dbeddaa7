"""MetricsCollector: values from hand-made timestamps, and a scheduler-driven run."""
from __future__ import annotations

import csv
import json

import pytest

from podserve.config import SchedulerConfig
from podserve.core.batch import ExecutorOutput
from podserve.core.kv.paged import BlockManager
from podserve.core.scheduler import make_scheduler
from podserve.metrics import MetricsCollector, RequestMetrics, distribution, piggyback_table
from podserve.metrics.records import IterationRecord
from podserve.request import Request, RequestStatus, SamplingParams


def _finished_request(arrival, scheduled, token_times, prompt=5):
    r = Request("a", list(range(prompt)), SamplingParams(max_tokens=len(token_times)), arrival_time=arrival)
    r.times.first_scheduled = scheduled
    r.times.first_token = token_times[0]
    r.times.token_times = list(token_times)
    r.times.finished = token_times[-1]
    r.output_token_ids = [7] * len(token_times)
    r.status = RequestStatus.FINISHED_LENGTH
    return r


def test_request_metrics_from_timestamps():
    m = RequestMetrics.from_request(_finished_request(1.0, 1.5, [2.0, 2.25, 3.0, 3.5]))
    assert m.scheduling_delay == 0.5 and m.ttft == 1.0 and m.e2e == 2.5
    assert m.tbt == [0.25, 0.75, 0.5]
    assert m.normalized_e2e == 2.5 / 4
    assert m.finish_reason == "length"
    row = m.row()
    assert row["tbt_max"] == 0.75 and row["tbt"].count(";") == 2


def test_distribution_percentiles():
    d = distribution(list(range(1, 101)) + [None])
    assert d["count"] == 100 and d["p50"] == pytest.approx(50.5) and d["p99"] == pytest.approx(99.01)
    assert distribution([])["p99"] is None


def test_piggyback_table_pairs_equal_decode_counts():
    its = [
        IterationRecord(0, 0.0, 0.010, 0, 4, 4, 4, 0, 0),
        IterationRecord(1, 0.0, 0.020, 0, 4, 4, 4, 0, 0),
        IterationRecord(2, 0.0, 0.050, 100, 4, 5, 4, 1, 0),
        IterationRecord(3, 0.0, 0.050, 100, 3, 4, 3, 1, 0),  # no decode-only partner: left out
    ]
    (row,) = piggyback_table(its)
    assert row["num_decodes"] == 4 and row["decode_only_mean_s"] == pytest.approx(0.015)
    assert row["hybrid_mean_s"] == pytest.approx(0.05) and row["hybrid_mean_prefill_tokens"] == 100


def test_collector_on_a_scheduled_run(tmp_path):
    """Drive sarathi with a fake executor on a virtual clock; every count must add up."""
    sched = make_scheduler(SchedulerConfig(chunk_size=16, max_num_seqs=4, max_model_len=128), BlockManager(64, 4))
    collector = MetricsCollector()
    for i in range(3):
        sched.add_request(Request(f"r{i}", [1] * (10 + 10 * i), SamplingParams(max_tokens=5, ignore_eos=True), arrival_time=0.0))
    sched.add_request(Request("gone", [1] * 8, SamplingParams(max_tokens=5), arrival_time=0.0))
    collector.on_request_finished(sched.abort_request("gone"))
    now = 0.0
    while sched.has_unfinished():
        batch = sched.schedule(now)
        end = now + 0.001 * (1 + batch.num_tokens)  # a cost model: longer batches take longer
        updates = sched.update(batch, ExecutorOutput([9 if s.do_sample else None for s in batch.seqs]), end)
        collector.on_iteration(batch, now, end)
        for u in updates:
            if u.finished:
                collector.on_request_finished(u.request)
        now = end
    s = collector.summary()
    assert s["num_requests"] == 4 and s["num_completed"] == 3 and s["num_aborted"] == 1
    assert s["tbt"]["count"] == 3 * 4
    assert s["iterations"]["count"] == len(collector.iterations) > 0
    # Every prompt token once, plus one decode per output token after the first. (A chunk
    # that leaves a single prompt token behind lets that token run as a decode.)
    assert sum(it.num_prefill_tokens + it.num_decode_tokens for it in collector.iterations) == 60 + 3 * 4
    assert s["throughput_output_tokens_per_s"] == pytest.approx(15 / now)
    assert s["ttft"]["max"] <= s["e2e"]["max"] == pytest.approx(now)
    req_csv, it_csv = collector.write_csv(tmp_path)
    rows = list(csv.DictReader(open(req_csv)))
    assert {r["request_id"] for r in rows} == {"r0", "r1", "r2", "gone"}
    assert len(list(csv.DictReader(open(it_csv)))) == len(collector.iterations)
    data = json.loads(collector.write_json(tmp_path / "m.json", include_records=True).read_text())
    assert data["summary"]["num_completed"] == 3 and len(data["iterations"]) == len(collector.iterations)
