"""CPU linear layers on weights pre-packed once for oneDNN (what Inductor's CPU freezing does).

``nn.Linear`` on a CPU calls the BLAS GEMM with the weight in its stored row-major layout,
and the library re-blocks it on every call. At serving shapes that costs: on this project's
2-core AVX-512 VM, one thread, SmolLM2-135M's LM head (576 -> 49,152) takes 11.6 ms for one
token and 71 ms for 64 in float32, against 8.7 and 36 ms with the weight packed once into
oneDNN's blocked layout; in bf16 the one-token head drops from 7.6 to 3.8 ms and the MLP's
576 -> 3072 from 0.15 to 0.07 ms (``benchmarks/cpu_linear.py``). The packed weight replaces
the plain one (same bytes), except a tied LM head, whose embedding keeps the plain copy.
oneDNN's compiled kernels take memory too (one per input shape, hence ``row_bucket``): the
SmolLM2 server's RSS was ~200 MB above the stock layers' in the 64-client load test
(2407 vs 2200 MiB), the tied head's float32 copy (113 MB) included.

Float32 results differ from ``F.linear`` by accumulation order only (about 1e-4 absolute at
unit-variance inputs and K = 576, like any two GEMM libraries); bf16 outputs are rounded
the same way. ``PODSERVE_CPU_PACKED_LINEAR=0`` keeps the stock layers (to measure the
difference); where torch has no oneDNN (``available()`` False) nothing changes.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

ENABLED = os.environ.get("PODSERVE_CPU_PACKED_LINEAR", "1") != "0"
"""Pack CPU linear layers at model load (module doc)."""

DTYPES = (torch.float32, torch.bfloat16)

_available: bool | None = None


def available() -> bool:
    """Whether packing is enabled and this torch build runs oneDNN's packed linear (probed once)."""
    global _available
    if not ENABLED:
        return False
    if _available is None:
        try:
            w, x = torch.randn(8, 16), torch.randn(3, 16)
            out = linear(x, pack(w), None)
            _available = bool(torch.allclose(out, F.linear(x, w), atol=1e-4))
        except (RuntimeError, AttributeError):  # no mkldnn ops in this build, or the CPU lacks them
            _available = False
    return _available


def pack(weight: torch.Tensor) -> torch.Tensor:  # [out, in] -> opaque oneDNN tensor of the same shape
    """The weight in oneDNN's blocked layout for ``linear`` (any number of input rows)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


def row_bucket(rows: int) -> int:
    """The row count a call of ``rows`` rows runs at: powers of two up to 16, multiples of
    16 up to 256, then multiples of 64 (at most 48 sizes up to 2048 rows)."""
    if rows <= 16:
        return 1 << max(rows - 1, 0).bit_length()
    step = 16 if rows <= 256 else 64
    return -(-rows // step) * step


def linear(x: torch.Tensor,  # [..., in]
           packed: torch.Tensor,  # pack(weight)
           bias: torch.Tensor | None) -> torch.Tensor:  # [..., out]
    """``F.linear(x, weight, bias)`` over a packed weight.

    oneDNN JIT-compiles and caches a kernel per input shape (about 640 KB each here, up to
    1024 of them), so serving's ever-changing token counts would grow the process by
    hundreds of MB and recompile (0.5-3 ms) whenever the cache overflows. Rows are padded
    with zeros to ``row_bucket(rows)`` instead: a bounded set of shapes for a few percent
    of padded rows."""
    lead = x.shape[:-1]
    rows = math.prod(lead)
    x2 = x.reshape(rows, x.shape[-1])
    padded = row_bucket(rows)
    if padded != rows:
        x2 = F.pad(x2, (0, 0, 0, padded - rows))
    out = torch.ops.mkldnn._linear_pointwise(x2, packed, bias, "none", [], "")
    return out[:rows].view(*lead, out.shape[-1])


class PackedLinear(nn.Module):
    """Stands in for an ``nn.Linear`` on the CPU: same call, same ``in_features`` /
    ``out_features`` / ``bias``; the weight is held only in packed form."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.packed = pack(layer.weight)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        return linear(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed"


def pack_linears(model: nn.Module) -> int:
    """Replace every CPU float32/bf16 ``nn.Linear`` under ``model`` with a ``PackedLinear``;
    returns how many were replaced (0 where ``available()`` is False)."""
    if not available():
        return 0
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is nn.Linear and child.weight.device.type == "cpu" and child.weight.dtype in DTYPES]
    with torch.no_grad():
        for parent, name, child in targets:
            setattr(parent, name, PackedLinear(child))
    return len(targets)
