"""Feature vectors of each operator family, vectorised over numpy arrays.

Every predictor is a non-negative linear combination of these features (plus an
intercept), so it extrapolates like the roofline beyond the profiled grid.
"""
from __future__ import annotations

import numpy as np

from podserve.sim.roofline import decode_attention_bytes, linear_bytes, linear_flops, prefill_attention_quantities


def linear_features(n, in_f, out_f, dtype_bytes: int, peak_flops: float, peak_bw: float) -> np.ndarray:
    """[FLOPs, weight bytes, activation bytes, roofline time] of ``[n, in] @ [in, out]``.

    The roofline term ``max(FLOPs / peak, bytes / bandwidth)`` (peaks measured from the
    profile itself) carries the memory-bound -> compute-bound bend of a GEMM.
    """
    n, in_f, out_f = (np.asarray(x, dtype=float) for x in (n, in_f, out_f))
    flops = linear_flops(n, in_f, out_f)
    w, a = linear_bytes(n, in_f, out_f, dtype_bytes)
    w = np.broadcast_to(w, flops.shape)
    roof = np.maximum(flops / peak_flops, (w + a) / peak_bw)
    return np.stack([flops, w, a, roof], axis=-1)


def elementwise_features(n) -> np.ndarray:
    """[tokens]: norms, RoPE, activation and adds move a fixed number of bytes per token."""
    return np.asarray(n, dtype=float)[..., None]


def prefill_features(q_len, kv_len, num_heads, num_kv_heads, head_dim, dtype_bytes) -> np.ndarray:
    """[causal FLOPs, dense FLOPs, bytes, query tokens] of one prefill chunk (one layer)."""
    q_len, kv_len = np.asarray(q_len, dtype=float), np.asarray(kv_len, dtype=float)
    causal, dense, nbytes = prefill_attention_quantities(q_len, kv_len, num_heads, num_kv_heads, head_dim, dtype_bytes)
    return np.stack([causal, dense, nbytes, q_len], axis=-1)


def decode_features(batch_size, sum_kv, max_kv, num_kv_heads, head_dim, dtype_bytes) -> np.ndarray:
    """[sequences, KV bytes read, padded KV bytes (batch x longest)] of a decode batch (one layer).

    Kernels that gather a padded ``[batch, max_kv]`` tensor (the torch reference) pay the
    padded term; paged/flash-decoding kernels pay the exact one. The fit picks the mix.
    """
    b, s, m = (np.asarray(x, dtype=float) for x in (batch_size, sum_kv, max_kv))
    exact = decode_attention_bytes(s, num_kv_heads, head_dim, dtype_bytes)
    padded = decode_attention_bytes(b * m, num_kv_heads, head_dim, dtype_bytes)
    return np.stack([b, exact, padded], axis=-1)


def overhead_features(num_seqs, num_tokens, num_prefills) -> np.ndarray:
    """[sequences, tokens, prefill chunks] of an iteration: what the CPU-side work scales with."""
    return np.stack([np.asarray(x, dtype=float) for x in (num_seqs, num_tokens, num_prefills)], axis=-1)


def collective_features(size_bytes) -> np.ndarray:
    """[bytes]: latency + size / bandwidth (the alpha-beta model)."""
    return np.asarray(size_bytes, dtype=float)[..., None]


# --- shape coordinates of the correction (their logs are what it interpolates over) ------
def linear_shape(n, in_f, out_f) -> np.ndarray:
    return np.stack(np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (n, in_f, out_f))), axis=-1)


def prefill_shape(q_len, kv_len) -> np.ndarray:
    return np.stack([np.asarray(q_len, dtype=float), np.asarray(kv_len, dtype=float)], axis=-1)


def decode_shape(batch_size, sum_kv) -> np.ndarray:
    """[sequences, mean context]."""
    b = np.asarray(batch_size, dtype=float)
    return np.stack([b, np.asarray(sum_kv, dtype=float) / np.maximum(b, 1.0)], axis=-1)
