"""The torch attention backend (the CPU engine's path) against the float64 reference,
on fresh random hybrid batches in the paged and the contiguous (virtual) layouts."""
from __future__ import annotations

import random

import pytest
import torch

from podserve.attention.base import AttentionMetadata
from podserve.attention.torch_ref import TorchAttentionBackend
from podserve.kernels.reference import attention_ref, write_kv_ref
from tests.kernels.attn_batch import make_batch


def _meta(b) -> AttentionMetadata:
    return AttentionMetadata(
        num_decodes=b.num_decodes,
        num_prefills=len(b.query_lens) - b.num_decodes,
        num_prefill_tokens=sum(b.query_lens[b.num_decodes:]),
        cu_seqlens_q=b.cu_seqlens_q, seq_lens=b.seq_lens, block_tables=b.block_tables,
        slot_mapping=b.slot_mapping, query_lens_cpu=list(b.query_lens),
        seq_lens_cpu=list(b.seq_lens_list), max_query_len=max(b.query_lens),
        max_seq_len=max(b.seq_lens_list),
    )


@pytest.mark.parametrize("block_size", [16, 5, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_backend_matches_reference(block_size, dtype):
    rng = random.Random()
    decode_lens = [rng.randint(1, 90) for _ in range(rng.randint(1, 9))]
    chunks = [(rng.randint(0, 40), rng.randint(1, 30)) for _ in range(rng.randint(0, 3))]
    heads, kv_heads = rng.choice([(4, 4), (6, 2), (9, 3)])
    b = make_batch(decode_lens, chunks, heads, kv_heads, 64, block_size, dtype=dtype)
    check_backend(TorchAttentionBackend(), b, tol=1e-4 if dtype == torch.float32 else 3e-2)


def check_backend(backend, b, tol: float) -> None:
    """Run ``backend`` on batch ``b`` (head dim 64): it must write the new K/V exactly where
    the reference does and attend within ``tol`` of the float64 reference."""
    meta = _meta(b)
    backend.prepare(meta)
    k_cache, v_cache = b.k_cache.clone(), b.v_cache.clone()
    out = backend.forward(b.q, b.k, b.v, k_cache, v_cache, meta, 64 ** -0.5)
    write_kv_ref(b.k, b.v, b.k_cache, b.v_cache, b.slot_mapping)
    assert torch.equal(k_cache, b.k_cache) and torch.equal(v_cache, b.v_cache)
    ref = attention_ref(b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q)
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
