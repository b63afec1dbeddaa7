"""The physical paged KV pool: one K and one V tensor per layer, sized from a budget."""
from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from podserve.config import CacheConfig
from podserve.model.config import LlamaConfig

CPU_DEFAULT_KV_BYTES = 1 << 30  # CPU memory can't be queried reliably per process: fixed 1 GiB


@dataclass
class PagedKVPool:
    """``caches[layer] = (k, v)``, each ``[num_blocks, block_size, num_kv_heads, head_dim]``."""

    caches: list[tuple[torch.Tensor, torch.Tensor]]
    num_blocks: int
    block_size: int

    @staticmethod
    def bytes_per_block(model: LlamaConfig, block_size: int, dtype: torch.dtype) -> int:
        return block_size * model.kv_elements_per_token * torch.tensor([], dtype=dtype).element_size()

    @classmethod
    def create(cls, model: LlamaConfig, cache: CacheConfig, dtype: torch.dtype, device: torch.device,
               reserve_bytes: int | None = None) -> "PagedKVPool":
        """Size the pool from ``cache`` (see ``num_kv_units``) and allocate it zeroed."""
        per_block = cls.bytes_per_block(model, cache.block_size, dtype)
        num_blocks = num_kv_units(cache, device, per_block, f"one block of {cache.block_size} tokens", reserve_bytes)
        shape = (num_blocks, cache.block_size, model.num_key_value_heads, model.head_dim)
        caches = [
            (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(model.num_hidden_layers)
        ]
        return cls(caches, num_blocks, cache.block_size)


def num_kv_units(cache: CacheConfig, device: torch.device, unit_bytes: int, unit_name: str,
                 reserve_bytes: int | None = None) -> int:
    """How many KV units (blocks or pages) of ``unit_bytes`` the budget holds: a forced
    count, ``kv_cache_memory``, 1 GiB on CPU, or what the GPU has left under
    ``gpu_memory_utilization`` after what is allocated now and ``reserve_bytes`` (the
    profiled activation peak and friends; None = a 10% / 1 GiB margin). At least one."""
    if cache.num_blocks is not None:
        count = cache.num_blocks
    else:
        budget = cache.kv_cache_memory
        if budget is None:
            budget = CPU_DEFAULT_KV_BYTES if device.type == "cpu" else _cuda_budget(device, cache, reserve_bytes)
        count = budget // unit_bytes
    if count < 1:
        raise ValueError(f"KV cache budget too small: {unit_name} needs {unit_bytes} bytes; raise --kv-cache-memory")
    return count


def _cuda_budget(device: torch.device, cache: CacheConfig, reserve_bytes: int | None = None) -> int:
    """Free memory left under ``gpu_memory_utilization`` once the weights are loaded."""
    # Hand back what torch's caching allocator holds unused (e.g. a previous engine's pool):
    # it is free for this one, and the VMM pool allocates outside torch.
    gc.collect()  # an engine dropped inside a reference cycle still holds its pool until collected
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    used = total - free
    budget = int(total * cache.gpu_memory_utilization) - used
    if reserve_bytes is not None:  # measured: the activation peak of the largest batch, and more
        return max(0, budget - reserve_bytes)
    # Unmeasured: keep headroom for activations, 10% of what remains, at least 1 GiB.
    return max(0, budget - max(1 << 30, budget // 10))
