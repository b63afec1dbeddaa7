"""Pipelined scheduling (engine and simulator): no request is in two micro-batches at once;
and the bubble-fraction arithmetic. No torch."""
from __future__ import annotations

import pytest

from podserve.config import SchedulerConfig
from podserve.core.batch import ExecutorOutput
from podserve.core.inflight import InFlightBatches
from podserve.core.kv.paged import BlockManager
from podserve.core.scheduler import make_scheduler
from podserve.metrics.pipeline import PipelineStats
from podserve.sim.sim_request import make_request


@pytest.mark.parametrize("policy", ["sarathi", "vllm", "orca"])
def test_in_flight_requests_are_never_scheduled_again(policy):
    sched = make_scheduler(SchedulerConfig(policy=policy, chunk_size=32, max_num_seqs=8, max_model_len=256),
                           BlockManager(256, 16))
    for i in range(6):
        sched.add_request(make_request(i, 0.0, 20 + 7 * i, 5))
    inflight, pending, now = InFlightBatches(3), [], 0.0
    steps = 0
    while sched.has_unfinished() or pending:
        while len(pending) < 3:  # three stages
            batch = inflight.schedule(sched, now)
            if batch.is_empty:
                break
            ids = [s.request_id for s in batch.seqs]
            assert len(set(ids)) == len(ids)
            for p in pending:  # disjoint from every micro-batch still in the pipeline
                assert not set(ids) & {s.request_id for s in p.seqs}
            inflight.add(batch)
            pending.append(batch)
        batch = pending.pop(0)
        inflight.remove(batch)
        now += 1.0
        sched.update(batch, ExecutorOutput([7 if s.do_sample else None for s in batch.seqs]), now)
        steps += 1
        assert steps < 500
    assert len(inflight) == 0 and not sched.running
    # Hidden requests kept their place: all requests finished with exactly 5 tokens.


def test_running_requests_split_evenly_over_the_micro_batches():
    # Greedy packing would put all 8 decodes in one micro-batch and leave the other stage idle.
    sched = make_scheduler(SchedulerConfig(chunk_size=512, max_num_seqs=16, max_model_len=256), BlockManager(256, 16))
    for i in range(8):
        sched.add_request(make_request(i, 0.0, 4, 30))
    inflight, pending, sizes = InFlightBatches(2), [], []
    while sched.has_unfinished() or pending:
        while len(pending) < 2:
            batch = inflight.schedule(sched, 0.0)
            if batch.is_empty:
                break
            inflight.add(batch)
            pending.append(batch)
            sizes.append((batch.num_decodes, batch.num_prefills))
        batch = pending.pop(0)
        inflight.remove(batch)
        sched.update(batch, ExecutorOutput([7 if s.do_sample else None for s in batch.seqs]), 0.0)
    decode_only = [d for d, p in sizes if p == 0]
    assert len(decode_only) > 40 and set(decode_only) == {4}


def test_bubble_fraction_of_a_hand_computed_timeline():
    stats = PipelineStats(2)
    # Two micro-batches overlap: [0, 3] and [1, 4]; stage 0 busy 0-1, 1-2; stage 1 busy 1-2, 2-3.
    stats.on_micro_batch(0.0, 3.0, [(0.0, 1.0), (1.0, 2.0)])
    stats.on_micro_batch(1.0, 4.0, [(1.0, 2.0), (2.0, 3.0)])
    s = stats.summary()
    assert s["active_s"] == pytest.approx(4.0)
    assert s["stage_busy_s"] == [2.0, 2.0]
    assert s["bubble_fraction"] == pytest.approx(0.5)
    stats.reset()
    assert stats.summary()["bubble_fraction"] is None
