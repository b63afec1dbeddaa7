"""The compiled CPU decode attention against its torch reference, on fresh random inputs:
ragged lengths, block boundaries, scrambled block tables, GQA ratios, both cache dtypes."""
from __future__ import annotations

import random

import pytest
import torch

from podserve.kernels import cpu_decode

pytestmark = pytest.mark.skipif(not cpu_decode.available(),
                                reason=f"compiled CPU attention unavailable: {cpu_decode.unavailable_reason()}")


def _paged(lengths, num_kv_heads, head_dim, block_size, dtype, extra_blocks=3):
    """Random caches with each sequence's blocks scattered over the pool, and its block table."""
    need = [-(-n // block_size) for n in lengths]
    num_blocks = sum(need) + extra_blocks
    k = torch.randn(num_blocks, block_size, num_kv_heads, head_dim).to(dtype)
    v = torch.randn_like(k)
    order = torch.randperm(num_blocks, dtype=torch.int32)
    table = torch.full((len(lengths), max(need) + 1), -1, dtype=torch.int32)  # -1: never read
    start = 0
    for i, n in enumerate(need):
        table[i, :n] = order[start:start + n]
        start += n
    return k, v, table, torch.tensor(lengths, dtype=torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(9, 3, 64), (8, 8, 64), (8, 2, 128), (16, 2, 64), (4, 1, 128)])
@pytest.mark.parametrize("block_size", [16, 1024])
def test_matches_the_torch_reference(dtype, num_heads, num_kv_heads, head_dim, block_size):
    rng = random.Random()
    lengths = [1, block_size, block_size + 1] + [rng.randint(1, 300) for _ in range(5)]
    lengths = [min(n, 3 * block_size) for n in lengths]
    k, v, table, lens = _paged(lengths, num_kv_heads, head_dim, block_size, dtype)
    q = torch.randn(len(lengths), num_heads, head_dim).to(dtype) * 2
    scale = head_dim ** -0.5
    got = cpu_decode.decode_attention(q, k, v, table, lens, scale)
    want = cpu_decode.decode_attention_ref(q, k, v, table, lens, scale)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_sharp_softmax_and_large_scores_stay_exact():
    k, v, table, lens = _paged([200, 37], 2, 64, 16, torch.float32)
    q = torch.randn(2, 4, 64) * 40  # scores ~ +-40: the softmax is nearly one-hot
    got = cpu_decode.decode_attention(q, k, v, table, lens, 0.125)
    # A float32 score of magnitude 40 carries ~1e-5 of rounding whichever order it is summed
    # in (the kernel folds the scale into q first), and an error d in a score moves the
    # output by ~d * |v|: the tolerance says so. No overflow, no NaN, the same winner.
    torch.testing.assert_close(got, cpu_decode.decode_attention_ref(q, k, v, table, lens, 0.125), rtol=1e-4, atol=1e-4)


def test_unsupported_inputs_are_refused():
    k, v, table, lens = _paged([5], 2, 64, 16, torch.float32)
    q = torch.randn(1, 4, 64)
    assert cpu_decode.supports(q, k)
    assert not cpu_decode.supports(torch.randn(1, 4, 96), torch.randn(2, 16, 2, 96))  # head_dim 96
    assert not cpu_decode.supports(torch.randn(1, 32, 64), torch.randn(2, 16, 2, 64))  # 16 per KV head
    assert not cpu_decode.supports(q, k.half())
    with pytest.raises(ValueError, match="int32"):
        cpu_decode.decode_attention(q, k, v, table.long(), lens, 0.125)
    with pytest.raises(ValueError, match="exceeds its block table"):
        cpu_decode.decode_attention(q, k, v, table[:, :1], torch.tensor([40], dtype=torch.int32), 0.125)
    with pytest.raises(ValueError, match="empty sequence"):
        cpu_decode.decode_attention(q, k, v, table, torch.tensor([0], dtype=torch.int32), 0.125)
    with pytest.raises(ValueError, match="unsupported"):
        cpu_decode.decode_attention(torch.randn(1, 4, 96), torch.randn(2, 16, 2, 96), torch.randn(2, 16, 2, 96),
                                    table, lens, 0.1)
