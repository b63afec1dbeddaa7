"""Requests as large as the KV cache itself: they run (alone if need be) or end by length,
they never wait forever."""
from __future__ import annotations

import pytest

from podserve.config import SchedulerConfig
from podserve.core.batch import ExecutorOutput
from podserve.core.kv.paged import BlockManager
from podserve.core.kv.virtual import VirtualKVManager
from podserve.core.scheduler import make_scheduler
from podserve.request import Request, RequestStatus, SamplingParams

POLICIES = ["sarathi", "vllm", "simple-chunking"]  # the recomputing ones (orca/FT reserve max_model_len)


def _run(sched, requests, max_iterations=500):
    for r in requests:
        sched.add_request(r)
    it = 0
    while sched.has_unfinished():
        assert it < max_iterations, f"stuck: waiting={[r.request_id for r in sched.waiting]} running={[r.request_id for r in sched.running]}"
        batch = sched.schedule(float(it))
        sched.update(batch, ExecutorOutput([7 if s.do_sample else None for s in batch.seqs]), it + 0.5)
        it += 1
    assert sched.kv.num_free_blocks == sched.kv.num_blocks
    return it


def _req(rid, n_prompt, max_tokens, arrival=0.0):
    return Request(rid, list(range(1, n_prompt + 1)), SamplingParams(max_tokens=max_tokens, ignore_eos=True), arrival)


@pytest.mark.parametrize("policy", POLICIES)
def test_prompt_above_the_watermark_runs_alone(policy):
    # 10 blocks of 4, watermark 2 blocks: a 33-token prompt needs 9 blocks, more than the
    # 8 admission may take while others run, but the whole cache holds it.
    cfg = SchedulerConfig(policy=policy, chunk_size=64, max_num_seqs=4, max_model_len=40)
    sched = make_scheduler(cfg, BlockManager(10, 4, watermark=0.2))
    small, big = _req("small", 4, 3), _req("big", 33, 3)
    _run(sched, [small, big])
    assert big.status is RequestStatus.FINISHED_LENGTH and big.num_output_tokens == 3


@pytest.mark.parametrize("policy", POLICIES)
def test_request_outgrowing_the_whole_cache_ends_by_length(policy):
    # 4 blocks of 4 = 16 tokens of KV: the 17th token is sampled from a full cache, and a
    # further decode could never run (not even after preempting itself), so it ends there.
    cfg = SchedulerConfig(policy=policy, chunk_size=64, max_num_seqs=4, max_model_len=64)
    sched = make_scheduler(cfg, BlockManager(4, 4, watermark=0.0))
    r = _req("r", 4, 40)
    _run(sched, [r])
    assert r.status is RequestStatus.FINISHED_LENGTH and r.num_tokens == 17 and r.num_output_tokens == 13


@pytest.mark.parametrize("policy", POLICIES)
def test_preempted_request_grown_into_the_watermark_is_readmitted(policy):
    # 'old' keeps decoding and preempts 'new' (the newest) once 'new' has grown past what
    # admission may take above the watermark; 'new' must come back once 'old' is done.
    cfg = SchedulerConfig(policy=policy, chunk_size=64, max_num_seqs=4, max_model_len=64)
    sched = make_scheduler(cfg, BlockManager(12, 4, watermark=0.25))  # admission: 9 blocks
    old, new = _req("old", 2, 30), _req("new", 28, 16)
    _run(sched, [old, new])
    assert new.num_preemptions > 0
    assert old.num_output_tokens == 30 and new.num_output_tokens == 16


def test_virtual_kv_slot_limit_ends_by_length():
    cfg = SchedulerConfig(policy="sarathi", chunk_size=64, max_num_seqs=2, max_model_len=64)
    kv = VirtualKVManager(max_batch=2, max_ctx=16, tokens_per_page=4, num_pages=64)
    sched = make_scheduler(cfg, kv)
    r = _req("r", 4, 40)
    _run(sched, [r])
    assert r.status is RequestStatus.FINISHED_LENGTH and r.num_tokens == 17
