"""Fused (all-reduce +) residual add + RMSNorm against the unfused torch path, on fresh
random inputs (Triton's interpreter on CPU; float32 and float16, which it handles exactly)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from podserve.kernels.add_norm import MAX_PARTS, add_rms_norm, add_rms_norm_ref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_parts", [1, 2, 3, 8])
@pytest.mark.parametrize("n,hidden", [(1, 576), (5, 4096), (3, 100)])
def test_sum_add_and_norm_match_the_unfused_path(dtype, num_parts, n, hidden):
    parts = [torch.randn(n, hidden, dtype=dtype, device=DEVICE) for _ in range(num_parts)]
    residual = torch.randn(n, hidden, dtype=dtype, device=DEVICE) * 2
    w = torch.rand(hidden, dtype=dtype, device=DEVICE) + 0.5
    ref_res = residual.clone()
    expected = add_rms_norm_ref(parts, ref_res, w, 1e-5)
    got = add_rms_norm(parts, residual, w, 1e-5)
    torch.testing.assert_close(residual, ref_res, **_tol(dtype))  # the residual stream, in place
    torch.testing.assert_close(got, expected, **_tol(dtype))
    assert got.data_ptr() != residual.data_ptr()


@pytest.mark.parametrize("num_parts", [1, 2])
def test_add_only_returns_the_updated_residual(num_parts):
    parts = [torch.randn(4, 64, device=DEVICE) for _ in range(num_parts)]
    residual = torch.randn(4, 64, device=DEVICE)
    expected = residual + sum(parts)
    got = add_rms_norm(parts, residual, None)
    assert got is residual
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_strided_residual_rows():
    base = torch.randn(6, 128, device=DEVICE)
    residual = base[:, :64]  # rows 128 apart, as a slice of a wider static buffer would be
    parts = [torch.randn(6, 64, device=DEVICE)]
    w = torch.rand(64, device=DEVICE)
    ref = residual.clone()
    expected = add_rms_norm_ref(parts, ref, w)
    got = add_rms_norm(parts, residual, w)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(base[:, :64], ref, rtol=1e-6, atol=1e-6)


def test_no_tokens_is_a_no_op():
    residual = torch.empty(0, 64, device=DEVICE)
    assert add_rms_norm([torch.empty(0, 64, device=DEVICE)], residual, torch.ones(64, device=DEVICE)).shape == (0, 64)


def test_bad_inputs_are_rejected():
    r = torch.randn(4, 64, device=DEVICE)
    with pytest.raises(ValueError, match="parts"):
        add_rms_norm([], r, None)
    with pytest.raises(ValueError, match="parts"):
        add_rms_norm([r] * (MAX_PARTS + 1), r.clone(), None)
    with pytest.raises(ValueError, match="parts must be"):
        add_rms_norm([torch.randn(4, 32, device=DEVICE)], r, None)
    with pytest.raises(ValueError, match="weight"):
        add_rms_norm([r.clone()], r, torch.ones(32, device=DEVICE))
