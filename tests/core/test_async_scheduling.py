"""Asynchronous scheduling (``InFlightBatches(lookahead=True)``): two steps in flight, the
second scheduled with its decodes' tokens pending, gives every request exactly the tokens
the synchronous loop gives, for every policy, under preemption, EOS stops and aborts;
and leaves no KV behind. Driven by a deterministic fake executor (no torch)."""
from __future__ import annotations

import random
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podserve.config import SchedulerConfig
from podserve.core.batch import PENDING_TOKEN, ExecutorOutput, ScheduledBatch
from podserve.core.inflight import InFlightBatches
from podserve.core.kv.paged import BlockManager
from podserve.core.scheduler import SCHEDULERS, make_scheduler
from podserve.request import Request, RequestStatus, SamplingParams

EOS = 1


class FakeExecutor:
    """Runs batches in submission order; a sampled token depends on the request, its
    position and the input token it was fed, so a wrong substitution changes the output."""

    def __init__(self):
        self.last: dict[str, int] = {}

    def run(self, batch: ScheduledBatch) -> ExecutorOutput:
        out = []
        for s in batch.seqs:
            if s.token_ids and s.token_ids[0] == PENDING_TOKEN:
                assert not s.is_prefill and len(s.token_ids) == 1
                s.token_ids = [self.last[s.request_id]]
            assert PENDING_TOKEN not in s.token_ids
            if s.do_sample:
                h = hash((s.request_id, s.context_len, s.token_ids[-1])) % 997
                out.append(EOS if h < 40 else 2 + h)  # ~4% EOS per token
            else:
                out.append(None)
        self.last = {s.request_id: t for s, t in zip(batch.seqs, out) if s.do_sample}
        return ExecutorOutput(out)


def run(policy: str, lookahead: bool, specs, num_blocks: int, abort_at: dict[int, str]):
    kv = BlockManager(num_blocks, 4, 0.0)
    sched = make_scheduler(SchedulerConfig(policy=policy, chunk_size=16, max_num_seqs=4, max_model_len=96,
                                           max_num_batched_tokens=96), kv)
    requests = {}
    for i, (prompt_len, max_tokens, ignore_eos) in enumerate(specs):
        rid = f"r{i}"
        r = Request(rid, [3 + (i * 7 + j) % 50 for j in range(prompt_len)],
                    SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=ignore_eos),
                    arrival_time=0.0, eos_token_ids=(EOS,))
        sched.add_request(r)
        requests[rid] = r
    depth = 2 if lookahead else 1
    inflight = InFlightBatches(depth, lookahead=lookahead)
    executor, pending, step = FakeExecutor(), deque(), 0
    while sched.has_unfinished() or pending:
        step += 1
        assert step < 5000, "livelock"
        if step in abort_at:
            sched.abort_request(abort_at[step])
        while len(pending) < depth:
            batch = inflight.schedule(sched, 0.0)
            if batch.is_empty:
                break
            inflight.add(batch)
            pending.append((batch, executor.run(batch)))
            assert all(PENDING_TOKEN not in r.output_token_ids for r in requests.values())
        if not pending:
            continue
        batch, output = pending.popleft()
        inflight.remove(batch)
        sched.update(batch, output, 0.0)
    assert kv.num_free_blocks == kv.num_blocks, "KV leaked"
    return {rid: (list(r.output_token_ids), r.status) for rid, r in requests.items()}


@pytest.mark.parametrize("policy", sorted(SCHEDULERS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_lookahead_gives_the_synchronous_tokens(policy, data):
    specs = data.draw(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 30), st.booleans()), min_size=1, max_size=8))
    needed = max(-(-min(96, p + m + 1) // 4) for p, m, _ in specs)
    num_blocks = data.draw(st.integers(needed + 2, 80)) if policy not in ("orca", "fastertransformer") else 200
    sync = run(policy, False, specs, num_blocks, {})
    ahead = run(policy, True, specs, num_blocks, {})
    assert ahead == sync


def test_lookahead_decodes_feed_the_pending_token_and_restore_the_request():
    kv = BlockManager(64, 4, 0.0)
    sched = make_scheduler(SchedulerConfig(policy="sarathi", chunk_size=16, max_num_seqs=4, max_model_len=96), kv)
    r = Request("a", [5, 6, 7], SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True), 0.0, (EOS,))
    sched.add_request(r)
    inflight = InFlightBatches(2, lookahead=True)
    first = inflight.schedule(sched, 0.0)
    inflight.add(first)
    second = inflight.schedule(sched, 0.0)  # the prompt's token is still being sampled
    assert second.num_decodes == 1 and second.seqs[0].token_ids == [PENDING_TOKEN]
    assert second.seqs[0].start_pos == 3 and second.seqs[0].do_sample
    assert r.num_computed_tokens == 0 and r.output_token_ids == [] and not sched.pinned  # restored


def test_lookahead_hides_a_request_whose_pending_token_is_its_last():
    kv = BlockManager(64, 4, 0.0)
    sched = make_scheduler(SchedulerConfig(policy="sarathi", chunk_size=16, max_num_seqs=4, max_model_len=96), kv)
    sched.add_request(Request("a", [5, 6, 7], SamplingParams(max_tokens=1, temperature=0.0), 0.0, (EOS,)))
    inflight = InFlightBatches(2, lookahead=True)
    inflight.add(inflight.schedule(sched, 0.0))
    assert inflight.schedule(sched, 0.0).is_empty


def test_aborts_while_two_steps_are_in_flight_leave_nothing_behind():
    specs = [(12, 20, True), (30, 25, True), (5, 30, True), (20, 10, False)]
    out = run("sarathi", True, specs, 60, {3: "r1", 9: "r2", 10: "r0"})
    assert out["r1"][1] is RequestStatus.FINISHED_ABORTED
    assert out["r3"][1] is not RequestStatus.FINISHED_ABORTED
