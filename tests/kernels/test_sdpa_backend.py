"""The sdpa backend (vAttention's unchanged kernels: SDPA prefill on contiguous K/V, Triton
decode) against the float64 reference on fresh random hybrid batches, contiguous and paged."""
from __future__ import annotations

import random

import pytest
import torch

from podserve.attention import make_backend
from tests.kernels.attn_batch import make_batch
from tests.kernels.test_torch_backend import check_backend


# bf16 on CUDA only: Triton's CPU interpreter mishandles bfloat16 (numpy has none).
HALF = [torch.float16] + ([torch.bfloat16] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("block_size", [None, 16])
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_sdpa_backend_matches_reference(block_size, dtype):
    rng = random.Random()
    decode_lens = [rng.randint(1, 70) for _ in range(rng.randint(0, 5))]
    # Chunks with and without a cached prefix (lower-right causal), at least one.
    chunks = [(0, rng.randint(1, 30))] + [(rng.randint(1, 40), rng.randint(1, 30)) for _ in range(rng.randint(1, 2))]
    heads, kv_heads = rng.choice([(4, 4), (8, 2), (6, 3)])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    b = make_batch(decode_lens, chunks, heads, kv_heads, 64, block_size, dtype=dtype, device=device)
    # float32 on CUDA: SDPA's kernels and the Triton dots use TF32 (10-bit mantissa).
    tol = (5e-3 if b.q.is_cuda else 1e-4) if dtype == torch.float32 else 3e-2
    check_backend(make_backend("sdpa"), b, tol)


def test_sdpa_needs_triton_for_its_decodes(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--attention sdpa needs a CUDA device"):
        make_backend("sdpa")
