"""KV-cache capacity of a simulated replica: the BlockManager's num_blocks, as the engine sizes it."""
from __future__ import annotations

from podserve.core.partition import Partition
from podserve.sim.roofline import weight_bytes

CPU_DEFAULT_KV_BYTES = 1 << 30
"""Mirrors podserve.memory.paged_pool.CPU_DEFAULT_KV_BYTES (not imported: that module needs torch)."""


def kv_bytes_per_token(config, dtype_bytes: int, tp: int = 1, pp: int = 1) -> int:
    """KV bytes one token occupies on one rank (its layers, its KV heads)."""
    part = Partition.of(config, tp, pp)  # the engine's workers size their pools the same way
    return 2 * part.num_layers * part.num_kv_heads * config.head_dim * dtype_bytes


def num_kv_blocks(config, meta: dict, *, tp: int = 1, pp: int = 1, block_size: int = 16,
                  kv_cache_memory: int | None = None, num_blocks: int | None = None) -> int:
    """Blocks per replica: a given count, a given per-rank budget, the engine's CPU default
    (1 GiB), or what a GPU's memory leaves after this rank's weights and activation headroom
    (the rule of podserve.memory.paged_pool). Raises ValueError when the weights don't fit."""
    if num_blocks is not None:
        return num_blocks
    db = int(meta["dtype_bytes"])
    per_block = block_size * kv_bytes_per_token(config, db, tp, pp)
    if kv_cache_memory is None:
        if meta.get("device", "cpu").startswith("cpu"):
            kv_cache_memory = CPU_DEFAULT_KV_BYTES
        else:
            total = int(meta["device_memory_bytes"])
            used = weight_bytes(config, db) // (tp * pp)
            budget = int(total * float(meta.get("gpu_memory_utilization", 0.9))) - used
            kv_cache_memory = budget - max(1 << 30, budget // 10)
    blocks = kv_cache_memory // per_block
    if blocks < 1:
        raise ValueError(f"no room for the KV cache with tp={tp} pp={pp}: the weights "
                         f"({weight_bytes(config, db) / 1e9:.0f} GB in all) leave too little device memory")
    return int(blocks)
