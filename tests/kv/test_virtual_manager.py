"""VirtualKVManager: accounting equal to BlockManager's, slot reuse, reclamation, plans."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podserve.core.kv.paged import BlockManager
from podserve.core.kv.virtual import MemoryPlan, VirtualKVManager
from podserve.request import Request, SamplingParams


def req(rid: str, n: int = 1) -> Request:
    return Request(rid, list(range(1, n + 1)), SamplingParams(max_tokens=4), 0.0)


class FakeBackend:
    """Applies plans the way VirtualKVPool does, checking the physical budget at every op."""

    def __init__(self, max_batch: int, num_pages: int):
        self.mapped = [0] * max_batch
        self.num_pages = num_pages
        self.ops = 0

    def apply(self, plan: MemoryPlan) -> None:
        for stage in (plan.required, plan.ahead):
            for slot, n in sorted(stage.items(), key=lambda kv: kv[1] - self.mapped[kv[0]]):  # shrinks first
                if n != self.mapped[slot]:
                    self.ops += 1
                self.mapped[slot] = n
                assert sum(self.mapped) <= self.num_pages, "plan exceeded the physical page budget"


def check_invariants(kv: VirtualKVManager, backend: FakeBackend | None = None) -> None:
    owned = list(kv._slots.values())
    assert len(owned) == len(set(owned)), "two requests share a slot"
    assert set(owned).isdisjoint(kv._free_slots) and len(owned) + len(kv._free_slots) == kv.max_batch
    held = sum(kv.blocks_needed(kv._tokens[s]) for s in owned)
    assert kv.num_free_blocks == kv.num_blocks - held
    assert sum(kv.mapped_pages(s) for s in range(kv.max_batch)) == kv.num_mapped_pages <= kv.num_blocks
    for s in owned:
        assert kv.mapped_pages(s) >= kv.blocks_needed(kv._tokens[s]), "live tokens on unmapped pages"
        assert kv.mapped_pages(s) <= kv.pages_per_slot
    if backend is not None:
        assert backend.mapped == [kv.mapped_pages(s) for s in range(kv.max_batch)]


ops = st.lists(st.tuples(st.sampled_from(["admit", "grow", "free"]), st.integers(0, 5), st.integers(1, 40)), max_size=80)


@settings(max_examples=150, deadline=None)
@given(ops=ops, block_size=st.sampled_from([1, 4, 16]), num_blocks=st.integers(1, 30), lookahead=st.sampled_from([0, 3, 17]))
def test_same_answers_as_block_manager(ops, block_size, num_blocks, lookahead):
    """With slots to spare, pages answer exactly like blocks: the schedulers preempt and
    admit identically whichever layout runs under them."""
    paged = BlockManager(num_blocks, block_size, watermark=0.1)
    virt = VirtualKVManager(max_batch=6, max_ctx=10_000, tokens_per_page=block_size, num_pages=num_blocks, watermark=0.1, lookahead_tokens=lookahead)
    backend = FakeBackend(6, num_blocks)
    tokens: dict[int, int] = {}
    for op, i, n in ops:
        r = req(f"r{i}")
        if op == "admit" and i not in tokens:
            assert paged.can_admit(r, n) == virt.can_admit(r, n)
            if paged.can_admit(r, n):
                paged.allocate(r, n)
                virt.allocate(r, n)
                tokens[i] = n
        elif op == "grow" and i in tokens:
            want = tokens[i] + n
            assert paged.can_grow(r, want) == virt.can_grow(r, want)
            assert paged.num_new_blocks(r, want) == virt.num_new_blocks(r, want)
            if paged.can_grow(r, want):
                paged.allocate(r, want)
                virt.allocate(r, want)
                tokens[i] = want
        elif op == "free":
            paged.free(r)
            virt.free(r)
            tokens.pop(i, None)
        assert paged.num_free_blocks == virt.num_free_blocks
        assert paged.usage == pytest.approx(virt.usage)
        backend.apply(virt.take_plan())
        check_invariants(virt, backend)
    for i in list(tokens):
        virt.free(req(f"r{i}"))
    assert virt.num_free_blocks == num_blocks and virt.num_requests() == 0


def test_finished_slot_is_reused_without_driver_calls():
    kv = VirtualKVManager(max_batch=2, max_ctx=1024, tokens_per_page=16, num_pages=32)
    a, b = req("a"), req("b")
    kv.allocate(a, 160)  # 10 pages
    assert kv.take_plan().required == {0: 10}
    kv.free(a)
    assert kv.take_plan().is_empty, "freeing must not unmap (deferred reclamation)"
    assert kv.mapped_pages(0) == 10 and kv.num_free_blocks == 32
    kv.allocate(b, 120)  # 8 pages: fits in a's mapped slot
    assert kv.block_table(b) == [0]
    assert kv.take_plan().is_empty and kv.num_slot_reuses == 1
    kv.allocate(b, 200)  # grows past the reused pages: 3 more
    assert kv.take_plan().required == {0: 13}


def test_best_fit_picks_the_smallest_covering_slot():
    kv = VirtualKVManager(max_batch=3, max_ctx=1024, tokens_per_page=16, num_pages=40)
    for rid, n in (("a", 16 * 10), ("b", 16 * 3), ("c", 16 * 6)):
        kv.allocate(req(rid), n)
    for rid in "abc":
        kv.free(req(rid))
    kv.take_plan()
    kv.allocate(req("d"), 16 * 2)
    assert kv.block_table(req("d")) == [1]  # 3 pages: the tightest that covers 2
    kv.allocate(req("e"), 16 * 12)
    assert kv.block_table(req("e")) == [0]  # none covers 12: the one with most pages (10)


def test_idle_pages_reclaimed_only_under_pressure():
    kv = VirtualKVManager(max_batch=3, max_ctx=1024, tokens_per_page=16, num_pages=10, watermark=0.0)
    kv.allocate(req("a"), 16 * 6)  # slot 0
    kv.allocate(req("b"), 16 * 4)  # slot 1: every page mapped
    kv.free(req("a"))
    kv.free(req("b"))
    kv.take_plan()
    kv.allocate(req("c"), 16 * 5)  # fits slot 0: no driver work, nothing reclaimed
    assert kv.take_plan().is_empty and kv.num_pages_unmapped_total == 0
    kv.free(req("c"))
    kv.take_plan()
    assert kv.can_admit(req("d"), 16 * 7)
    kv.allocate(req("d"), 16 * 7)  # slot 0 (6 pages) + 1: the only page left is slot 1's idle one
    plan = kv.take_plan()
    assert plan.required == {0: 7, 1: 3}
    assert kv.num_pages_unmapped_total == 1


def test_running_tail_mapped_ahead_is_reclaimable():
    kv = VirtualKVManager(max_batch=2, max_ctx=1024, tokens_per_page=16, num_pages=6, watermark=0.0, lookahead_tokens=64)
    kv.allocate(req("a"), 16)
    plan = kv.take_plan()
    assert plan.required == {0: 1} and plan.ahead == {0: 5}  # 16 + 64 tokens ahead
    assert kv.num_free_blocks == 5  # pages mapped ahead still count as free
    kv.allocate(req("b"), 16 * 4)  # needs 4: 1 unmapped + 3 reclaimed from a's tail
    plan = kv.take_plan()
    assert plan.required == {0: 2, 1: 4}
    check_invariants(kv)


def test_slots_run_out_before_pages():
    kv = VirtualKVManager(max_batch=2, max_ctx=64, tokens_per_page=16, num_pages=100)
    kv.allocate(req("a"), 10)
    kv.allocate(req("b"), 10)
    assert not kv.can_admit(req("c"), 10)
    assert not kv.can_grow(req("a"), 65)  # beyond the slot reservation
    with pytest.raises(RuntimeError):
        kv.allocate(req("c"), 10)


def test_bad_geometry_is_rejected():
    with pytest.raises(ValueError, match="num_pages"):
        VirtualKVManager(max_batch=1, max_ctx=16, tokens_per_page=16, num_pages=0)


def test_slots_below_first_slot_are_never_given_out_nor_planned():
    # The GPU pool keeps slot 0 as its anchor: requests get slots 1..max_batch only.
    kv = VirtualKVManager(max_batch=3, max_ctx=64, tokens_per_page=16, num_pages=6, lookahead_tokens=16, first_slot=1)
    backend = FakeBackend(4, 6)
    for round_ in range(3):
        reqs = [req(f"r{round_}-{i}", 10 + 10 * i) for i in range(3)]  # 1 + 2 + 2 pages
        for r in reqs:
            assert kv.can_admit(r, r.num_tokens)
            kv.allocate(r, r.num_tokens)
        assert sorted(kv.slot_of(r) for r in reqs) == [1, 2, 3]
        plan = kv.take_plan()
        assert 0 not in plan.required and 0 not in plan.ahead
        backend.apply(plan)
        for r in reqs:
            kv.free(r)
    kv.reclaim_idle()
    assert 0 not in kv.take_plan().required and kv.num_free_blocks == kv.num_blocks
