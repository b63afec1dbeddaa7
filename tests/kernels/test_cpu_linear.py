"""Packed CPU linear layers (kernels/cpu_linear.py) against F.linear, and the model swap."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from podserve.kernels import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="this torch build has no oneDNN packed linear")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [0, 1, 7, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_f_linear(dtype, rows, bias):
    gen = torch.Generator().manual_seed(torch.seed())  # fresh inputs every run
    in_f, out_f = 96, 200  # not multiples of the library's blocks
    w = torch.randn(out_f, in_f, generator=gen).to(dtype)
    b = torch.randn(out_f, generator=gen).to(dtype) if bias else None
    x = torch.randn(rows, in_f, generator=gen).to(dtype)
    out = cpu_linear.linear(x, cpu_linear.pack(w), b)
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert out.dtype == dtype and out.shape == (rows, out_f)
    # float32: accumulation order only; bf16: both round the float32 sum to bf16.
    if rows:
        tol = 1e-4 * in_f ** 0.5 if dtype == torch.float32 else 1e-2 * ref.abs().max().item()
        assert (out.double() - ref).abs().max().item() <= tol


def test_packed_linear_takes_strided_and_batched_inputs():
    layer = nn.Linear(64, 48)
    packed = cpu_linear.PackedLinear(layer)
    wide = torch.randn(5, 100)
    x = wide[:, 10:74]  # a non-contiguous view, as after a split
    torch.testing.assert_close(packed(x), layer(x), atol=1e-5, rtol=1e-5)
    x3 = torch.randn(2, 3, 64)
    torch.testing.assert_close(packed(x3), layer(x3), atol=1e-5, rtol=1e-5)
    assert (packed.in_features, packed.out_features) == (64, 48) and packed.bias is not None


def test_pack_linears_swaps_every_linear_and_keeps_a_tied_embedding():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 32)
            self.block = nn.Sequential(nn.Linear(32, 64), nn.SiLU(), nn.Linear(64, 32, bias=False))
            self.head = nn.Linear(32, 50, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids):
            return self.head(self.block(self.embed(ids)))

    model = Tiny()
    ids = torch.randint(0, 50, (9,))
    with torch.no_grad():
        ref = model(ids)
        embed_before = model.embed.weight.clone()
        assert cpu_linear.pack_linears(model) == 3
        assert not any(type(m) is nn.Linear for m in model.modules())
        torch.testing.assert_close(model(ids), ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(model.embed.weight, embed_before)  # the embedding still looks up plain rows


def test_disabled_packs_nothing(monkeypatch):
    monkeypatch.setattr(cpu_linear, "ENABLED", False)
    model = nn.Sequential(nn.Linear(8, 8))
    assert not cpu_linear.available() and cpu_linear.pack_linears(model) == 0
    assert type(model[0]) is nn.Linear


def test_row_buckets_bound_the_shapes_and_the_padding():
    buckets = {cpu_linear.row_bucket(n) for n in range(1, 2049)}
    assert len(buckets) <= 48  # oneDNN compiles a kernel per shape: a bounded set of them
    for n in range(1, 2049):
        b = cpu_linear.row_bucket(n)
        assert n <= b <= max(2 * n, n + 63) and cpu_linear.row_bucket(b) == b
    assert [cpu_linear.row_bucket(n) for n in (1, 3, 16, 17, 256, 257)] == [1, 4, 16, 32, 256, 320]
