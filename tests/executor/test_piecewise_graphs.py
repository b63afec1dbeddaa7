"""The piecewise-graph path for steps with prefill tokens, minus the capture: the layers run
as pieces over the static buffers, padded to a token bucket, with attention between them,
and compute what the ordinary forward computes (CPU; the Triton backend in its interpreter)."""
from __future__ import annotations

import random

import pytest
import torch

from podserve import LLM, SamplingParams
from podserve.config import EngineConfig, ParallelConfig, SchedulerConfig
from podserve.executor.piecewise_graphs import HybridGraphs, token_buckets
from tests.engine.tiny_model import write_tiny_llama


def _prompts(seed: int):
    rng = random.Random(seed)
    lens = (3, 40, 9, 70, 1, 25)
    prompts = [[rng.randrange(2, 258) for _ in range(n)] for n in lens]
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (4, 9, 3, 7, 2, 5)]
    return prompts, params


@pytest.mark.parametrize("attention", ["torch", "triton"])
def test_piecewise_step_equals_eager_step(tmp_path, attention):
    if attention == "triton":
        pytest.importorskip("triton")
    write_tiny_llama(tmp_path, seed=random.randrange(1 << 30), num_hidden_layers=2, head_dim=64,
                     num_attention_heads=4, num_key_value_heads=2, hidden_size=256)
    # Triton kernels run in the interpreter on CPU machines, on the GPU where there is one;
    # synchronous steps there too, since the check prepares each batch's inputs itself
    # (asynchronous scheduling would leave placeholders for the tokens still in flight).
    device = "cuda" if attention == "triton" and torch.cuda.is_available() else "cpu"
    llm = LLM.from_config(EngineConfig(
        model=str(tmp_path), device=device, attention=attention, dtype="float32", enforce_eager=True,
        scheduler=SchedulerConfig(chunk_size=48, max_num_seqs=4), parallel=ParallelConfig(async_scheduling=False)))
    runner = llm.engine.runner
    pieces = HybridGraphs(runner, [16, 32, 48])  # never captured: the pieces run eagerly
    checked = []
    real = runner.submit

    def submit(batch):
        if pieces.can_run(batch):
            eager = runner._forward_logits(runner.inputs.prepare(batch, runner.kv_pool.block_size))
            inputs = runner.inputs.prepare(batch, runner.kv_pool.block_size)
            hidden = pieces.run(inputs)
            assert hidden.shape[0] == batch.num_tokens
            piecewise = runner.model.compute_logits(hidden.index_select(0, inputs.sample_idx))
            # On a GPU, Triton's float32 dot products run in TF32 and the pieces' GEMMs see
            # padded shapes (other cuBLAS kernels): agreement to TF32's precision there.
            tol = dict(rtol=1e-2, atol=2e-3) if device == "cuda" else dict(rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(piecewise, eager, **tol)
            checked.append((batch.num_decodes, pieces.bucket(batch.num_tokens) - batch.num_tokens))
        return real(batch)

    runner.submit = submit
    llm.generate(*_prompts(0), use_tqdm=False)
    assert any(nd for nd, _ in checked), "no hybrid step (decodes beside a prefill chunk) was checked"
    assert any(pad for _, pad in checked), "no step was padded up to its bucket"


def test_engine_on_piecewise_path_gives_the_eager_tokens(tmp_path):
    write_tiny_llama(tmp_path, seed=random.randrange(1 << 30), num_hidden_layers=2)
    prompts, params = _prompts(1)
    eager = LLM(str(tmp_path), chunk_size=32, max_num_seqs=4, enforce_eager=True)
    expected = [o.outputs[0].token_ids for o in eager.generate(prompts, params, use_tqdm=False)]
    llm = LLM(str(tmp_path), chunk_size=32, max_num_seqs=4, enforce_eager=True)
    runner = llm.engine.runner
    runner.hybrid_graphs = HybridGraphs(runner, token_buckets(32))
    used = []
    run = runner.hybrid_graphs.run
    runner.hybrid_graphs.run = lambda inputs: used.append(inputs.num_tokens) or run(inputs)
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert used, "the runner never took the piecewise path"
    assert got == expected


def test_token_buckets_cover_every_count_up_to_the_budget():
    buckets = token_buckets(512)
    assert buckets[0] == 16 and buckets[-1] == 512 and buckets == sorted(set(buckets))
    assert all(b - a <= 64 for a, b in zip(buckets, buckets[1:]))
    assert token_buckets(40) == [16, 32, 40]
    assert token_buckets(600)[-2:] == [576, 600]


def test_negative_graph_token_cap_is_rejected():
    from podserve.config import EngineConfig

    with pytest.raises(ValueError, match="cuda_graph_max_tokens"):
        EngineConfig(cuda_graph_max_tokens=-1)
