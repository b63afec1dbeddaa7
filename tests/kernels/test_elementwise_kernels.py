"""Fused RMSNorm, RoPE and SiLU-and-mul against their torch references, on fresh random
inputs (Triton's interpreter on CPU; float32 and float16, which it handles exactly)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from podserve.kernels.elementwise import (  # noqa: E402
    rms_norm, rms_norm_ref, rotary_embedding, rotary_embedding_ref, silu_and_mul, silu_and_mul_ref)
from podserve.model.layers import RotaryEmbedding  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,hidden", [(1, 576), (7, 4096), (3, 100)])
def test_rms_norm_matches_reference(dtype, n, hidden):
    x = torch.randn(n, hidden, dtype=dtype, device=DEVICE) * 3
    w = torch.rand(hidden, dtype=dtype, device=DEVICE) + 0.5
    torch.testing.assert_close(rms_norm(x, w, 1e-5), rms_norm_ref(x, w, 1e-5), **_tol(dtype))


def test_rms_norm_reads_a_strided_row_view():
    x = torch.randn(5, 2 * 64, device=DEVICE)[:, :64]  # rows 128 apart
    w = torch.rand(64, device=DEVICE)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (32, 8, 128), (4, 4, 64)])
def test_rotary_embedding_in_place_on_qkv_views(dtype, heads, kv_heads, head_dim):
    n = 6
    rope = RotaryEmbedding(head_dim, 512, 10000.0, None).to(DEVICE)
    qkv = torch.randn(n, (heads + 2 * kv_heads) * head_dim, dtype=dtype, device=DEVICE)
    q, k, _ = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q, k = q.view(n, heads, head_dim), k.view(n, kv_heads, head_dim)  # strided views, as in the model
    positions = torch.randint(0, 512, (n,), device=DEVICE)
    want_q, want_k = rotary_embedding_ref(positions, q, k, rope.cos, rope.sin)
    got_q, got_k = rotary_embedding(positions, q, k, rope.cos, rope.sin)
    assert got_q.data_ptr() == q.data_ptr()  # in place
    torch.testing.assert_close(got_q, want_q, **_tol(dtype))
    torch.testing.assert_close(got_k, want_k, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,inter", [(1, 1536), (5, 100), (3, 2048)])
def test_silu_and_mul_matches_reference(dtype, n, inter):
    x = torch.randn(n, 2 * inter, dtype=dtype, device=DEVICE) * 4
    torch.testing.assert_close(silu_and_mul(x), silu_and_mul_ref(x), **_tol(dtype))


def test_bad_shapes_are_rejected():
    x = torch.randn(4, 64, device=DEVICE)
    with pytest.raises(ValueError, match="rms_norm"):
        rms_norm(x, torch.ones(32, device=DEVICE), 1e-5)
    with pytest.raises(ValueError, match="silu_and_mul"):
        silu_and_mul(torch.randn(4, 63, device=DEVICE))
    rope = RotaryEmbedding(64, 16, 10000.0, None).to(DEVICE)
    q = torch.randn(4, 2, 64, device=DEVICE)
    with pytest.raises(ValueError, match="rotary_embedding"):
        rotary_embedding(torch.zeros(3, dtype=torch.long, device=DEVICE), q, q.clone(), rope.cos, rope.sin)
    with pytest.raises(ValueError, match="head_dim"):
        rotary_embedding(torch.zeros(4, dtype=torch.long, device=DEVICE), q[..., :48], q[..., :48], rope.cos, rope.sin)


def test_benchmark_script_smoke(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, str(root / "benchmarks" / "elementwise_kernels.py"), "--smoke", "--out", str(tmp_path)],
                   check=True, env=env, capture_output=True, timeout=300)
    rows = json.loads((tmp_path / "elementwise_kernels.json").read_text())["rows"]
    assert {r["op"] for r in rows} == {"rms_norm", "rope", "silu_and_mul", "per_layer"}
