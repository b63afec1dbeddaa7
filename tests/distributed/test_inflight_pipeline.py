"""Pipelined scheduling (engine and simulator): no request is in two micro-batches at once;
and the bubble-fraction arithmetic. No torch."""
from __future__ import annotations

import pytest

from podserve.config import ParallelConfig, SchedulerConfig, pipeline_depth
from podserve.core.batch import ExecutorOutput
from podserve.core.inflight import InFlightBatches
from podserve.core.kv.paged import BlockManager
from podserve.core.scheduler import make_scheduler
from podserve.metrics.pipeline import PipelineStats
from podserve.sim.sim_request import make_request


def _drive_pipeline(sched, num_stages: int, max_steps: int = 2000):
    """Run ``sched`` through a ``num_stages``-deep pipeline of micro-batches (each returns
    after the others ahead of it) and check the in-flight rules on every micro-batch.
    Returns the scheduled micro-batches."""
    inflight, pending, now, batches = InFlightBatches(num_stages), [], 0.0, []
    next_pos: dict[str, int] = {}  # where each request's next scheduled token must start
    steps = 0
    while sched.has_unfinished() or pending:
        while len(pending) < num_stages:
            batch = inflight.schedule(sched, now)
            in_flight = {s.request_id: s for p in pending for s in p.seqs}
            assert not set(batch.preempted_ids) & set(in_flight)  # nothing with work in flight is preempted
            for rid in batch.preempted_ids:
                next_pos.pop(rid, None)
            if batch.is_empty:
                break
            ids = [s.request_id for s in batch.seqs]
            assert len(set(ids)) == len(ids)
            for s in batch.seqs:
                earlier = in_flight.get(s.request_id)
                if earlier is not None:  # only a non-final prefill chunk may be followed at once (its token is known)
                    assert not earlier.do_sample
                if s.start_pos != 0 or s.request_id in next_pos:  # (a preempted request restarts at 0)
                    assert s.start_pos == next_pos[s.request_id]
                next_pos[s.request_id] = s.start_pos + len(s.token_ids)
            inflight.add(batch)
            pending.append(batch)
            batches.append(batch)
        batch = pending.pop(0)
        inflight.remove(batch)
        now += 1.0
        sched.update(batch, ExecutorOutput([7 if s.do_sample else None for s in batch.seqs]), now)
        steps += 1
        assert steps < max_steps
    assert len(inflight) == 0 and not sched.running and not sched.pinned
    return batches


@pytest.mark.parametrize("policy", ["sarathi", "vllm", "orca"])
def test_in_flight_requests_are_never_scheduled_again(policy):
    sched = make_scheduler(SchedulerConfig(policy=policy, chunk_size=32, max_num_seqs=8, max_model_len=256),
                           BlockManager(256, 16))
    reqs = [make_request(i, 0.0, 20 + 7 * i, 5) for i in range(6)]
    for r in reqs:
        sched.add_request(r)
    _drive_pipeline(sched, 3)
    assert all(len(r.output_token_ids) == 5 for r in reqs)


def test_prefill_chunks_of_one_request_fill_consecutive_micro_batches():
    # One long prompt, chunk 64, two stages: its 8 chunks go out back to back, not one per round trip.
    sched = make_scheduler(SchedulerConfig(chunk_size=64, max_num_seqs=8, max_model_len=1024), BlockManager(256, 16))
    req = make_request(0, 0.0, 512, 3)
    sched.add_request(req)
    batches = _drive_pipeline(sched, 2)
    chunks = [b for b in batches if b.seqs[0].is_prefill]
    assert [s.start_pos for b in chunks for s in b.seqs] == list(range(0, 512, 64))
    assert len(batches) == 8 + 2  # eight chunks in eight micro-batches, then two decodes
    assert len(req.output_token_ids) == 3


@pytest.mark.parametrize("policy", ["sarathi", "vllm"])
@pytest.mark.parametrize("seed", range(4))
def test_one_micro_batch_more_than_stages_keeps_the_rules(policy, seed):
    # pipeline_microbatches = pp + 1 (three in flight for two stages): random lengths and
    # arrivals in waves, every request completes with exactly its tokens, none is scheduled
    # again while its token is pending (checked by _drive_pipeline on every micro-batch).
    import random

    rng = random.Random(seed)
    sched = make_scheduler(SchedulerConfig(policy=policy, chunk_size=32, max_num_seqs=8, max_model_len=256),
                           BlockManager(96, 8))
    reqs = [make_request(i, 0.0, rng.randint(4, 150), rng.randint(1, 30)) for i in range(14)]
    for r in reqs:
        sched.add_request(r)
    batches = _drive_pipeline(sched, pipeline_depth(2, 3), max_steps=5000)
    assert all(len(r.output_token_ids) == r.sampling_params.max_tokens for r in reqs)
    assert sched.kv.num_requests() == 0
    assert len(batches) > 3


def test_pipeline_microbatches_fewer_than_stages_is_refused():
    from podserve.sim.simulator import ClusterConfig

    assert pipeline_depth(1, 3) == 1 and pipeline_depth(2) == 2 and pipeline_depth(2, 3) == 3
    assert ParallelConfig(pipeline_parallel_size=2, pipeline_microbatches=3).pipeline_microbatches == 3
    with pytest.raises(ValueError, match=r"ParallelConfig\.pipeline_microbatches=1 is invalid.*pipeline-parallel size \(2\)"):
        ParallelConfig(pipeline_parallel_size=2, pipeline_microbatches=1)
    with pytest.raises(ValueError, match=r"ParallelConfig\.pipeline_microbatches='3' is invalid"):
        ParallelConfig(pipeline_parallel_size=2, pipeline_microbatches="3")
    with pytest.raises(ValueError, match=r"ClusterConfig\.pipeline_microbatches=2 is invalid.*\(4\)"):
        ClusterConfig(pp=4, pipeline_microbatches=2)


def test_pipeline_microbatches_flag_reaches_the_config():
    import argparse

    from podserve.entrypoints.engine_args import add_engine_args, engine_config_from_args

    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    assert engine_config_from_args(parser.parse_args(["-pp", "2"])).parallel.pipeline_microbatches is None
    par = engine_config_from_args(parser.parse_args(["-pp", "2", "--pipeline-microbatches", "3"])).parallel
    assert (par.pipeline_parallel_size, par.pipeline_microbatches) == (2, 3)
    with pytest.raises(ValueError, match="pipeline_microbatches=1"):
        engine_config_from_args(parser.parse_args(["-pp", "2", "--pipeline-microbatches", "1"]))


@pytest.mark.parametrize("seed", range(6))
def test_pipelined_chunks_survive_kv_pressure(seed):
    # A cache far too small for the load forces preemptions while chunks are in flight.
    import random

    rng = random.Random(seed)
    sched = make_scheduler(SchedulerConfig(chunk_size=rng.choice([16, 32, 48]), max_num_seqs=8, max_model_len=256),
                           BlockManager(rng.choice([24, 32, 40]), 8))
    reqs = [make_request(i, 0.0, rng.randint(10, 120), rng.randint(1, 40)) for i in range(12)]
    for r in reqs:
        sched.add_request(r)
    _drive_pipeline(sched, rng.choice([2, 3, 4]), max_steps=5000)
    assert all(len(r.output_token_ids) == r.sampling_params.max_tokens for r in reqs)
    assert sched.num_preemptions > 0
    assert sched.kv.num_requests() == 0


@pytest.mark.parametrize("depth, num_requests", [(2, 8), (3, 9)])
def test_running_requests_split_evenly_over_the_micro_batches(depth, num_requests):
    # Greedy packing would put all decodes in one micro-batch and leave the other stages idle;
    # with ``depth`` micro-batches in flight each takes 1/depth of them.
    sched = make_scheduler(SchedulerConfig(chunk_size=512, max_num_seqs=16, max_model_len=256), BlockManager(256, 16))
    for i in range(num_requests):
        sched.add_request(make_request(i, 0.0, 4, 30))
    inflight, pending, sizes = InFlightBatches(depth), [], []
    while sched.has_unfinished() or pending:
        while len(pending) < depth:
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
    assert len(decode_only) > 40 and set(decode_only) == {num_requests // depth}


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
