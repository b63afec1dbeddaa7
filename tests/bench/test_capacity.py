"""Capacity search and SLO rules, with fake probes and hand-made request timelines."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podserve.bench.capacity import Probe, find_capacity
from podserve.bench.report import format_capacity_table
from podserve.bench.slo import SLO, SLOWatch
from podserve.bench.workloads import WorkloadRequest
from podserve.metrics import distribution
from podserve.request import Request, SamplingParams


def _threshold_probe(threshold):
    return lambda qps: Probe(qps, qps <= threshold, None, None, 0.0)


@settings(max_examples=300, deadline=None)
@given(st.floats(0.02, 500), st.floats(0.05, 100), st.sampled_from([0.05, 0.1, 0.25]))
def test_search_brackets_the_threshold(threshold, start, tol):
    r = find_capacity(_threshold_probe(threshold), qps_start=start, tolerance=tol, min_qps=0.01, max_probes=64)
    lo, hi = r.bracket
    assert lo is not None and hi is not None
    assert lo <= threshold < hi and (hi - lo) / hi <= tol
    assert r.capacity_qps == lo == max(p.qps for p in r.probes if p.passed)


def test_search_reports_zero_when_nothing_passes_and_stops_at_max_probes():
    r = find_capacity(_threshold_probe(0.001), qps_start=1.0, min_qps=0.1)
    assert r.capacity_qps == 0.0 and r.bracket == (None, 0.1)
    assert len(find_capacity(_threshold_probe(7.0), qps_start=1.0, tolerance=0.001, max_probes=5).probes) == 5
    with pytest.raises(ValueError):
        find_capacity(_threshold_probe(1.0), tolerance=0.0)


def test_slo_check_uses_p99_tbt_and_p50_delay():
    slo = SLO(tbt_s=0.1, delay_s=2.0)
    delay_ok = distribution([1.0, 3.0, 1.5])  # P50 1.5 s
    assert slo.check({"tbt": distribution([0.05] * 99 + [0.5]), "scheduling_delay": delay_ok})  # P99 0.0545 s
    assert not slo.check({"tbt": distribution([0.05] * 98 + [0.5] * 2), "scheduling_delay": delay_ok})
    assert not slo.check({"tbt": distribution([0.05] * 100), "scheduling_delay": distribution([3.0, 3.0, 1.0])})


def _request(i, arrival, first_scheduled, token_times):
    r = Request(f"r{i}", [1, 2], SamplingParams(max_tokens=len(token_times) or 1), arrival_time=arrival)
    r.times.first_scheduled = first_scheduled
    r.times.token_times = list(token_times)
    return r


def test_watch_stops_only_once_the_p99_is_certainly_missed():
    slo = SLO(tbt_s=0.1, delay_s=100.0)
    workload = [WorkloadRequest(0.0, 2, 101)] * 2  # 200 TBT samples: the P99 tolerates ~2 late ones
    watch = SLOWatch(slo, workload)
    slow = [0.0, 0.5, 1.0, 1.05]  # two late gaps, one fine
    assert watch(1.0, [_request(0, 0.0, 0.0, slow)]) is None
    assert "P99 TBT" in watch(2.0, [_request(0, 0.0, 0.0, slow + [1.6, 2.1])])  # four late gaps
    # Check the bound against numpy: four late samples of 200 do push P99 above the SLO.
    assert np.percentile([0.05] * 196 + [0.5] * 4, 99) > slo.tbt_s


def test_watch_counts_requests_still_queued_past_the_delay_slo():
    slo = SLO(tbt_s=10.0, delay_s=1.0)
    watch = SLOWatch(slo, [WorkloadRequest(0.0, 2, 2)] * 6)  # P50 fails once 5 of 6 are late
    waiting = [_request(i, 0.0, None, []) for i in range(5)]
    assert watch(0.5, waiting) is None           # nobody has waited 1 s yet
    assert "P50 delay" in watch(1.5, waiting)   # five have, and they can only get later


def test_capacity_table_ratios():
    text = format_capacity_table({"sarathi": 2.0, "vllm": 0.5}, {"sarathi": (2.0, 2.2), "vllm": (0.5, None)})
    assert "0.25x" in text and "[0.500, -]" in text
