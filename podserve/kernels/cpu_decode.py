"""Decode attention on the CPU, compiled: every decode of a batch in one call, K/V read in place.

The torch reference backend attends each decode on its own (``attention/torch_ref.py``): per
sequence and layer a K/V view or copy of its blocks, a float32 upcast, two small matmuls and
a softmax -- about ten operator dispatches, each costing more than its arithmetic at
SmolLM2's sizes (9 heads of 64), and copies that stream the KV through memory twice. At 64
decodes that is half of a bf16 decode step. ``decode_attention`` does the same arithmetic in
one call per layer (``csrc/cpu_decode_attention.cpp``, AVX-512): per sequence, one ordered
pass over its cached K rows (all heads, read in place from the paged cache, bf16 widened on
load), an exact softmax, one pass over its V rows -- float32 throughout, as the reference.

The source is compiled on first use with the system C++ compiler (``$CXX`` or ``c++``, ``-O3
-march=native``) into a per-user cache keyed by the source, the flags and the CPU, and loaded
with ctypes: no build step at install time, no torch headers, a second or two once per
machine. Where it cannot be built (no compiler, no AVX-512), ``available()`` is False,
``unavailable_reason()`` says why and the backend keeps its torch path.
``PODSERVE_CPU_ATTENTION_KERNEL=0`` turns it off (to measure the difference).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

ENABLED = os.environ.get("PODSERVE_CPU_ATTENTION_KERNEL", "1") != "0"
"""Use the compiled kernel for CPU decodes where it applies (module doc)."""

MAX_GROUP = 8
"""Query heads per KV head the kernel is specialised for (1..8)."""
HEAD_DIMS = (64, 128)
"""Head dims the kernel is specialised for."""
MAX_HEADS = 256

_SOURCE = Path(__file__).with_name("csrc") / "cpu_decode_attention.cpp"
_FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-std=c++17"]
_ENTRY = {torch.float32: "decode_attention_f32", torch.bfloat16: "decode_attention_bf16"}
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None


def _cpu_fingerprint() -> str:
    """What ``-march=native`` compiles for: a library built on one CPU must not load on another."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return platform.machine() + flags


def _cache_dir() -> Path:
    root = os.environ.get("PODSERVE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "podserve")
    return Path(root) / "kernels"


def _build() -> ctypes.CDLL:
    source = _SOURCE.read_bytes()
    cxx = os.environ.get("CXX", "c++")
    key = hashlib.sha256(source + " ".join([cxx] + _FLAGS).encode() + _cpu_fingerprint().encode()).hexdigest()[:16]
    target = _cache_dir() / f"cpu_decode_attention-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Built beside the target and renamed: a concurrent process never loads a half-written file.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            done = subprocess.run([cxx, *_FLAGS, "-o", tmp, str(_SOURCE)], capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"{cxx} failed: {done.stderr.strip()[-400:]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    for name in _ENTRY.values():
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        # (q, out, k, v, block_tables, table_stride, seq_lens, num_seqs, num_heads, num_kv_heads,
        #  head_dim, block_size, scratch): see the C++ source.
        fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64, ctypes.c_void_p] + [ctypes.c_int] * 5 + [ctypes.c_void_p]
    return lib


def _library() -> ctypes.CDLL | None:
    global _lib, _error
    if _lib is None and _error is None:
        with _lock:
            if _lib is None and _error is None:
                try:
                    _lib = _build()
                except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
                    _error = f"compiled CPU decode attention unavailable, using torch ({type(e).__name__}: {e})"
    return _lib


def available() -> bool:
    """Whether the compiled kernel is enabled and loads here (compiling it on the first call)."""
    return ENABLED and _library() is not None


def unavailable_reason() -> str | None:
    """Why ``available()`` is False although the kernel is enabled, else None."""
    return _error if ENABLED else None


def supports(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether ``decode_attention`` takes these shapes and dtypes (CPU; float32 or bf16
    contiguous caches; head_dim 64 or 128; 1..8 query heads per KV head)."""
    if q.dim() != 3 or k_cache.dim() != 4:
        return False
    num_heads, head_dim, num_kv_heads = q.shape[1], q.shape[2], k_cache.shape[2]
    return (q.device.type == "cpu" and k_cache.device.type == "cpu" and k_cache.dtype in _ENTRY
            and k_cache.is_contiguous() and head_dim in HEAD_DIMS and k_cache.shape[3] == head_dim
            and num_heads % num_kv_heads == 0 and num_heads // num_kv_heads <= MAX_GROUP and num_heads <= MAX_HEADS)


def decode_attention(q: torch.Tensor,  # [num_seqs, num_heads, head_dim], any float dtype
                     k_cache: torch.Tensor,  # [num_blocks, block_size, kv_heads, head_dim], float32 or bf16
                     v_cache: torch.Tensor,  # like k_cache
                     block_tables: torch.Tensor,  # int32 [>= num_seqs, max_blocks], rows contiguous
                     seq_lens: torch.Tensor,  # int32 [num_seqs]: cached tokens of each, the new one included
                     scale: float) -> torch.Tensor:  # [num_seqs, num_heads, head_dim] float32
    """``softmax(q K^T * scale) V`` for each sequence over its first ``seq_lens[i]`` cached rows."""
    if not supports(q, k_cache) or v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype \
            or not v_cache.is_contiguous():
        raise ValueError(f"decode_attention: unsupported q {tuple(q.shape)} {q.device} with cache "
                         f"{tuple(k_cache.shape)} {k_cache.dtype} (CPU, float32/bf16 contiguous caches, head_dim "
                         f"{HEAD_DIMS}, up to {MAX_GROUP} query heads per KV head)")
    num_seqs, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    if block_tables.dtype != torch.int32 or seq_lens.dtype != torch.int32 or block_tables.stride(1) != 1 \
            or seq_lens.shape != (num_seqs,) or block_tables.shape[0] < num_seqs or not seq_lens.is_contiguous():
        raise ValueError("decode_attention: block_tables and seq_lens must be int32 with one row/entry per sequence")
    lib = _library()
    if lib is None:
        raise RuntimeError(_error or "compiled CPU decode attention is unavailable")
    out = torch.empty(num_seqs, num_heads, head_dim, dtype=torch.float32)
    if num_seqs == 0:
        return out
    max_len = int(seq_lens.max())
    if max_len > block_tables.shape[1] * block_size:
        raise ValueError(f"decode_attention: a sequence of {max_len} tokens exceeds its block table "
                         f"({block_tables.shape[1]} blocks of {block_size})")
    q32 = (q.float() * scale).contiguous()  # the scale folded into q once
    scratch = torch.empty(num_heads * max_len, dtype=torch.float32)  # [heads, max_len] probabilities
    rc = getattr(lib, _ENTRY[k_cache.dtype])(
        q32.data_ptr(), out.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), block_tables.data_ptr(),
        block_tables.stride(0), seq_lens.data_ptr(), num_seqs, num_heads, num_kv_heads, head_dim, block_size,
        scratch.data_ptr())
    if rc != 0:
        raise ValueError(f"decode_attention: rejected by the kernel (rc={rc}: -1 shape, -2 empty sequence)")
    return out


def decode_attention_ref(q, k_cache, v_cache, block_tables, seq_lens, scale) -> torch.Tensor:
    """Per-sequence torch reference (float32): gather each sequence's rows, SDPA-style math."""
    num_seqs, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty(num_seqs, num_heads, head_dim, dtype=torch.float32)
    for i in range(num_seqs):
        n = int(seq_lens[i])
        pos = torch.arange(n)
        slots = block_tables[i, pos // block_size].long() * block_size + pos % block_size
        k = k_cache.view(-1, num_kv_heads, head_dim)[slots].float()  # [n, kv_heads, head_dim]
        v = v_cache.view(-1, num_kv_heads, head_dim)[slots].float()
        qg = q[i].float().view(num_kv_heads, group, head_dim)
        probs = (torch.einsum("hgd,nhd->hgn", qg, k) * scale).softmax(-1)
        out[i] = torch.einsum("hgn,nhd->hgd", probs, v).reshape(num_heads, head_dim)
    return out
