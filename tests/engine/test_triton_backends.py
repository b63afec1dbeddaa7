"""The engine gives the same greedy tokens with the Triton and POD backends as with torch.

On CPU the kernels run in Triton's interpreter (slow), so the model is tiny.
"""
from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("triton")

from podserve import LLM, SamplingParams  # noqa: E402
from tests.engine.tiny_model import write_tiny_llama  # noqa: E402


@pytest.mark.parametrize("backend", ["triton", "pod"])
def test_kernel_backends_match_torch_backend(tmp_path, backend):
    write_tiny_llama(tmp_path, seed=random.randrange(1 << 30), num_hidden_layers=1, head_dim=64,
                     num_attention_heads=4, num_key_value_heads=2, hidden_size=128)
    rng = random.Random()
    prompts = [[rng.randrange(2, 258) for _ in range(n)] for n in (5, 23, 40)]
    p = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs = dict(chunk_size=16, block_size=16, device=device, dtype="float32")
    ref = LLM(str(tmp_path), attention="torch", **kwargs).generate(prompts, p, use_tqdm=False)
    got = LLM(str(tmp_path), attention=backend, **kwargs).generate(prompts, p, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in ref]


def test_kernel_backend_refused_without_cuda_or_interpreter(monkeypatch):
    from podserve.attention import make_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="attention torch"):
        make_backend("pod")
