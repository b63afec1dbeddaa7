"""Triton attention kernels as plain functions over tensors (no engine imports).

``prefill_attention`` (varlen causal chunked prefill), ``decode_attention``
(flash-decoding), ``pod_attention`` (both in one launch, POD-Attention) and
``write_kv`` (new K/V into the cache); torch references in ``reference``. The layer's
fused elementwise kernels (``rms_norm``, ``rotary_embedding``, ``silu_and_mul``) are in
``elementwise`` with their references beside them. ``cpu_decode`` is the compiled CPU
decode attention (C++, built on first use) that the torch backend uses on CPUs.
"""
import importlib

_EXPORTS = {"decode_attention": "decode", "rms_norm": "elementwise", "rotary_embedding": "elementwise",
            "silu_and_mul": "elementwise", "write_kv": "kv_write", "pod_attention": "pod",
            "prefill_attention": "prefill"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy: the Triton kernels import triton, which a CPU-only install may lack, while
    # ``cpu_decode`` (the compiled CPU decode attention) needs only torch.
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
