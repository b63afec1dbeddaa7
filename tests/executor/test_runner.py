"""ModelRunner's step: one host read per step, CUDA graphs only where they can run."""
from __future__ import annotations

import random

import pytest
import torch

from podserve import LLM, SamplingParams
from podserve.executor.cuda_graphs import graph_buckets
from tests.engine.tiny_model import write_tiny_llama

CUDA = torch.cuda.is_available()
READS = ("tolist", "item", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__")


def test_graph_buckets():
    assert graph_buckets(1) == [1]
    assert graph_buckets(20) == [1, 2, 4, 8, 16, 20]
    assert graph_buckets(128) == [1, 2, 4, 8, 16, 32, 48, 64, 80, 96, 112, 128]


def test_step_reads_the_device_once_and_only_for_sampled_tokens(tmp_path, monkeypatch):
    write_tiny_llama(tmp_path, seed=5)
    llm = LLM(str(tmp_path), chunk_size=16, max_num_seqs=4)
    engine = llm.engine
    rng = random.Random(0)
    for n in (40, 3, 9):
        engine.add_request([rng.randrange(2, 258) for _ in range(n)],
                           SamplingParams(max_tokens=5, temperature=0.8, top_k=20, seed=n, ignore_eos=True))
    calls = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *a, **k):
            calls.append(name)
            return original(self, *a, **k)
        return wrapper

    runner = engine.runner
    real_submit, real_collect = runner.submit, runner.collect
    per_step = []

    def counted(fn, *args):
        with monkeypatch.context() as m:
            for name in READS:
                m.setattr(torch.Tensor, name, counting(name))
            return fn(*args)

    def submit(batch):  # a step is one submit, then its collect (one step in flight on CPU)
        calls.clear()
        return counted(real_submit, batch)

    def collect(handle):
        out = counted(real_collect, handle)
        per_step.append((sum(t is not None for t in out.sampled_token_ids), list(calls)))
        return out

    monkeypatch.setattr(runner, "submit", submit)
    monkeypatch.setattr(runner, "collect", collect)
    while engine.has_unfinished_requests():
        engine.step()
    assert per_step and any(n == 0 for n, _ in per_step)  # chunked prefills that sample nothing
    for num_sampled, reads in per_step:
        assert reads == (["tolist"] if num_sampled else []), reads
    out = engine.last_output
    assert out.timing.cpu_s is not None and out.timing.cpu_s >= 0 and out.timing.gpu_s is None


def test_no_cuda_graphs_on_cpu(tmp_path):
    write_tiny_llama(tmp_path, seed=6)
    runner = LLM(str(tmp_path)).engine.runner
    assert runner.graphs is None and not runner.use_cuda_graphs


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("attention", ["triton", "pod"])
def test_cuda_graph_decodes_match_eager(tmp_path, attention):
    write_tiny_llama(tmp_path, seed=7, num_hidden_layers=2, head_dim=64, num_attention_heads=4,
                     num_key_value_heads=2, hidden_size=128)
    rng = random.Random(1)
    prompts = [[rng.randrange(2, 258) for _ in range(n)] for n in (3, 17, 64, 150, 5, 300, 40)]
    p = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    # two engines at once: a fixed KV budget each, not 90% of the GPU each
    kw = dict(device="cuda", dtype="float32", attention=attention, chunk_size=64, max_num_seqs=8,
              kv_cache_memory=256 << 20)
    eager = LLM(str(tmp_path), enforce_eager=True, **kw)
    graphed = LLM(str(tmp_path), **kw)
    assert eager.engine.runner.graphs is None and graphed.engine.runner.graphs is not None
    replays = []
    graphs = graphed.engine.runner.graphs
    real = graphs.replay
    graphs.replay = lambda b, n: replays.append(b) or real(b, n)
    a = [o.outputs[0].token_ids for o in eager.generate(prompts, p, use_tqdm=False)]
    b = [o.outputs[0].token_ids for o in graphed.generate(prompts, p, use_tqdm=False)]
    assert replays, "no decode step went through a CUDA graph"
    assert a == b


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_decode_step_syncs_once(tmp_path):
    import warnings

    write_tiny_llama(tmp_path, seed=8, num_hidden_layers=2, head_dim=64, num_attention_heads=4,
                     num_key_value_heads=2, hidden_size=128)
    llm = LLM(str(tmp_path), device="cuda", attention="triton", max_num_seqs=8)
    engine = llm.engine
    for n in (5, 9, 30):
        engine.add_request(list(range(2, 2 + n)), SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    for _ in range(4):  # prefills done, decodes under way
        engine.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(5):
                engine.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 5, [str(w.message) for w in syncs]


def test_failed_startup_optimisation_warns_and_falls_back(tmp_path):
    write_tiny_llama(tmp_path, seed=9)
    runner = LLM(str(tmp_path)).engine.runner
    assert runner.startup_errors == []
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        assert runner._try(lambda: 1 / 0, "CUDA graph capture", failed=False) is False
    assert "ZeroDivisionError" in runner.startup_errors[0]
