"""Attention backends: they translate batch metadata into kernel calls."""
from __future__ import annotations

from podserve.attention.base import AttentionBackend, AttentionMetadata


def make_backend(name: str) -> AttentionBackend:
    """Backend by name: torch (reference), triton (serial kernels), pod (fused kernel),
    sdpa (torch SDPA prefill on contiguous per-request K/V, for --kv virtual; Triton decode)."""
    if name == "torch":
        from podserve.attention.torch_ref import TorchAttentionBackend

        return TorchAttentionBackend()
    if name == "sdpa":
        _check_triton_runs(name)
        from podserve.attention.sdpa import SdpaAttention

        return SdpaAttention()
    if name in ("triton", "pod"):
        _check_triton_runs(name)
        if name == "triton":
            from podserve.attention.triton import TritonAttention

            return TritonAttention()
        from podserve.attention.pod import PodAttention

        return PodAttention()
    raise ValueError(f"unknown attention backend {name!r}; available: torch, triton, pod, sdpa")


def _check_triton_runs(name: str) -> None:
    """Triton kernels need CUDA, or its CPU interpreter (TRITON_INTERPRET=1, slow: tests only)."""
    import os

    import torch

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(f"--attention {name} needs a CUDA device (or TRITON_INTERPRET=1 for CPU testing); use --attention torch on CPU")


__all__ = ["AttentionBackend", "AttentionMetadata", "make_backend"]
