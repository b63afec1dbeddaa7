"""The Triton and POD kernels run unchanged on virtual KV (contiguous slots, one-column block
table) and give the torch backend's greedy tokens; on CPU through Triton's interpreter, where
a read of an unmapped page would kill the process."""
from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("triton")

from podserve import LLM, SamplingParams  # noqa: E402
from tests.engine.tiny_model import write_tiny_llama  # noqa: E402


@pytest.mark.parametrize("backend", ["triton", "pod"])
def test_kernel_backends_on_virtual_kv_match_paged_torch(tmp_path, backend):
    write_tiny_llama(tmp_path, seed=5, num_hidden_layers=1, head_dim=64, num_attention_heads=4,
                     num_key_value_heads=2, hidden_size=128)
    rng = random.Random(1)
    prompts = [[rng.randrange(2, 258) for _ in range(n)] for n in (5, 23, 40)]
    p = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs = dict(chunk_size=16, device=device, dtype="float32", max_model_len=256, max_num_seqs=4)
    ref = LLM(str(tmp_path), attention="torch", block_size=16, **kwargs).generate(prompts, p, use_tqdm=False)
    virt = LLM(str(tmp_path), attention=backend, kv_layout="virtual", **kwargs)
    got = virt.generate(prompts, p, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in ref]
    assert virt.engine.runner.kv_pool.block_size >= 256  # really the contiguous layout
