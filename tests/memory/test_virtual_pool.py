"""VirtualKVPool on CPU: geometry, plans applied (in the foreground and in the background),
resident memory tracking live tokens, clear start-up errors."""
from __future__ import annotations

import pytest
import torch

from podserve.config import CacheConfig
from podserve.memory.virtual_pool import VirtualKVPool
from podserve.model.presets import preset_config
from podserve.request import Request, SamplingParams
from tests.memory.test_vmm_cpu import resident_bytes

MODEL = preset_config("tiny-llama")  # 2 layers, 2 KV heads of 16: 128 bytes per token and layer K


def make_pool(background: bool, num_pages: int = 16, max_batch: int = 3, max_model_len: int = 100,
              map_thread: bool = True) -> VirtualKVPool:
    cache = CacheConfig(kv_layout="virtual", page_size=4096, num_blocks=num_pages, kv_background_map=background,
                        kv_map_thread=map_thread)
    return VirtualKVPool.create(MODEL, cache, torch.float32, torch.device("cpu"), max_batch, max_model_len)


def req(rid: str) -> Request:
    return Request(rid, [1], SamplingParams(), 0.0)


def write_tokens(pool: VirtualKVPool, slot: int, num_tokens: int) -> None:
    for k, v in pool.caches:  # [max_batch, max_ctx, kv_heads, head_dim]
        k[slot, :num_tokens] = torch.randn(num_tokens, *k.shape[2:])
        v[slot, :num_tokens] = torch.randn(num_tokens, *v.shape[2:])


def test_geometry_keeps_slots_page_aligned():
    pool = make_pool(background=False)
    try:
        assert pool.tokens_per_page == 32 and pool.page_bytes == 4096
        assert pool.block_size == 128 and pool.num_blocks == 4  # max_ctx rounded up to pages; anchor + 3 slots
        k, v = pool.caches[0]
        assert k.shape == (4, 128, 2, 16) and k.is_contiguous()
        assert (k.stride(0) * 4) % pool.page_bytes == 0  # per-slot stride: whole pages
        assert v.data_ptr() - k.data_ptr() == pool.tensor_bytes
    finally:
        pool.close()


@pytest.mark.parametrize("background", [False, True])
def test_resident_memory_grows_and_shrinks_with_live_tokens(background):
    pool = make_pool(background)
    kv = pool.make_manager(watermark=0.0, lookahead_tokens=32 if background else 0)
    mem = pool.memory
    page_all_layers = 2 * MODEL.num_hidden_layers * pool.page_bytes
    anchor = 0  # slot 0's first page: mapped for the pool's life, but never written, so not resident
    try:
        assert mem.num_mapped == 2 * MODEL.num_hidden_layers and resident_bytes(mem.base, mem.size) == 0
        kv.allocate(req("a"), 70)  # 3 pages
        kv.allocate(req("b"), 20)  # 1 page
        pool.begin_step()
        write_tokens(pool, kv.slot_of(req("a")), 70)
        write_tokens(pool, kv.slot_of(req("b")), 20)
        pool.end_step()
        assert resident_bytes(mem.base, mem.size) == anchor + 4 * page_all_layers
        expected = [kv.mapped_pages(s) for s in range(1, 4)]
        assert [pool.mapped_pages(s) for s in range(1, 4)] == expected  # joins the mapping thread
        assert 0 not in (kv.slot_of(req("a")), kv.slot_of(req("b")))
        if background:
            assert expected[kv.slot_of(req("b")) - 1] == 2 and pool.stats["background_map_s"] > 0  # 20 + 32 ahead
        kv.free(req("a"))
        pool.begin_step()
        assert resident_bytes(mem.base, mem.size) == anchor + 4 * page_all_layers  # deferred reclamation
        kv.reclaim_idle()
        pool.begin_step()
        assert resident_bytes(mem.base, mem.size) == anchor + 1 * page_all_layers  # b's live page only
        kv.free(req("b"))
        kv.reclaim_idle()
        pool.begin_step()
        assert resident_bytes(mem.base, mem.size) == anchor and mem.num_mapped == 2 * MODEL.num_hidden_layers
    finally:
        pool.close()


def test_reserved_range_is_far_larger_than_memory_used():
    pool = make_pool(background=False, max_batch=64, max_model_len=4096)
    try:
        assert pool.memory.size == 2 * 2 * 65 * 4096 * 128  # 2 layers x K,V x (anchor + slots) x tokens x bytes
        assert resident_bytes(pool.memory.base, pool.memory.size) == 0  # the anchor pages are committed, never touched
    finally:
        pool.close()


def test_bad_page_size_names_the_flag():
    cache = CacheConfig(kv_layout="virtual", page_size=4096 + 128)
    with pytest.raises(ValueError, match="--kv-page-size"):
        VirtualKVPool.create(MODEL, cache, torch.float32, torch.device("cpu"), 2, 64)


def test_reservation_beyond_the_address_space_names_the_flags():
    cache = CacheConfig(kv_layout="virtual", page_size=4096, num_blocks=4)
    with pytest.raises(ValueError, match="--max-model-len or --max-num-seqs, or use --kv paged"):
        VirtualKVPool.create(MODEL, cache, torch.float32, torch.device("cpu"), 1 << 20, 1 << 30)


def test_unknown_layout_is_rejected():
    with pytest.raises(ValueError, match="--kv"):
        CacheConfig(kv_layout="blocks")


def test_only_the_pages_a_batch_touches_are_mapped_before_it_runs():
    # A 100-token prompt is admitted (KV reserved for all of it: 4 pages of 32 tokens) but
    # its first chunk covers 32 tokens: page 0 is mapped on the engine's thread before the
    # step, pages 1-3 on the mapping thread while the step computes.
    import threading

    pool = make_pool(background=True)
    kv = pool.make_manager(watermark=0.0, lookahead_tokens=0)
    calls = []
    real_map = pool.memory.map

    def recording_map(offset, num_pages=1):
        calls.append((threading.current_thread().name, offset, num_pages))
        return real_map(offset, num_pages)

    pool.memory.map = recording_map
    try:
        slot, batch = _first_chunk_of_a_long_prompt(kv)
        pool.begin_step(batch)
        pool.after_enqueue()  # (no-op with a mapping thread)
        main_pages = sum(n for name, _, n in calls if not name.startswith("kv-map"))
        assert main_pages == 2 * MODEL.num_hidden_layers * 1  # page 0 of every layer's K and V
        assert pool.mapped_pages(slot) == 4  # joins the mapping thread: the rest arrived meanwhile
        assert sum(n for name, _, n in calls if name.startswith("kv-map")) == 2 * MODEL.num_hidden_layers * 3
    finally:
        pool.close()


def _first_chunk_of_a_long_prompt(kv):
    """Admit a 100-token prompt (4 pages of 32 tokens reserved); (its slot, a batch holding
    its first 32-token chunk)."""
    from podserve.core.batch import ScheduledBatch, ScheduledSeq

    r = req("long")
    kv.allocate(r, 100)
    slot = kv.slot_of(r)
    batch = ScheduledBatch(iteration=0)
    batch.seqs.append(ScheduledSeq("long", list(range(32)), 0, True, False, [slot], SamplingParams(), 0))
    return slot, batch


def test_without_a_thread_pages_ahead_are_mapped_after_the_kernels_are_enqueued():
    pool = make_pool(background=True, map_thread=False)
    kv = pool.make_manager(watermark=0.0, lookahead_tokens=0)
    try:
        slot, batch = _first_chunk_of_a_long_prompt(kv)
        pool.begin_step(batch)
        assert pool._mapped[slot] == 1  # what the batch touches, before its kernels
        pool.after_enqueue()
        assert pool._mapped[slot] == 4 and pool.stats["background_map_s"] > 0
    finally:
        pool.close()
