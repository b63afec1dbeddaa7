"""The CUDA-graph decode path, minus the capture: padded to a bucket, split plan for
max_model_len, it computes the same logits as the eager step (Triton interpreter on CPU)."""
from __future__ import annotations

import random

import torch


import pytest  # noqa: E402

pytest.importorskip("triton")

from podserve import LLM, SamplingParams  # noqa: E402
from podserve.executor.cuda_graphs import DecodeGraphs  # noqa: E402
from tests.engine.tiny_model import write_tiny_llama  # noqa: E402


@pytest.mark.parametrize("attention,kv_layout", [("triton", "paged"), ("pod", "virtual")])
def test_padded_bucket_step_equals_eager_step(tmp_path, attention, kv_layout):
    write_tiny_llama(tmp_path, seed=random.randrange(1 << 30), num_hidden_layers=1, head_dim=64,
                     num_attention_heads=4, num_key_value_heads=2, hidden_size=128)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    llm = LLM(str(tmp_path), attention=attention, device=device, dtype="float32", chunk_size=32, max_num_seqs=6,
              kv_layout=kv_layout, enforce_eager=True)
    runner = llm.engine.runner
    graphs = DecodeGraphs(runner, [1, 2, 4, 8])  # never captured: staging and padding only
    checked = []
    real = runner.submit

    def submit(batch):
        if batch.num_prefills == 0 and graphs.can_run(batch):
            eager = runner._forward_logits(runner.inputs.prepare(batch, runner.kv_pool.block_size))
            inputs, bucket = graphs.stage(batch)
            assert bucket >= batch.num_seqs and inputs.meta.num_decodes == bucket
            padded = runner._forward_logits(inputs, all_rows=True)[: batch.num_seqs]
            torch.testing.assert_close(padded, eager, rtol=1e-4, atol=1e-4)
            checked.append(bucket)
        return real(batch)

    runner.submit = submit
    rng = random.Random(0)
    prompts = [[rng.randrange(2, 258) for _ in range(n)] for n in (3, 40, 9, 70, 1)]
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (2, 9, 4, 7, 3)]
    llm.generate(prompts, params, use_tqdm=False)
    assert checked and max(checked) > min(checked)  # several buckets, real padding
