"""Launch helpers shared by the kernel wrappers: interpreter detection, SM count, sizes."""
import functools
import math
import os

import torch
import triton

LOG2E = 1.4426950408889634
SPLITS_BLOCK = 16
"""Split partials a combine step reads at a time (a fixed tile: the split count is runtime)."""


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def num_sms(device_index: int = 0) -> int:
    """Streaming multiprocessors of the device; a small stand-in under the interpreter."""
    if interpreting() or not torch.cuda.is_available():
        return 4
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def device_sms(t: torch.Tensor) -> int:
    """SM count of the device holding ``t``."""
    return num_sms(t.device.index or 0) if t.is_cuda else num_sms(0)


def next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


CONST_PAGE = os.environ.get("PODSERVE_CONST_PAGE", "1") != "0"
"""Compile the paged block size into the attention kernels when a key tile spans several
blocks (``page_mode``); ``PODSERVE_CONST_PAGE=0`` keeps it a runtime value (the code before
2026-12-07), to measure the difference on a GPU."""


def page_mode(block_size: int, block_n: int) -> int:
    """The kernels' ``PAGE`` constexpr for key tiles of ``block_n`` over blocks of
    ``block_size`` rows: -1 if a tile sits inside one block, ``block_size`` if that is a
    power of two dividing the tile (one compiled variant per engine: its block size is
    fixed), else 0 (runtime block size)."""
    if block_size % block_n == 0:
        return -1
    if CONST_PAGE and block_n % block_size == 0 and block_size & (block_size - 1) == 0:
        return block_size
    return 0


def split_partials(rows: int, num_q_heads: int, splits: int, head_dim: int,
                   out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 buffers for split partials: outputs [rows, Hq, splits, D] and base-2
    log-sum-exps [rows, Hq, splits]; with one split the kernels write ``out`` directly
    and take ``out`` as a placeholder for both."""
    if splits <= 1:
        return out, out
    return (torch.empty(rows, num_q_heads, splits, head_dim, device=out.device, dtype=torch.float32),
            torch.empty(rows, num_q_heads, splits, device=out.device, dtype=torch.float32))


def check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """Cache tensors must be [num_blocks, block_size, num_kv_heads, head_dim] with rows packed."""
    for c in (k_cache, v_cache):
        if c.dim() != 4 or c.stride(3) != 1 or c.stride(0) != c.shape[1] * c.stride(1):
            raise ValueError("KV cache must be [num_blocks, block_size, num_kv_heads, head_dim] "
                             "with contiguous blocks and head_dim")
    if k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        # The kernels compute one address offset for a K row and its V row.
        raise ValueError("k_cache and v_cache must have the same shape and strides")


def even_splits(length: int, splits: int, block_n: int) -> tuple[int, int]:
    """(splits, split_len): ``length`` keys cut into about ``splits`` equal ranges whose
    length is a multiple of ``block_n``; rounding up may leave fewer splits than asked."""
    split_len = triton.cdiv(triton.cdiv(length, splits), block_n) * block_n
    return triton.cdiv(length, split_len), split_len


def split_plan(num_decodes: int, num_kv_heads: int, max_seq_len: int, sms: int,
               block_n: int, min_split: int = 256) -> tuple[int, int]:
    """(num_splits, split_len) for flash-decoding.

    Splits until the grid holds ~4 programs per SM (enough KV reads in flight to
    saturate HBM) but never below ``min_split`` keys a split, where the combine
    step and per-program fixed cost would start to dominate.
    """
    programs = max(1, num_decodes * num_kv_heads)
    want = max(1, triton.cdiv(4 * sms, programs))
    cap = max(1, max_seq_len // min_split)
    return even_splits(max_seq_len, max(1, min(want, cap)), block_n)


def compiled_variants() -> dict[str, int | None]:
    """Compiled variants of each kernel so far (None under the interpreter, which compiles
    nothing). A count that grows during a serving run means mid-run recompilation."""
    from . import decode, kv_write, pod, prefill

    kernels = {"decode": decode._decode_kernel, "combine": decode._combine_kernel,
               "prefill": prefill._prefill_kernel, "prefill_combine": prefill._prefill_combine_kernel,
               "pod": pod._pod_kernel,
               "write_kv": kv_write._write_kv_kernel}
    out: dict[str, int | None] = {}
    for name, fn in kernels.items():
        caches = getattr(fn, "device_caches", None)
        try:
            out[name] = None if caches is None else sum(len(v[0]) for v in caches.values())
        except (TypeError, IndexError):  # another Triton's cache layout
            out[name] = None
    return out
