"""Residual add and RMSNorm in one kernel, optionally summing several ranks' partial outputs first.

A Llama layer adds each sublayer's output to the residual stream and normalises the result
for the next sublayer. In torch that is an add and an RMSNorm (two launches, the residual
read twice). On tensor-parallel ranks the sublayer's output is a partial sum that must be
all-reduced first; ``add_rms_norm`` takes every rank's partial (``parts``: this rank's
buffer and its peers', read over NVLink through symmetric memory) and does the reduction,
the residual add and the norm in one pass, so a TP layer's reductions cost one kernel each
instead of an all-reduce, an add and a norm (``podserve/distributed/allreduce.py``).

Rounding follows the unfused path exactly (``add_rms_norm_ref``): the parts are summed in
float32 in list order and rounded once to the activation dtype (what an all-reduce returns),
the residual add is rounded once more (``residual + x`` in the activation dtype), and the
norm rounds as ``kernels/elementwise.rms_norm`` does. Every rank passes its parts in rank
order, so every rank gets bit-identical results.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from podserve.kernels.elementwise import rms_norm_ref

MAX_PARTS = 8
"""Most partial outputs one call sums (a tensor-parallel group of up to 8 ranks)."""


@triton.jit
def _add_rms_norm_kernel(p0, p1, p2, p3, p4, p5, p6, p7,  # parts [n, hidden], contiguous rows
                         res_ptr, w_ptr, out_ptr, stride_res, stride_out, hidden, eps,
                         NUM_PARTS: tl.constexpr, NORM: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    offs = row * hidden + cols
    # Every load is issued before any is consumed: the peers' rows travel over NVLink together.
    acc = tl.load(p0 + offs, mask=mask, other=0.0).to(tl.float32)
    if NUM_PARTS > 1:
        acc += tl.load(p1 + offs, mask=mask, other=0.0).to(tl.float32)
    if NUM_PARTS > 2:
        acc += tl.load(p2 + offs, mask=mask, other=0.0).to(tl.float32)
    if NUM_PARTS > 3:
        acc += tl.load(p3 + offs, mask=mask, other=0.0).to(tl.float32)
    if NUM_PARTS > 4:
        acc += tl.load(p4 + offs, mask=mask, other=0.0).to(tl.float32)
    if NUM_PARTS > 5:
        acc += tl.load(p5 + offs, mask=mask, other=0.0).to(tl.float32)
    if NUM_PARTS > 6:
        acc += tl.load(p6 + offs, mask=mask, other=0.0).to(tl.float32)
    if NUM_PARTS > 7:
        acc += tl.load(p7 + offs, mask=mask, other=0.0).to(tl.float32)
    dtype = res_ptr.dtype.element_ty
    res = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
    x = (acc.to(dtype).to(tl.float32) + res).to(dtype)
    tl.store(res_ptr + row * stride_res + cols, x, mask=mask)
    if NORM:
        x32 = x.to(tl.float32)
        var = tl.sum(x32 * x32, axis=0) / hidden
        y = (x32 * tl.rsqrt(var + eps)).to(dtype)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0)
        tl.store(out_ptr + row * stride_out + cols, (w.to(tl.float32) * y.to(tl.float32)).to(dtype), mask=mask)


def add_rms_norm(parts: list[torch.Tensor],  # each [num_tokens, hidden], contiguous
                 residual: torch.Tensor,  # [num_tokens, hidden], rows contiguous; updated in place
                 weight: torch.Tensor | None,  # [hidden], or None: the add only
                 eps: float = 1e-6) -> torch.Tensor:  # [num_tokens, hidden]
    """``residual += sum(parts)`` in place; returns ``weight * rms_norm(residual)`` (a new
    tensor), or ``residual`` itself when ``weight`` is None."""
    if not 1 <= len(parts) <= MAX_PARTS:
        raise ValueError(f"add_rms_norm sums 1 to {MAX_PARTS} parts, got {len(parts)}")
    if residual.dim() != 2 or residual.stride(1) != 1:
        raise ValueError(f"add_rms_norm needs residual [tokens, hidden] with contiguous rows, got "
                         f"{tuple(residual.shape)} strides {residual.stride()}")
    n, hidden = residual.shape
    for p in parts:
        if p.shape != residual.shape or p.dtype != residual.dtype or not p.is_contiguous():
            raise ValueError(f"add_rms_norm parts must be contiguous {tuple(residual.shape)} {residual.dtype}, "
                             f"got {tuple(p.shape)} {p.dtype} contiguous={p.is_contiguous()}")
    if weight is not None and weight.shape != (hidden,):
        raise ValueError(f"add_rms_norm weight must be [{hidden}], got {tuple(weight.shape)}")
    out = torch.empty_like(residual, memory_format=torch.contiguous_format) if weight is not None else residual
    if n:
        block = triton.next_power_of_2(hidden)
        ptrs = list(parts) + [parts[0]] * (MAX_PARTS - len(parts))
        _add_rms_norm_kernel[(n,)](*ptrs, residual, weight if weight is not None else residual, out,
                                   residual.stride(0), out.stride(0), hidden, eps,
                                   NUM_PARTS=len(parts), NORM=weight is not None, BLOCK=block,
                                   num_warps=min(16, max(1, block // 256)))
    return out


def add_rms_norm_ref(parts: list[torch.Tensor], residual: torch.Tensor, weight: torch.Tensor | None,
                     eps: float = 1e-6) -> torch.Tensor:
    """The unfused path: all-reduce (float32 sum, one rounding), ``residual + x``, RMSNorm."""
    total = parts[0].float()
    for p in parts[1:]:
        total = total + p.float()
    residual.copy_(residual + total.to(residual.dtype))
    return residual if weight is None else rms_norm_ref(residual, weight, eps)
