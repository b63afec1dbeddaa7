"""``grow`` (the decode hot path) is ``can_grow`` followed by ``allocate``, in every KV manager."""
from __future__ import annotations

import random

import pytest

from podserve.core.kv.paged import BlockManager
from podserve.core.kv.virtual import VirtualKVManager
from podserve.request import Request, SamplingParams


def _req(i: int) -> Request:
    return Request(f"r{i}", [1, 2, 3], SamplingParams(), 0.0)


@pytest.mark.parametrize("make", [lambda: BlockManager(24, 4, 0.1),
                                  lambda: VirtualKVManager(max_batch=4, max_ctx=40, tokens_per_page=4, num_pages=24)])
def test_grow_equals_can_grow_then_allocate(make):
    rng = random.Random(0)
    a, b = make(), make()
    requests = [_req(i) for i in range(6)]
    tokens = {r.request_id: 0 for r in requests}
    for _ in range(2000):
        r = rng.choice(requests)
        if rng.random() < 0.1:
            a.free(r), b.free(r)
            tokens[r.request_id] = 0
            continue
        n = tokens[r.request_id] + rng.randint(0, 6)
        expected = b.can_grow(r, n)
        if expected:
            b.allocate(r, n)
        assert a.grow(r, n) == expected
        if expected:
            tokens[r.request_id] = max(n, tokens[r.request_id])
        assert a.num_free_blocks == b.num_free_blocks and a.num_requests() == b.num_requests()
        assert [a.block_table(x) for x in requests] == [b.block_table(x) for x in requests]
