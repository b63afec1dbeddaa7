"""The persistent-buffer input preparation equals the list-based one it replaced."""
from __future__ import annotations

import random

import pytest
import torch

from podserve.core.batch import ScheduledBatch, ScheduledSeq
from podserve.executor.inputs import InputBuffers
from podserve.request import SamplingParams


def reference_prepare(batch: ScheduledBatch, block_size: int):
    """The ModelRunner.prepare of before: Python lists, one torch.tensor per input."""
    input_ids, positions, slots, cu = [], [], [], [0]
    query_lens, seq_lens, sample_idx, tables = [], [], [], []
    max_blocks = max((len(s.block_table) for s in batch.seqs), default=1)
    for s in batch.seqs:
        n, start = s.num_tokens, s.start_pos
        input_ids += s.token_ids
        pos = range(start, start + n)
        positions += pos
        table = s.block_table
        slots += [table[p // block_size] * block_size + p % block_size for p in pos]
        cu.append(cu[-1] + n)
        query_lens.append(n)
        seq_lens.append(start + n)
        tables.append(table + [0] * (max_blocks - len(table)))
        if s.do_sample:
            sample_idx.append(cu[-1] - 1)
    return dict(input_ids=input_ids, positions=positions, slot_mapping=slots, cu_seqlens_q=cu,
                seq_lens=seq_lens, block_tables=tables, query_lens=query_lens, sample_idx=sample_idx,
                max_blocks=max_blocks)


class Request:
    """A request's growing KV block table, as the block manager keeps it."""

    def __init__(self, rid: str, prompt: int, rng: random.Random, free: list[int], block_size: int):
        self.rid, self.prompt, self.rng, self.free, self.bs = rid, prompt, rng, free, block_size
        self.computed, self.table = 0, []

    def seq(self, chunk: int | None) -> ScheduledSeq:
        n = 1 if chunk is None else min(chunk, self.prompt - self.computed)
        while len(self.table) * self.bs < self.computed + n:
            self.table.append(self.free.pop())
        is_prefill = self.computed < self.prompt
        end = self.computed + n
        tokens = [self.rng.randrange(1000) for _ in range(n)]
        s = ScheduledSeq(self.rid, tokens, self.computed, is_prefill, end >= self.prompt,
                         list(self.table), SamplingParams(), max(0, end - self.prompt))
        self.computed = end
        return s

    def restart(self) -> None:  # preemption by recompute: blocks freed, new ones later
        self.free.extend(self.table)
        self.rng.shuffle(self.free)
        self.table, self.computed = [], 0


def check(buffers: InputBuffers, batch: ScheduledBatch, block_size: int, pad_to=None):
    got = buffers.prepare(batch, block_size, pad_to=pad_to)
    ref = reference_prepare(batch, block_size)
    n, s = len(ref["input_ids"]), batch.num_seqs
    m = got.meta
    assert got.input_ids[:n].tolist() == ref["input_ids"]
    assert got.positions[:n].tolist() == ref["positions"]
    assert m.slot_mapping[:n].tolist() == ref["slot_mapping"]
    assert m.cu_seqlens_q[: s + 1].tolist() == ref["cu_seqlens_q"]
    assert m.seq_lens[:s].tolist() == ref["seq_lens"] == m.seq_lens_cpu[:s]
    assert m.block_tables[:s, : ref["max_blocks"]].tolist() == ref["block_tables"]
    assert m.query_lens_cpu[:s] == ref["query_lens"]
    assert got.sample_idx.tolist() == ref["sample_idx"]
    assert (m.block_tables_cpu == m.block_tables.numpy()).all()
    assert m.num_decodes + m.num_prefills == (pad_to or s)
    assert got.input_ids.dtype == torch.int64 and m.slot_mapping.dtype == torch.int64
    assert m.block_tables.dtype == torch.int32 and m.seq_lens.dtype == torch.int32
    if pad_to:
        assert m.slot_mapping[n:].tolist() == [-1] * (pad_to - n)
        assert m.seq_lens[s:].tolist() == [0] * (pad_to - s)
        assert m.cu_seqlens_q.tolist() == list(range(pad_to + 1))
        assert m.block_tables[s:].abs().sum().item() == 0
    return got


@pytest.mark.parametrize("block_size", [1, 16, 4096])
def test_prepare_equals_list_based_prepare_over_a_serving_run(block_size):
    rng = random.Random()
    free = list(range(20000))
    rng.shuffle(free)
    # A small initial table width and token capacity: the buffers must grow mid-run.
    buffers = InputBuffers(torch.device("cpu"), max_tokens=8, max_seqs=2, max_blocks_per_seq=2)
    running: list[Request] = []
    for step in range(60):
        if rng.random() < 0.3 or not running:
            running.append(Request(f"r{step}", rng.randrange(1, 300), rng, free, block_size))
        if running and rng.random() < 0.1:
            rng.choice(running).restart()
        decodes = [r for r in running if r.computed >= r.prompt]
        prefills = [r for r in running if r.computed < r.prompt]
        seqs = [r.seq(None) for r in decodes] + [r.seq(rng.choice([1, 7, 64, 300])) for r in prefills]
        batch = ScheduledBatch(step, seqs, num_decodes=len(decodes))
        check(buffers, batch, block_size)
        if decodes and not prefills and rng.random() < 0.5:  # the padded (CUDA graph) layout
            for r in decodes:
                r.computed -= 1  # same step again, padded
            seqs = [r.seq(None) for r in decodes]
            check(buffers, ScheduledBatch(step, seqs, num_decodes=len(seqs)), block_size,
                  pad_to=len(seqs) + rng.randrange(0, 5))
        finished = [r for r in running if r.computed >= r.prompt + 20]
        for r in finished:  # their blocks go back to the pool
            r.restart()
        running = [r for r in running if r not in finished]


def test_padded_layout_depends_only_on_the_bucket():
    buffers = InputBuffers(torch.device("cpu"), 64, 16, 8)
    rng = random.Random(0)
    views = []
    for n in (1, 5, 8):
        reqs = [Request(f"q{i}", 3, rng, list(range(100, 0, -1)), 16) for i in range(n)]
        for r in reqs:
            r.computed = 3
        batch = ScheduledBatch(0, [r.seq(None) for r in reqs], num_decodes=n)
        got = buffers.prepare(batch, 16, pad_to=8)
        m = got.meta
        views.append([t.data_ptr() for t in (got.input_ids, got.positions, m.slot_mapping,
                                              m.cu_seqlens_q, m.seq_lens, m.block_tables)])
    assert views[0] == views[1] == views[2]


def test_padding_refuses_prefills():
    buffers = InputBuffers(torch.device("cpu"), 64, 16, 8)
    seq = ScheduledSeq("p", [1, 2, 3], 0, True, True, [0], SamplingParams(), 0)
    with pytest.raises(ValueError):
        buffers.prepare(ScheduledBatch(0, [seq], num_decodes=0), 16, pad_to=4)


def test_block_table_cache_evicts_old_requests_and_grows_for_big_batches():
    from podserve.executor.inputs import BlockTableCache

    cache = BlockTableCache(num_rows=2, width=2)
    for step in range(5):  # more requests over time than rows: LRU eviction
        cache.step += 1
        row = cache.row(f"old{step}", [step, step + 1, step + 2], 0)
        assert cache.table[row, :3].tolist() == [step, step + 1, step + 2]
    cache.step += 1
    rows = [cache.row(f"big{i}", [i], 0) for i in range(5)]  # one batch, more requests than rows
    assert len(set(rows)) == 5 and 0 not in rows
    assert [cache.table[r, 0] for r in rows] == list(range(5))
    assert not cache.table[0].any()
