"""Property tests over every scheduling policy, driven by a fake executor (no torch).

A random workload (prompt lengths, output lengths, arrival iterations, aborts) runs to
completion against a small paged KV cache; after every iteration the batch is checked
against the rules all policies share and the rule that defines each policy.
"""
from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podserve.config import SchedulerConfig
from podserve.core.batch import ExecutorOutput, ScheduledBatch
from podserve.core.kv.paged import BlockManager
from podserve.core.scheduler import SCHEDULERS, make_scheduler
from podserve.request import Request, RequestStatus, SamplingParams

# (registry name, decode_maximal): sarathi twice, as Sarathi-Serve and as the original Sarathi.
POLICIES = [(name, False) for name in SCHEDULERS] + [("sarathi", True)]
CHUNKED = {"sarathi", "simple-chunking"}  # budget = chunk_size; the others batch whole prompts under token_cap
NEVER_PREEMPT = {"orca", "fastertransformer"}
MAX_ITERATIONS = 5_000  # a run that needs more has livelocked


@dataclass
class Spec:
    arrival_iteration: int
    num_prompt_tokens: int
    max_tokens: int


@dataclass
class Trace:
    """What the harness saw while the workload ran."""

    first_scheduled: list[str] = field(default_factory=list)
    aborted: set[str] = field(default_factory=set)
    batches: list[ScheduledBatch] = field(default_factory=list)


def fake_execute(batch: ScheduledBatch, rng: random.Random) -> ExecutorOutput:
    """Sample a random non-EOS token for every sequence that reaches its last known token."""
    return ExecutorOutput([rng.randrange(2, 1000) if s.do_sample else None for s in batch.seqs])


def check_batch(policy: str, decode_maximal: bool, sched, batch: ScheduledBatch, before: dict) -> None:
    cfg = sched.config
    budget = cfg.chunk_size if policy in CHUNKED else cfg.token_cap
    assert batch.num_tokens <= budget
    assert batch.num_seqs <= cfg.max_num_seqs and sched.num_running <= cfg.max_num_seqs
    ids = [s.request_id for s in batch.seqs]
    assert len(ids) == len(set(ids)), "a request appears twice in one batch"
    decode_ids = set(ids[:batch.num_decodes])
    for seq in batch.seqs[:batch.num_decodes]:
        assert seq.num_tokens == 1 and seq.do_sample
    for seq in batch.seqs:
        request = sched.requests[seq.request_id]
        assert request.status is RequestStatus.RUNNING
        all_ids = request.prompt_token_ids + request.output_token_ids
        assert seq.token_ids == all_ids[seq.start_pos:seq.start_pos + seq.num_tokens]
        assert len(seq.block_table) * sched.kv.block_size >= seq.context_len, "KV not reserved for a scheduled token"
    # Running decodes (requests past their prefill when the iteration began).
    was_decoding = {rid for rid, (status, is_prefill) in before.items() if status is RequestStatus.RUNNING and not is_prefill}
    survivors = was_decoding - set(batch.preempted_ids)

    if policy in ("vllm", "simple-chunking"):
        assert batch.num_decodes == 0 or batch.num_prefills == 0, f"{policy} mixed prefill and decode"
    if policy in NEVER_PREEMPT:
        assert not batch.preempted_ids and sched.num_preemptions == 0
    if policy == "fastertransformer" and batch.num_prefills:
        assert not any(status is RequestStatus.RUNNING for status, _ in before.values()), "admitted while a batch decodes"
    if policy in ("fastertransformer", "orca"):
        assert decode_ids == was_decoding, f"{policy} skipped a running decode"
    if policy == "vllm" and batch.num_prefills == 0:
        assert decode_ids == survivors, "vllm decode iteration skipped a running decode"
    if policy == "sarathi":
        assert decode_ids == survivors, "sarathi skipped a running decode that had KV"
        if decode_maximal:
            assert batch.num_prefills <= 1


def run_workload(policy, decode_maximal, specs, aborts, cfg_kwargs, num_blocks, block_size, watermark, seed):
    """Run ``specs`` to completion; ``aborts`` maps iteration -> (request index, mid_batch)."""
    cfg = SchedulerConfig(policy=policy, decode_maximal=decode_maximal, **cfg_kwargs)
    sched = make_scheduler(cfg, BlockManager(num_blocks, block_size, watermark))
    rng = random.Random(seed)
    requests = [
        Request(f"r{i}", [rng.randrange(2, 1000) for _ in range(s.num_prompt_tokens)],
                SamplingParams(max_tokens=s.max_tokens, ignore_eos=True), arrival_time=float(s.arrival_iteration))
        for i, s in enumerate(specs)
    ]
    order = sorted(range(len(specs)), key=lambda i: (specs[i].arrival_iteration, i))
    trace, next_arrival, it = Trace(), 0, 0
    while next_arrival < len(order) or sched.has_unfinished():
        assert it < MAX_ITERATIONS, "livelock: requests never finish"
        while next_arrival < len(order) and specs[order[next_arrival]].arrival_iteration <= it:
            sched.add_request(requests[order[next_arrival]])
            next_arrival += 1
        abort = aborts.get(it)
        if abort is not None and not abort[1]:
            _abort(sched, requests[abort[0]], trace)
        before = {r.request_id: (r.status, r.is_prefill) for r in sched.requests.values()}
        batch = sched.schedule(now=float(it))
        check_batch(policy, decode_maximal, sched, batch, before)
        for seq in batch.seqs:
            if seq.request_id not in trace.first_scheduled:
                trace.first_scheduled.append(seq.request_id)
        trace.batches.append(batch)
        if abort is not None and abort[1]:
            _abort(sched, requests[abort[0]], trace)  # between schedule and update: the batch already ran
        sched.update(batch, fake_execute(batch, rng), now=it + 0.5)
        it += 1
    return sched, requests, trace, order


def _abort(sched, request, trace):
    if sched.abort_request(request.request_id) is not None:
        trace.aborted.add(request.request_id)


@st.composite
def scenarios(draw):
    policy, decode_maximal = draw(st.sampled_from(POLICIES))
    block_size = draw(st.sampled_from([1, 4, 16]))
    max_model_len = draw(st.integers(32, 96))
    watermark = draw(st.sampled_from([0.0, 0.05]))
    # Enough blocks for one max_model_len request above the watermark (a preempted request
    # must fit an empty cache again), plus a random surplus: small surpluses force preemption.
    base = -(-max_model_len // block_size)
    num_blocks = base + draw(st.integers(0, 3 * base))
    while num_blocks - int(watermark * num_blocks) < base:
        num_blocks += 1
    max_num_seqs = draw(st.integers(1, 8))
    cfg = dict(
        chunk_size=draw(st.integers(max(8, max_num_seqs), 64)),
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        max_num_batched_tokens=draw(st.sampled_from([None, max_model_len + 17])),
    )
    n = draw(st.integers(1, 10))
    specs = [Spec(draw(st.integers(0, 30)), draw(st.integers(1, max_model_len - 1)), draw(st.integers(1, 40)))
             for _ in range(n)]
    aborts = draw(st.dictionaries(st.integers(0, 60), st.tuples(st.integers(0, n - 1), st.booleans()), max_size=3))
    return policy, decode_maximal, specs, aborts, cfg, num_blocks, block_size, watermark, draw(st.integers(0, 2**16))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_policy_properties(scenario):
    policy, decode_maximal, specs, aborts, cfg, num_blocks, block_size, watermark, seed = scenario
    sched, requests, trace, order = run_workload(policy, decode_maximal, specs, aborts, cfg, num_blocks, block_size, watermark, seed)
    # Every request finished: aborted, or generated all it may (max_tokens or the context limit).
    for r in requests:
        if r.request_id in trace.aborted:
            assert r.status is RequestStatus.FINISHED_ABORTED
            continue
        assert r.status is RequestStatus.FINISHED_LENGTH, (r.request_id, r.status)
        assert r.num_output_tokens == min(r.sampling_params.max_tokens, cfg["max_model_len"] - r.num_prompt_tokens)
        assert len(r.times.token_times) == r.num_output_tokens and r.times.finished is not None
        assert r.times.first_scheduled is not None and r.times.first_scheduled >= r.arrival_time
    # FCFS: requests are first scheduled in arrival order (no request overtakes an earlier one).
    arrival_rank = {f"r{i}": k for k, i in enumerate(order)}
    ranks = [arrival_rank[rid] for rid in trace.first_scheduled]
    assert ranks == sorted(ranks)
    # KV returns to empty.
    assert sched.kv.num_free_blocks == sched.kv.num_blocks and sched.kv.num_requests() == 0
    assert not sched.requests and not sched.running and not sched.waiting


@pytest.mark.parametrize("policy,decode_maximal", POLICIES)
def test_tight_cache_preempts_or_waits(policy, decode_maximal):
    """A cache just big enough for one long request: recomputing policies must preempt,
    reserving ones must serialise; all finish and the cache ends empty."""
    specs = [Spec(0, 20, 40) for _ in range(6)]
    cfg = dict(chunk_size=32, max_num_seqs=6, max_model_len=64)
    sched, requests, trace, _ = run_workload(policy, decode_maximal, specs, {}, cfg, 64 // 4 + 2, 4, 0.0, 0)
    assert all(r.status is RequestStatus.FINISHED_LENGTH and r.num_output_tokens == 40 for r in requests)
    assert sched.kv.num_free_blocks == sched.kv.num_blocks
    if policy in NEVER_PREEMPT:
        assert sched.num_preemptions == 0
        assert max(b.num_seqs for b in trace.batches) == 1  # one max_model_len reservation fits at a time
    else:
        assert sched.num_preemptions > 0 and any(r.num_preemptions for r in requests)


def test_policies_differ_on_the_same_workload():
    """The defining batch shapes: vllm stalls decodes for a new prompt, sarathi and orca
    piggyback it, fastertransformer waits for the batch to drain."""
    specs = [Spec(0, 10, 8), Spec(3, 10, 8)]
    cfg = dict(chunk_size=64, max_num_seqs=4, max_model_len=64)
    shapes = {}
    for policy in ("vllm", "sarathi", "orca", "fastertransformer", "simple-chunking"):
        _, _, trace, _ = run_workload(policy, False, specs, {}, cfg, 64, 4, 0.0, 0)
        shapes[policy] = [(b.num_decodes, b.num_prefills) for b in trace.batches[:5]]
    assert shapes["vllm"][3] == (0, 1)           # r1 arrives: prefill-only, r0 stalls
    assert shapes["sarathi"][3] == (1, 1)        # r1 piggybacks on r0's decode
    assert shapes["orca"][3] == (1, 1)
    assert shapes["fastertransformer"][3] == (1, 0)  # r1 waits for r0 to finish
    assert shapes["simple-chunking"][3] == (0, 1)


def test_whole_prompt_policies_reject_small_token_cap():
    for policy in ("vllm", "orca", "fastertransformer"):
        cfg = SchedulerConfig(policy=policy, max_model_len=128, max_num_batched_tokens=64)
        with pytest.raises(ValueError, match="max_num_batched_tokens"):
            make_scheduler(cfg, BlockManager(64, 4))


def test_reserving_policies_reject_cache_smaller_than_max_model_len():
    for policy in ("orca", "fastertransformer"):
        with pytest.raises(ValueError, match="reserves KV"):
            make_scheduler(SchedulerConfig(policy=policy, max_model_len=128), BlockManager(16, 4))


def test_unknown_policy_names_the_choices():
    with pytest.raises(ValueError, match="simple-chunking"):
        make_scheduler(SchedulerConfig(policy="nope"), BlockManager(16, 4))


def test_core_never_imports_torch():
    """Policy code must run where torch is absent (the simulator, CPU-only tools)."""
    code = (
        "import pkgutil, importlib, sys, podserve.core as core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'podserve.core.'): importlib.import_module(m.name)\n"
        "import podserve.metrics, podserve.bench.workloads\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
