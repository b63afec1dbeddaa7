"""Triton attention kernels as plain functions over tensors (no engine imports).

``prefill_attention`` (varlen causal chunked prefill), ``decode_attention``
(flash-decoding), ``pod_attention`` (both in one launch, POD-Attention) and
``write_kv`` (new K/V into the cache); torch references in ``reference``. The layer's
fused elementwise kernels (``rms_norm``, ``rotary_embedding``, ``silu_and_mul``) are in
``elementwise`` with their references beside them.
"""
from .decode import decode_attention
from .elementwise import rms_norm, rotary_embedding, silu_and_mul
from .kv_write import write_kv
from .pod import pod_attention
from .prefill import prefill_attention

__all__ = ["decode_attention", "pod_attention", "prefill_attention", "rms_norm", "rotary_embedding", "silu_and_mul",
           "write_kv"]
