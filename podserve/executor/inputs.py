"""A ScheduledBatch as model inputs on persistent device buffers.

Every integer the forward pass needs is written with numpy into one of two pinned host
staging buffers (int64: token ids, positions, KV slots, sample rows; int32: query
offsets, context lengths, block tables) and reaches the device in one non-blocking copy
per buffer. The device tensors handed to the model are views of two persistent device
buffers at offsets that depend only on the batch's shape, so a CUDA graph captured over
a padded decode batch of size B reads its inputs wherever the next batch of size B puts
them. Nothing here reads a device tensor back: the step loop has no host-device sync.

Block tables come from a host-side cache of one row per recent request: a decode step
appends at most one new block per request instead of converting every table from a
Python list again (a 4K-token context is 256 blocks; 128 of them cost ~0.5 ms a step).
A row is trusted only while its table grows by appends and its request has not restarted
(``start_pos == 0``: a new or recomputed prefill); otherwise it is rebuilt.

Two staging buffers alternate, each guarded by an event recorded after its copy, so the
host never overwrites bytes a queued copy has not read yet, even in steps that sample
nothing and therefore never synchronise.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from podserve.attention.base import AttentionMetadata
from podserve.core.batch import ScheduledBatch


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


A64 = 8  # int64 elements per 64 bytes: every segment starts 64-byte aligned
A32 = 16  # int32 elements per 64 bytes


@dataclass
class ModelInputs:
    """What one forward pass reads, plus the host-side facts the sampler needs."""

    input_ids: torch.Tensor  # int64 [num_tokens]
    positions: torch.Tensor  # int64 [num_tokens]
    meta: AttentionMetadata
    sample_idx: torch.Tensor  # int64 [num_samples]: rows of the hidden states to sample
    sample_rows: list[int]
    """Indices into ``batch.seqs`` of the sequences that sample, aligned with ``sample_idx``."""
    num_tokens: int
    """Real (unpadded) tokens."""


class BlockTableCache:
    """Host block-table rows of recent requests, LRU-evicted; row 0 is all zeros (padding).

    Columns past a row's table are kept zero, as a freshly padded table would be."""

    def __init__(self, num_rows: int, width: int):
        self.table = np.zeros((num_rows + 1, width), dtype=np.int32)  # [rows, max_blocks]
        self._filled = [0] * (num_rows + 1)  # blocks written in each row
        self._rows: OrderedDict[str, int] = OrderedDict()  # request_id -> row
        self._free = list(range(num_rows, 0, -1))
        self._used = [0] * (num_rows + 1)  # step that last used each row
        self.step = 1
        """Current step (bump per batch): rows used in this step are never evicted."""

    @property
    def width(self) -> int:
        return self.table.shape[1]

    def row(self, request_id: str, block_table: list[int], start_pos: int) -> int:
        """Row holding ``block_table``; appends new blocks, rebuilds when it cannot trust the row."""
        n = len(block_table)
        if n > self.width:
            self.grow(n)
        row = self._rows.get(request_id)
        fresh = row is None
        if fresh:
            if not self._free:
                old_id, old = next(iter(self._rows.items()))
                if self._used[old] == self.step:  # the batch has more requests than rows
                    self._add_rows(self.table.shape[0])
                else:
                    del self._rows[old_id]
                    self._free.append(old)
            row = self._free.pop()
            self._rows[request_id] = row
        else:
            self._rows.move_to_end(request_id)
        table = self.table[row]
        filled = self._filled[row]
        if fresh or start_pos == 0 or n < filled or (filled and table[filled - 1] != block_table[filled - 1]):
            # A new or restarted request, or a table that changed under us: rebuild.
            if n < filled:
                table[n:filled] = 0
            filled = 0
        if n > filled:
            table[filled:n] = block_table[filled:]
        self._filled[row] = n
        self._used[row] = self.step
        return row

    def _add_rows(self, count: int) -> None:
        first = self.table.shape[0]
        self.table = np.concatenate([self.table, np.zeros((count, self.width), dtype=np.int32)])
        self._filled += [0] * count
        self._used += [0] * count
        self._free += list(range(first + count - 1, first - 1, -1))

    def grow(self, width: int) -> None:
        """Widen every row to at least ``width`` blocks (doubling)."""
        new = np.zeros((self.table.shape[0], max(width, 2 * self.width)), dtype=np.int32)
        new[:, : self.width] = self.table
        self.table = new


class InputBuffers:
    """Pinned host staging and persistent device buffers for the model's integer inputs."""

    def __init__(self, device: torch.device, max_tokens: int, max_seqs: int, max_blocks_per_seq: int,
                 tables: BlockTableCache | None = None):
        self.device = device
        self.pinned = device.type == "cuda"
        self.tables = tables or BlockTableCache(2 * max_seqs + 8, max_blocks_per_seq)
        """Host block-table rows; may be shared by several InputBuffers (eager and graphs)."""
        self.generation = 0
        """Bumped whenever the device buffers are reallocated (captured graphs go stale)."""
        self._slot = 0
        self._events: list = [None, None]
        if self.tables.width < max_blocks_per_seq:
            self.tables.grow(max_blocks_per_seq)
        self._alloc(max_tokens, max_seqs, self.tables.width)

    # --- layout ----------------------------------------------------------------------
    @staticmethod
    def layout64(num_tokens: int, num_samples: int) -> tuple[int, int, int, int, int]:
        """Offsets of ids, positions, slots, sample rows and the end, in the int64 buffer."""
        a = _align(num_tokens, A64)
        return 0, a, 2 * a, 3 * a, 3 * a + _align(num_samples, A64)

    @staticmethod
    def layout32(num_seqs: int, width: int) -> tuple[int, int, int, int]:
        """Offsets of cu_seqlens_q, seq_lens, block tables and the end, in the int32 buffer."""
        a, b = _align(num_seqs + 1, A32), _align(num_seqs, A32)
        return 0, a, a + b, a + b + num_seqs * width

    def _alloc(self, max_tokens: int, max_seqs: int, width: int) -> None:
        self.generation += 1
        self.max_tokens, self.max_seqs = max_tokens, max_seqs
        self._events = [None, None]  # new staging buffers: nothing reads them yet
        n64 = self.layout64(max_tokens, max_seqs)[-1]
        n32 = self.layout32(max_seqs, width)[-1]
        self._stage64 = [torch.zeros(n64, dtype=torch.int64, pin_memory=self.pinned) for _ in range(2)]
        self._stage32 = [torch.zeros(n32, dtype=torch.int32, pin_memory=self.pinned) for _ in range(2)]
        self._np64 = [t.numpy() for t in self._stage64]
        self._np32 = [t.numpy() for t in self._stage32]
        self.dev64 = torch.zeros(n64, dtype=torch.int64, device=self.device)
        self.dev32 = torch.zeros(n32, dtype=torch.int32, device=self.device)
        self._width = width

    def fits(self, num_tokens: int, num_seqs: int) -> bool:
        return num_tokens <= self.max_tokens and num_seqs <= self.max_seqs and self.tables.width == self._width

    # --- per step ---------------------------------------------------------------------
    def prepare(self, batch: ScheduledBatch, block_size: int, pad_to: int | None = None) -> ModelInputs:
        """Stage ``batch`` (decodes first, then prefill chunks) and copy it to the device.

        ``pad_to`` (decode-only batches): append padding decodes up to that many
        sequences — token 0 at position 0, context length 0 (attention reads no KV, which
        with virtual KV may not be mapped; their output rows are garbage and ignored),
        block table of zeros, KV slot -1 (not written) — so the layout equals the one a
        CUDA graph was captured with.
        """
        seqs = batch.seqs
        nd = batch.num_decodes
        num_real = len(seqs)
        query_lens = [len(s.token_ids) for s in seqs]
        starts = [s.start_pos for s in seqs]
        self.tables.step += 1
        rows = [self.tables.row(s.request_id, s.block_table, s.start_pos) for s in seqs]
        sample_rows = [i for i, s in enumerate(seqs) if s.do_sample]
        num_seqs = num_real if pad_to is None else pad_to
        pad = num_seqs - num_real
        if pad < 0 or (pad and nd != num_real):
            raise ValueError(f"pad_to={pad_to} needs a decode-only batch of at most that many sequences")
        num_real_tokens = sum(query_lens)
        num_tokens = num_real_tokens + pad
        if not self.fits(num_tokens, num_seqs):
            self._alloc(max(num_tokens, self.max_tokens), max(num_seqs, self.max_seqs), self.tables.width)

        k = self._slot
        self._slot ^= 1
        if self._events[k] is not None:
            self._events[k].synchronize()  # the copy that last read this staging buffer is done
        s64, s32 = self._np64[k], self._np32[k]
        o_ids, o_pos, o_slot, o_samp, end64 = self.layout64(num_tokens, len(sample_rows))
        o_cu, o_len, o_bt, end32 = self.layout32(num_seqs, self._width)

        q = np.array(query_lens + [1] * pad, dtype=np.int64)  # [num_seqs]
        st = np.array(starts + [0] * pad, dtype=np.int64)
        cu = np.zeros(num_seqs + 1, dtype=np.int64)
        np.cumsum(q, out=cu[1:])
        ids = s64[o_ids:o_ids + num_tokens]
        if nd == num_real:  # decode-only: one token each
            ids[:num_real] = [s.token_ids[0] for s in seqs]
        else:
            ids[:nd] = [s.token_ids[0] for s in seqs[:nd]]
            for i in range(nd, num_real):
                ids[cu[i]:cu[i + 1]] = seqs[i].token_ids
        ids[num_real_tokens:] = 0
        pos = s64[o_pos:o_pos + num_tokens]
        if nd == num_seqs:
            pos[:] = st
        else:
            np.add(np.arange(num_tokens), np.repeat(st - cu[:-1], q), out=pos)
        row_ids = np.array(rows + [0] * pad, dtype=np.int64)
        bt = s32[o_bt:end32].reshape(num_seqs, self._width)
        np.take(self.tables.table, row_ids, axis=0, out=bt)
        slots = s64[o_slot:o_slot + num_tokens]
        tok_rows = row_ids if nd == num_seqs else np.repeat(row_ids, q)
        np.add(self.tables.table[tok_rows, pos // block_size].astype(np.int64) * block_size,
               pos % block_size, out=slots)
        slots[num_real_tokens:] = -1
        s64[o_samp:o_samp + len(sample_rows)] = cu[1:][sample_rows] - 1
        s32[o_cu:o_cu + num_seqs + 1] = cu
        seq_lens = st + q
        seq_lens[num_real:] = 0  # padding decodes attend to nothing
        s32[o_len:o_len + num_seqs] = seq_lens

        d64, d32 = self.dev64, self.dev32
        d64[:end64].copy_(self._stage64[k][:end64], non_blocking=True)
        d32[:end32].copy_(self._stage32[k][:end32], non_blocking=True)
        if self.pinned:
            if self._events[k] is None:
                self._events[k] = torch.cuda.Event()
            self._events[k].record()

        seq_lens_list = seq_lens.tolist()
        q_list = query_lens + [1] * pad
        meta = AttentionMetadata(
            num_decodes=nd + pad,
            num_prefills=num_real - nd,
            num_prefill_tokens=num_real_tokens - nd,
            cu_seqlens_q=d32[o_cu:o_cu + num_seqs + 1],
            seq_lens=d32[o_len:o_len + num_seqs],
            block_tables=d32[o_bt:end32].view(num_seqs, self._width),
            slot_mapping=d64[o_slot:o_slot + num_tokens],
            query_lens_cpu=q_list,
            seq_lens_cpu=seq_lens_list,
            max_query_len=max(q_list),
            max_seq_len=max(max(seq_lens_list), 1),
            block_tables_cpu=bt,
        )
        return ModelInputs(
            input_ids=d64[o_ids:o_ids + num_tokens],
            positions=d64[o_pos:o_pos + num_tokens],
            meta=meta,
            sample_idx=d64[o_samp:o_samp + len(sample_rows)],
            sample_rows=sample_rows,
            num_tokens=num_real_tokens,
        )
