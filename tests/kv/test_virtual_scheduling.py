"""Schedulers run unchanged over VirtualKVManager: preemption when pages run out, no leaks."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podserve.config import SchedulerConfig
from podserve.core.batch import ExecutorOutput
from podserve.core.kv.paged import BlockManager
from podserve.core.kv.virtual import VirtualKVManager
from podserve.core.scheduler import SCHEDULERS, make_scheduler
from podserve.request import Request, RequestStatus, SamplingParams


def run(kv, lengths, aborts=(), chunk_size=32, max_num_seqs=4, seed=0):
    """Drive the Sarathi scheduler with a fake executor; returns (scheduler, steps)."""
    sched = make_scheduler(SchedulerConfig(chunk_size=chunk_size, max_num_seqs=max_num_seqs, max_model_len=512), kv)
    rng = random.Random(seed)
    for i, (p, d) in enumerate(lengths):
        sched.add_request(Request(str(i), [rng.randrange(1, 100) for _ in range(p)], SamplingParams(max_tokens=d, ignore_eos=True), 0.0))
    steps = 0
    while sched.has_unfinished():
        batch = sched.schedule(float(steps))
        for rid in aborts:
            if steps == rid:  # abort request ``rid`` at step ``rid`` (while it holds KV or waits)
                sched.abort_request(str(rid))
        plan = kv.take_plan()
        for seq in batch.seqs:
            request = sched.requests.get(seq.request_id)
            if request is not None and request.status is RequestStatus.RUNNING:
                slot = seq.block_table[0]
                assert kv.mapped_pages(slot) * kv.tokens_per_page >= seq.context_len, "KV written past the mapped pages"
        assert plan is not None
        sched.update(batch, ExecutorOutput([1 if s.do_sample else None for s in batch.seqs]), float(steps))
        steps += 1
        assert steps < 10_000, "scheduler livelocked"
    return sched, steps


def test_preempts_when_pages_run_out_and_finishes_everything():
    # 4 requests of 40 + 60 tokens need 4 x 7 pages of 16 at the end; only 12 exist.
    kv = VirtualKVManager(max_batch=4, max_ctx=512, tokens_per_page=16, num_pages=12, watermark=0.0)
    sched, _ = run(kv, [(40, 60)] * 4)
    assert sched.num_preemptions > 0
    assert kv.num_requests() == 0 and kv.num_free_blocks == kv.num_blocks
    assert kv.num_slot_reuses > 0  # requeued/new requests landed on mapped slots
    assert kv.num_pages_unmapped_total > 0  # pressure forced reclamation


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(1, 80), st.integers(1, 40)), min_size=1, max_size=8),
    num_pages=st.integers(8, 40),
    aborts=st.lists(st.integers(0, 40), max_size=3),
    lookahead=st.sampled_from([0, 8]),
)
def test_nothing_leaks_after_finishes_aborts_and_preemptions(lengths, num_pages, aborts, lookahead):
    kv = VirtualKVManager(max_batch=3, max_ctx=512, tokens_per_page=16, num_pages=num_pages, watermark=0.0, lookahead_tokens=lookahead)
    run(kv, lengths, aborts=aborts, max_num_seqs=3)
    assert kv.num_requests() == 0
    assert kv.num_free_blocks == num_pages and kv.usage == 0.0
    assert sorted(kv._free_slots) == [0, 1, 2]
    assert kv.num_mapped_pages <= num_pages
    still_mapped = kv.num_pages_mapped_total - kv.num_pages_unmapped_total
    assert kv.num_mapped_pages == still_mapped
    assert kv.reclaim_idle() == still_mapped
    assert kv.num_mapped_pages == 0


@pytest.mark.parametrize("policy", sorted(SCHEDULERS))
def test_every_policy_schedules_identically_over_pages_and_blocks(policy):
    """Pages sized like blocks, slots = max_num_seqs: each policy makes the same batches,
    admissions and preemptions over VirtualKVManager as over BlockManager."""
    rng = random.Random(3)
    lengths = [(rng.randrange(1, 90), rng.randrange(1, 40)) for _ in range(10)]
    prompts = [[rng.randrange(1, 100) for _ in range(p)] for p, _ in lengths]
    config = SchedulerConfig(policy=policy, chunk_size=48, max_num_seqs=4, max_model_len=128)
    logs = []
    for kv in (BlockManager(14, 16, watermark=0.1), VirtualKVManager(4, 128, 16, 14, watermark=0.1)):
        sched = make_scheduler(config, kv)
        for i, (ids, (_, d)) in enumerate(zip(prompts, lengths)):
            sched.add_request(Request(str(i), ids, SamplingParams(max_tokens=d, ignore_eos=True), 0.0))
        log, steps = [], 0
        while sched.has_unfinished() and steps < 5_000:
            batch = sched.schedule(float(steps))
            log.append(([(s.request_id, s.start_pos, s.num_tokens) for s in batch.seqs], list(batch.preempted_ids)))
            if isinstance(kv, VirtualKVManager):
                kv.take_plan()
            sched.update(batch, ExecutorOutput([1 if s.do_sample else None for s in batch.seqs]), float(steps))
            steps += 1
        assert not sched.has_unfinished() and kv.num_free_blocks == kv.num_blocks
        logs.append(log)
    assert logs[0] == logs[1]
    if policy in ("sarathi", "vllm", "simple-chunking"):
        assert any(preempted for _, preempted in logs[0]), "the budget must be tight enough to preempt"
