"""The physical virtual-KV pool: contiguous per-layer K/V tensors backed page by page.

Runner-facing it looks like ``PagedKVPool``: ``caches[layer] = (k, v)``, each
``[max_batch + 1, max_ctx, num_kv_heads, head_dim]``, with ``num_blocks`` = slots and
``block_size`` = ``max_ctx`` (the degenerate paged layout: block table = ``[slot]``).
Behind it, one address range holds every layer's K and V; a page of the accounting
(``VirtualKVManager``) is the same token range in all ``2 * num_layers`` tensors, so
mapping one page makes ``2 * num_layers`` backend mappings of ``page_bytes`` each.

Slot 0 is the *anchor*: its first page is mapped in every tensor for the pool's whole life
and no request ever gets it (the manager hands out slots ``1..max_batch``). Each tensor's
base address is then always backed: Triton's launcher checks every pointer argument with
``cuPointerGetAttribute``, which rejects an unmapped address, so without the anchor a
kernel launch (or a CUDA-graph capture at start-up, before any request exists) fails
whenever slot 0 happens to be unmapped. Padding rows of a batch read and write nothing.

Each iteration the runner calls ``begin_step(batch)`` (apply the manager's plan: unmap
reclaimed tails once the last iteration's kernels are done, map what this batch touches,
and keep the pages mapped *ahead* for later), ``end_step()`` (record an event after the
kernels) and ``after_enqueue()`` (map the pages ahead on the engine thread while the device
computes; ``CacheConfig.kv_map_thread`` hands them to a dedicated thread instead).
"""
from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from podserve.config import CacheConfig
from podserve.core.kv.virtual import MemoryPlan, VirtualKVManager
from podserve.memory.paged_pool import num_kv_units
from podserve.model.config import LlamaConfig

CPU_DEFAULT_PAGE_BYTES = 64 << 10  # small pages on CPU: commit granularity is 4 KiB anyway


def _memory_backend(device: torch.device):
    if device.type == "cpu":
        from podserve.memory.vmm_cpu import CpuVirtualMemory

        return CpuVirtualMemory
    if device.type == "cuda":
        from podserve.memory.vmm_cuda import CudaVirtualMemory

        return CudaVirtualMemory
    raise ValueError(f"--kv virtual supports cpu and cuda devices, not {device}; use --kv paged")


def page_geometry(model: LlamaConfig, dtype: torch.dtype, granularity: int, page_size: int | None, default_page: int) -> tuple[int, int]:
    """(tokens_per_page, page_bytes) for one layer's K (or V).

    A page must be a whole number of tokens and a whole number of allocation granules,
    so its size is a multiple of ``lcm(granularity, bytes_per_token)``.
    """
    bytes_per_token = model.num_key_value_heads * model.head_dim * torch.tensor([], dtype=dtype).element_size()
    unit = math.lcm(granularity, bytes_per_token)
    if page_size is None:
        page_bytes = unit * max(1, default_page // unit)
    else:
        if page_size <= 0 or page_size % unit:
            raise ValueError(
                f"--kv-page-size {page_size} is invalid: a page must be a multiple of {unit} bytes "
                f"(the granularity {granularity} and one token's K of {bytes_per_token} bytes)"
            )
        page_bytes = page_size
    return page_bytes // bytes_per_token, page_bytes


class VirtualKVPool:
    """Virtual KV tensors for every layer and the mapping work that backs them."""

    def __init__(self, memory, model: LlamaConfig, dtype: torch.dtype, max_batch: int, max_ctx: int, tokens_per_page: int, page_bytes: int, num_pages: int, background: bool,
                 map_thread: bool = False):
        self.memory = memory
        self.num_layers = model.num_hidden_layers
        self.tokens_per_page = tokens_per_page
        self.page_bytes = page_bytes
        self.num_pages = num_pages
        self.pages_per_slot = max_ctx // tokens_per_page
        self.max_batch = max_batch
        self.num_blocks = max_batch + 1  # slots: the anchor, then one per request
        self.block_size = max_ctx  # tokens per slot
        self.slot_bytes = self.pages_per_slot * page_bytes  # per-slot stride: whole pages
        self.tensor_bytes = self.num_blocks * self.slot_bytes
        shape = (self.num_blocks, max_ctx, model.num_key_value_heads, model.head_dim)
        self.caches: list[tuple[torch.Tensor, torch.Tensor]] = [
            (memory.tensor((2 * l) * self.tensor_bytes, shape, dtype), memory.tensor((2 * l + 1) * self.tensor_bytes, shape, dtype))
            for l in range(self.num_layers)
        ]
        self._mapped = [0] * self.num_blocks  # pages the backend has mapped per slot
        self._manager: VirtualKVManager | None = None
        self._background = background
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-map") if background and map_thread else None
        self._pending: Future | None = None
        self._deferred: dict[int, int] | None = None  # ahead pages for ``after_enqueue`` (no thread)
        self._event = None  # CUDA event after the last iteration's kernels
        self.stats = {"sync_map_s": 0.0, "sync_unmap_s": 0.0, "background_map_s": 0.0, "wait_s": 0.0, "pages_mapped": 0, "pages_unmapped": 0}
        self._resize(0, 1)  # the anchor page (outside the page budget, never unmapped)
        self.stats["pages_mapped"] = 0

    @property
    def background(self) -> bool:
        return self._background

    @classmethod
    def create(cls, model: LlamaConfig, cache: CacheConfig, dtype: torch.dtype, device: torch.device, max_batch: int, max_model_len: int,
               reserve_bytes: int | None = None) -> "VirtualKVPool":
        """Reserve ``2 * layers * max_batch * max_model_len`` tokens of address space and
        size the physical page budget from ``cache`` like the paged pool does."""
        backend = _memory_backend(device)
        gran = backend.granularity(device)
        default_page = CPU_DEFAULT_PAGE_BYTES if device.type == "cpu" else gran
        tokens_per_page, page_bytes = page_geometry(model, dtype, gran, cache.page_size, default_page)
        pages_per_slot = -(-max_model_len // tokens_per_page)
        max_ctx = pages_per_slot * tokens_per_page
        per_page_all_layers = 2 * model.num_hidden_layers * page_bytes
        num_pages = num_kv_units(cache, device, per_page_all_layers, "one page across all layers", reserve_bytes)
        if cache.num_blocks is None:
            num_pages -= 1  # a budget in bytes pays for the anchor page too; an explicit page count is for requests
        if num_pages < 1:
            raise ValueError(f"the KV memory budget holds no page besides the anchor ({per_page_all_layers} bytes per page across "
                             "all layers); raise --kv-cache-memory / --gpu-memory-utilization or use --kv paged")
        size = 2 * model.num_hidden_layers * (max_batch + 1) * pages_per_slot * page_bytes  # + the anchor slot
        try:
            memory = backend(size, page_bytes, (num_pages + 1) * 2 * model.num_hidden_layers, device)
        except MemoryError as e:
            raise ValueError(
                f"--kv virtual reserves address space for {max_batch} slots x {max_ctx} tokens x {model.num_hidden_layers} layers "
                f"({size / 2**30:.1f} GiB) and that failed ({e}); lower --max-model-len or --max-num-seqs, or use --kv paged"
            ) from None
        return cls(memory, model, dtype, max_batch, max_ctx, tokens_per_page, page_bytes, num_pages, cache.kv_background_map,
                   cache.kv_map_thread)

    # --- wiring --------------------------------------------------------------------------
    def make_manager(self, watermark: float, lookahead_tokens: int) -> VirtualKVManager:
        """The accounting that matches this pool's geometry, bound so ``begin_step`` reads its plan."""
        self._manager = VirtualKVManager(self.max_batch, self.block_size, self.tokens_per_page, self.num_pages, watermark, lookahead_tokens,
                                         first_slot=1)
        return self._manager

    def mapped_pages(self, slot: int) -> int:
        """Pages the backend has mapped in ``slot`` (waits for background mapping)."""
        self._join()
        return self._mapped[slot]

    # --- per iteration -------------------------------------------------------------------
    def begin_step(self, batch=None) -> None:
        """Apply the bound manager's plan before this iteration's kernels run. Given the
        ``batch``, only the pages its sequences touch now are mapped before it runs; the rest
        of a growth (a prompt's later chunks: KV is reserved for the whole prompt on
        admission) joins the pages mapped ahead (by ``after_enqueue``, or on the mapping
        thread)."""
        if self._manager is None:
            return
        plan = self._manager.take_plan()
        if batch is not None and plan.required:
            self._defer_unneeded(plan, batch)
        self.apply(plan)

    def _defer_unneeded(self, plan: MemoryPlan, batch) -> None:
        self._join()  # the mapping thread may still be raising ``_mapped``: read it settled
        need: dict[int, int] = {}
        tpp = self.tokens_per_page
        for s in batch.seqs:
            if s.block_table:
                slot = s.block_table[0]
                need[slot] = max(need.get(slot, 0), -(-(s.start_pos + len(s.token_ids)) // tpp))
        for slot, target in plan.required.items():
            now = max(self._mapped[slot], need.get(slot, 0))
            if target > now:  # a growth beyond what this batch reads or writes: map it ahead
                plan.required[slot] = now
                plan.ahead[slot] = max(plan.ahead.get(slot, target), target)

    def end_step(self) -> None:
        """Mark the point after which the pages this iteration read may be unmapped."""
        if self.memory.device.type == "cuda":
            self._event = torch.cuda.Event()
            self._event.record()

    def apply(self, plan: MemoryPlan) -> None:
        """Unmap shrunk slots (after the last kernels), map grown ones, then map ahead."""
        self._join()
        t0 = time.perf_counter()
        shrink = {s: n for s, n in plan.required.items() if n < self._mapped[s]}
        if shrink:
            if self._event is not None:
                self._event.synchronize()  # no kernel may still read a page we take away
            for slot, n in shrink.items():
                self._resize(slot, n)
        t1 = time.perf_counter()
        for slot, n in plan.required.items():
            if n > self._mapped[slot]:
                self._resize(slot, n)
        t2 = time.perf_counter()
        self.stats["sync_unmap_s"] += t1 - t0
        self.stats["sync_map_s"] += t2 - t1
        ahead = {s: n for s, n in plan.ahead.items() if n != self._mapped[s]}
        if not ahead:
            return
        if not self._background:
            self._map_ahead(ahead, "sync_map_s")
        elif self._worker is None:
            self._deferred = ahead  # mapped by ``after_enqueue`` while the device computes
        else:
            self._pending = self._worker.submit(self._map_ahead, ahead, "background_map_s")

    def after_enqueue(self) -> None:
        """The step's kernels are enqueued: map the pages planned ahead now, on this thread,
        while the device computes (they are needed by a later step, not this one)."""
        deferred, self._deferred = self._deferred, None
        if deferred:
            self._map_ahead(deferred, "background_map_s")

    def close(self) -> None:
        """Stop the mapping thread and release the memory (tensors must no longer be used)."""
        self._join()
        if self._worker is not None:
            self._worker.shutdown()
        self.caches = []
        self.memory.close()

    def __del__(self):
        # Physical pages come from the driver, not torch's allocator: without this, an engine
        # dropped without close() would hold its GPU memory until the process exits.
        try:
            self.close()
        except Exception:
            pass

    # --- internals -----------------------------------------------------------------------
    def _map_ahead(self, targets: dict[int, int], stat: str) -> None:
        t0 = time.perf_counter()
        for slot, n in targets.items():
            self._resize(slot, n)
        self.stats[stat] += time.perf_counter() - t0

    def _join(self) -> None:
        if self._deferred:  # a step that never reached ``after_enqueue`` (it failed): map them now
            self.after_enqueue()
        if self._pending is not None:
            t0 = time.perf_counter()
            pending, self._pending = self._pending, None
            pending.result()  # re-raises a mapping failure here, on the engine's thread
            self.stats["wait_s"] += time.perf_counter() - t0

    def _resize(self, slot: int, pages: int) -> None:
        """Map or unmap the tail of ``slot`` so that exactly ``pages`` pages are mapped,
        in every layer's K and V."""
        have = self._mapped[slot]
        if pages == have:
            return
        first, count = min(have, pages), abs(pages - have)
        op = self.memory.map if pages > have else self.memory.unmap
        for t in range(2 * self.num_layers):
            op(t * self.tensor_bytes + slot * self.slot_bytes + first * self.page_bytes, count)
        self._mapped[slot] = pages
        self.stats["pages_mapped" if pages > have else "pages_unmapped"] += count
