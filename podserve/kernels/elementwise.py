"""Fused elementwise kernels of a Llama layer: RMSNorm, rotary embedding, SiLU-and-mul.

In eager torch each of these is several kernels (RMSNorm in float32: cast, square, mean,
add, rsqrt, multiply, cast, scale; RoPE: two gathers and ~8 arithmetic ops per tensor);
a graphed decode step of an 8B model spends milliseconds launching them, and more on
tensor-parallel ranks, where the matmuls shrink but these do not. Each function here is
one launch and rounds exactly where the torch code in ``podserve/model/layers.py`` rounds
(float32 math, cast to the activation dtype, then the weight product), so the engine's
outputs do not depend on which path ran. References: ``*_ref`` below.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


# --- RMSNorm ------------------------------------------------------------------------------------
@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, stride_x, stride_out, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    var = tl.sum(x * x, axis=0) / hidden
    y = (x * tl.rsqrt(var + eps)).to(out_ptr.dtype.element_ty)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    tl.store(out_ptr + row * stride_out + cols, (w.to(tl.float32) * y.to(tl.float32)).to(out_ptr.dtype.element_ty),
             mask=mask)


def rms_norm(x: torch.Tensor,  # [num_tokens, hidden]
             weight: torch.Tensor,  # [hidden]
             eps: float) -> torch.Tensor:  # [num_tokens, hidden], x.dtype
    """``weight * (x * rsqrt(mean(x^2) + eps))`` with the statistics in float32."""
    if x.dim() != 2 or weight.shape != (x.shape[1],) or x.stride(1) != 1:
        raise ValueError(f"rms_norm needs x [tokens, hidden] with contiguous rows and weight [hidden]; "
                         f"got x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    n, hidden = x.shape
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if n:
        block = triton.next_power_of_2(hidden)
        _rms_norm_kernel[(n,)](x, weight, out, x.stride(0), out.stride(0), hidden, eps, BLOCK=block,
                               num_warps=min(16, max(1, block // 256)))
    return out


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


# --- rotary embedding ---------------------------------------------------------------------------
@triton.jit
def _rope_kernel(x_ptr, pos_ptr, cos_ptr, sin_ptr, stride_t, stride_h, num_heads, stride_cos,
                 HALF: tl.constexpr, HEADS: tl.constexpr):
    t = tl.program_id(0)
    hb = tl.program_id(1)
    pos = tl.load(pos_ptr + t)
    d = tl.arange(0, HALF)
    h = hb * HEADS + tl.arange(0, HEADS)
    cos = tl.load(cos_ptr + pos * stride_cos + d)[None, :]
    sin = tl.load(sin_ptr + pos * stride_cos + d)[None, :]
    mask = (h < num_heads)[:, None]
    base = x_ptr + t * stride_t + h[:, None] * stride_h + d[None, :]
    x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=mask, other=0.0).to(tl.float32)
    dtype = x_ptr.dtype.element_ty
    tl.store(base, (x1 * cos - x2 * sin).to(dtype), mask=mask)
    tl.store(base + HALF, (x2 * cos + x1 * sin).to(dtype), mask=mask)


def _rope_inplace(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    n, heads, head_dim = x.shape
    heads_block = min(triton.next_power_of_2(heads), 16)
    _rope_kernel[(n, triton.cdiv(heads, heads_block))](x, positions, cos, sin, x.stride(0), x.stride(1), heads,
                                                      cos.stride(0), HALF=head_dim // 2, HEADS=heads_block)


def rotary_embedding(positions: torch.Tensor,  # int64 [num_tokens]
                     q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
                     k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
                     cos: torch.Tensor,  # float32 [max_positions, head_dim // 2]
                     sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE applied **in place** to ``q`` and ``k`` (which may be strided views
    of one qkv projection, as in the model), computed in float32; returns ``(q, k)``."""
    for name, x in (("q", q), ("k", k)):
        if x.dim() != 3 or x.shape[0] != positions.shape[0] or x.stride(2) != 1:
            raise ValueError(f"rotary_embedding: {name} must be [tokens, heads, head_dim] with contiguous "
                             f"head_dim and one row per position; got {tuple(x.shape)}")
    head_dim = q.shape[2]
    if k.shape[2] != head_dim or head_dim % 2 or head_dim & (head_dim - 1):
        raise ValueError(f"rotary_embedding needs one power-of-two head_dim for q and k; got {head_dim}, {k.shape[2]}")
    if cos.shape[1] != head_dim // 2 or cos.dtype != torch.float32 or cos.stride() != sin.stride():
        raise ValueError(f"rotary_embedding needs float32 cos/sin tables [positions, {head_dim // 2}]")
    if positions.shape[0]:
        _rope_inplace(q, positions, cos, sin)
        _rope_inplace(k, positions, cos, sin)
    return q, k


def rotary_embedding_ref(positions, q, k, cos, sin):
    def rotate(x):
        c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


# --- SiLU and mul -------------------------------------------------------------------------------
@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, inter, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + t * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + t * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)  # rounded as F.silu's output is
    tl.store(out_ptr + t * stride_out + cols, (act * up).to(dtype), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:  # [num_tokens, 2 * inter] -> [num_tokens, inter]
    """``silu(gate) * up`` for ``x = [gate | up]`` (SwiGLU's fused gate_up output)."""
    if x.dim() != 2 or x.shape[1] % 2 or x.stride(1) != 1:
        raise ValueError(f"silu_and_mul needs x [tokens, 2 * intermediate] with contiguous rows; got {tuple(x.shape)}")
    n, inter = x.shape[0], x.shape[1] // 2
    out = torch.empty(n, inter, dtype=x.dtype, device=x.device)
    if n:
        block = 1024
        _silu_mul_kernel[(n, triton.cdiv(inter, block))](x, out, x.stride(0), out.stride(0), inter, BLOCK=block,
                                                          num_warps=4)
    return out


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
