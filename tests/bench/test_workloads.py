"""Workload generation: distributions, clipping, arrivals, traces and seeding."""
from __future__ import annotations

import numpy as np
import pytest

from podserve.bench.workloads import TRACE_DIR, WorkloadConfig, generate, prompt_token_ids, resolve_trace


@pytest.fixture
def small_trace(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n10.0,100,5\n10.5,2000,50\n12.0,30,500\n")
    return str(path)


def _gaps(workload):
    return np.diff([r.arrival_time for r in workload])


def test_same_seed_same_workload_other_seed_differs():
    cfg = WorkloadConfig(num_requests=50, lengths="uniform", max_prompt_tokens=900, seed=3)
    assert generate(cfg) == generate(cfg)
    assert generate(cfg) != generate(WorkloadConfig(num_requests=50, lengths="uniform", max_prompt_tokens=900, seed=4))


def test_poisson_rate_and_cv():
    w = generate(WorkloadConfig(num_requests=20_000, lengths="fixed", qps=4.0, seed=1))
    g = _gaps(w)
    assert w[0].arrival_time == 0.0
    assert np.mean(g) == pytest.approx(0.25, rel=0.03)
    assert np.std(g) / np.mean(g) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("cv", [0.5, 3.0])
def test_gamma_cv(cv):
    g = _gaps(generate(WorkloadConfig(num_requests=20_000, lengths="fixed", arrival="gamma", qps=2.0, cv=cv, seed=2)))
    assert np.mean(g) == pytest.approx(0.5, rel=0.05)
    assert np.std(g) / np.mean(g) == pytest.approx(cv, rel=0.1)


def test_static_arrivals():
    assert all(r.arrival_time == 0.0 for r in generate(WorkloadConfig(num_requests=7, lengths="fixed", arrival="static")))


def test_trace_lengths_and_timestamps(small_trace):
    w = generate(WorkloadConfig(num_requests=3, trace=small_trace, arrival="trace"))
    assert [r.arrival_time for r in w] == [0.0, 0.5, 2.0]
    assert [(r.num_prompt_tokens, r.num_output_tokens) for r in w] == [(100, 5), (2000, 50), (30, 500)]
    with pytest.raises(ValueError, match="fewer than num_requests"):
        generate(WorkloadConfig(num_requests=4, trace=small_trace, arrival="trace"))


def test_scale_and_clip(small_trace):
    cfg = WorkloadConfig(num_requests=30, trace=small_trace, length_scale=0.5,
                         min_prompt_tokens=64, max_prompt_tokens=512, max_output_tokens=100, arrival="static")
    pairs = {(r.num_prompt_tokens, r.num_output_tokens) for r in generate(cfg)}
    assert pairs == {(64, 2), (512, 25), (64, 100)}  # 50->64, 1000->512, 15->64; 250->100


def test_zipf_favours_short_lengths():
    w = generate(WorkloadConfig(num_requests=5000, lengths="zipf", min_prompt_tokens=10, max_prompt_tokens=1000,
                                zipf_theta=1.2, arrival="static"))
    p = np.array([r.num_prompt_tokens for r in w])
    assert p.min() >= 10 and p.max() <= 1000
    assert np.median(p) < 100 < p.max()  # heavy head, long tail


def test_uniform_range():
    w = generate(WorkloadConfig(num_requests=2000, lengths="uniform", min_prompt_tokens=5, max_prompt_tokens=9,
                                min_output_tokens=2, max_output_tokens=3, arrival="static"))
    assert {r.num_prompt_tokens for r in w} == {5, 6, 7, 8, 9} and {r.num_output_tokens for r in w} == {2, 3}


def test_bad_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="lengths"):
        WorkloadConfig(lengths="normal")
    with pytest.raises(ValueError, match="qps"):
        WorkloadConfig(qps=0)
    no_ts = tmp_path / "n.csv"
    no_ts.write_text("num_prefill_tokens,num_decode_tokens\n5,5\n")
    with pytest.raises(ValueError, match="arrived_at"):
        generate(WorkloadConfig(num_requests=1, trace=str(no_ts), arrival="trace"))
    with pytest.raises(FileNotFoundError, match="neither a file"):
        resolve_trace("no-such-trace")


def test_prompt_token_ids_are_seeded_and_in_vocab():
    w = generate(WorkloadConfig(num_requests=5, lengths="uniform", max_prompt_tokens=50, arrival="static"))
    ids = prompt_token_ids(w, vocab_size=100, seed=7)
    assert [len(x) for x in ids] == [r.num_prompt_tokens for r in w]
    assert all(0 <= t < 100 for x in ids for t in x)
    assert ids == prompt_token_ids(w, vocab_size=100, seed=7) != prompt_token_ids(w, vocab_size=100, seed=8)


@pytest.mark.skipif(not TRACE_DIR.is_dir(), reason="shared traces not present")
def test_shared_traces_resolve_by_prefix():
    assert resolve_trace("arxiv").name.startswith("arxiv_summarization")
    w = generate(WorkloadConfig(num_requests=20, trace="splitwise", arrival="trace"))
    assert w[0].arrival_time == 0.0 and all(b.arrival_time >= a.arrival_time for a, b in zip(w, w[1:]))
