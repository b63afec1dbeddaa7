"""Building blocks of a Llama-family decoder: RMSNorm, rotary embedding, SwiGLU."""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

FUSED_CUDA_OPS = os.environ.get("PODSERVE_FUSED_OPS", "1") != "0"
"""On CUDA, RMSNorm, RoPE and SiLU-and-mul run as one Triton kernel each
(``podserve/kernels/elementwise.py``, same rounding as the torch code here); set
``PODSERVE_FUSED_OPS=0`` to run the torch ops instead (e.g. to measure the difference)."""

FUSED_ADD_NORM = os.environ.get("PODSERVE_FUSED_ADD_NORM", "1") != "0"
"""On CUDA (with ``FUSED_CUDA_OPS``), each residual add runs inside the RMSNorm after it
(``kernels/add_norm.py``); ``PODSERVE_FUSED_ADD_NORM=0`` runs a torch add, then the RMSNorm
kernel (to measure the difference)."""


def _fused(x: torch.Tensor) -> bool:
    return FUSED_CUDA_OPS and x.is_cuda


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, as the reference implementation does."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))  # default dtype and device
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """``norm(x)``; or, given the residual stream, ``residual += x`` in place and
        ``(norm(residual), residual)`` -- one fused kernel on CUDA (the residual add of the
        sublayer before this norm)."""
        if residual is not None:
            return add_rms_norm(x, residual, self.weight, self.eps), residual
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:  # [num_tokens, hidden]
    """``weight * (x * rsqrt(mean(x^2) + eps))``, statistics in float32: the Triton kernel on
    CUDA (``kernels/elementwise.py``), torch ops elsewhere, rounding alike."""
    if _fused(x) and x.dim() == 2 and x.dtype == weight.dtype:
        from podserve.kernels.elementwise import rms_norm as fused

        return fused(x, weight, eps)
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def add_rms_norm(x: torch.Tensor,  # [num_tokens, hidden]: a sublayer's output
                 residual: torch.Tensor,  # [num_tokens, hidden]: the residual stream, updated in place
                 weight: torch.Tensor | None,  # [hidden], or None: the add only
                 eps: float) -> torch.Tensor:
    """``residual += x``, then ``weight * rms_norm(residual)`` (or ``residual`` without a
    weight): one Triton kernel on CUDA (``kernels/add_norm.py``), the same rounding in torch."""
    if FUSED_ADD_NORM and _fused(x) and x.dim() == 2 and x.dtype == residual.dtype and residual.stride(1) == 1 \
            and (weight is None or weight.dtype == x.dtype):
        from podserve.kernels.add_norm import add_rms_norm as fused

        return fused([x.contiguous()], residual, weight, eps)
    residual.add_(x)
    return residual if weight is None else rms_norm(residual, weight, eps)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2], with Llama-3 ("llama3") scaling if asked."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    if kind in (None, "default"):
        return inv_freq.float()
    if kind != "llama3":
        raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: llama3)")
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, smoothed, scaled).float()


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE with a cos/sin table precomputed up to ``max_positions``."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict | None):
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, theta, scaling)
        # Tables stay float32 whatever the weights' dtype: bf16 angles lose precision fast.
        # The ambient default device (the runner builds under ``with torch.device(...)``):
        # inv_freq is computed on the CPU in float64, the tables must live with the model.
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq.float().to(t.device))  # [max_positions, head_dim // 2]
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        # positions [num_tokens]; q [num_tokens, num_heads, head_dim]; k [num_tokens, num_kv_heads, head_dim]
        if _fused(q):
            from podserve.kernels.elementwise import rotary_embedding

            return rotary_embedding(positions, q, k, self.cos, self.sin)  # in place on the qkv output
        cos = self.cos[positions].unsqueeze(1)  # [num_tokens, 1, head_dim // 2]
        sin = self.sin[positions].unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


class SwiGLU(nn.Module):
    """gate_up projection fused into one matmul, then silu(gate) * up, then down."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [num_tokens, hidden]
        if _fused(x):
            from podserve.kernels.elementwise import silu_and_mul

            return self.down_proj(silu_and_mul(self.gate_up_proj(x)))
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
