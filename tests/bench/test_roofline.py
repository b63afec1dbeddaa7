"""Roofline quantities of an iteration, against hand arithmetic on the tiny-llama shape."""
from __future__ import annotations

import pytest

from podserve.bench.roofline import (DeviceRates, format_roofline, iteration_cost, measure_device_rates,
                                     roofline_report)
from podserve.core.batch import ScheduledBatch, ScheduledSeq
from podserve.metrics.records import IterationRecord
from podserve.model.presets import preset_config
from podserve.request import SamplingParams

CFG = preset_config("tiny-llama")  # vocab 512, hidden 64, inter 128, 2 layers, 4 heads, 2 KV heads, head_dim 16


def batch() -> ScheduledBatch:
    p = SamplingParams()
    seqs = [ScheduledSeq("a", [1], 9, False, True, [0], p, 3),  # decode, context 10
            ScheduledSeq("b", [1], 19, False, True, [1, 2], p, 5),  # decode, context 20
            ScheduledSeq("c", [1] * 8, 4, True, True, [3], p, 0)]  # chunk of 8 after 4 cached: kv 12
    return ScheduledBatch(iteration=7, seqs=seqs, num_decodes=2)


def test_cost_of_a_hybrid_batch_by_hand():
    # tokens T = 10, sampled S = 3; decode contexts 10 + 20 = 30; chunk pairs 8*4 + 8*9/2 = 68
    linear = 2 * 10 * (64 * 128 + 64 * 64 + 64 * 256 + 128 * 64)  # 737280
    attention = 4 * 4 * 16 * (68 + 30)  # 25088
    flops = 2 * (linear + attention) + 2 * 3 * 64 * 512
    weights = 2 * (2 * (8192 + 4096 + 16384 + 8192) + 2 * 2 * 64) + 2 * 64 * 512 + 2 * 64
    kv = 2 * (2 * 2 * 2 * 16 * (30 + 12) + 2 * 2 * 2 * 16 * 10)
    gemm_acts = 2 * 10 * ((64 + 128) + (64 + 64) + (64 + 256) + (128 + 64))
    layer_acts = gemm_acts + 2 * 10 * 64 * 2 + 2 * 10 * 64 * 4 + 2 * 10 * 128 * 3 + 2 * 10 * 64 * 6
    acts = 2 * layer_acts + 2 * 10 * 64 + 2 * 10 * 64 * 2 + 2 * 3 * 64 + 4 * 3 * 512
    assert (flops, weights, kv, acts) == (1721344, 213632, 13312, 89728)
    cost = iteration_cost(batch(), CFG, dtype_bytes=2)
    assert (cost.flops, cost.weight_bytes, cost.kv_bytes, cost.activation_bytes) == (flops, weights, kv, acts)
    record = IterationRecord.from_batch(batch(), 0.0, 1.0)
    assert iteration_cost(record, CFG) == cost  # a record carries the same facts
    rates = DeviceRates(1e9, 1e9, "test", "bfloat16")
    assert cost.ideal_time(rates) == pytest.approx(1721344 / 1e9)
    assert cost.bound(rates) == "compute"
    slow_memory = DeviceRates(1e12, 1e8, "test", "bfloat16")
    assert cost.ideal_time(slow_memory) == pytest.approx((213632 + 13312 + 89728) / 1e8)
    assert cost.bound(slow_memory) == "memory"


def test_report_efficiency_and_utilisation():
    rates = DeviceRates(1e9, 1e9, "test", "bfloat16")
    r = IterationRecord.from_batch(batch(), 0.0, 0.0034426880)  # twice the ideal 1.721344 ms
    r.gpu_time = 0.001721344
    rep = roofline_report([r], CFG, rates)
    row = rep["iterations"][0]
    assert row["efficiency_wall"] == pytest.approx(0.5) and row["efficiency_gpu"] == pytest.approx(1.0)
    s = rep["summary"]
    assert s["by_kind"]["hybrid"]["wall"]["p50"] == pytest.approx(0.5)
    assert s["mfu_wall"] == pytest.approx(0.5) and s["mfu_gpu"] == pytest.approx(1.0)
    assert s["mbu_wall"] == pytest.approx(316672 / 1e9 / 0.003442688)
    assert "MFU 50%" in format_roofline(s)


def test_measure_device_rates_on_cpu():
    rates = measure_device_rates("cpu", matmul_size=128, copy_bytes=1 << 20, repeats=2)
    assert rates.matmul_flops > 1e6 and rates.copy_bytes_per_s > 1e6
    assert rates.device == "cpu" and rates.dtype == "float32"
