"""Attention backends: they translate batch metadata into kernel calls."""
from __future__ import annotations

from podserve.attention.base import AttentionBackend, AttentionMetadata


def make_backend(name: str) -> AttentionBackend:
    """Backend by name: torch (reference), triton (serial kernels), pod (fused kernel)."""
    if name == "torch":
        from podserve.attention.torch_ref import TorchAttentionBackend

        return TorchAttentionBackend()
    raise ValueError(f"unknown attention backend {name!r}; available: torch")


__all__ = ["AttentionBackend", "AttentionMetadata", "make_backend"]
