"""CUDA graphs for decode-only iterations, one per batch-size bucket.

A decode step of an 8B model launches ~500 kernels; launching them from Python costs
more than the GPU needs to run them at small batches. Each bucket ``B`` (1, 2, 4, 8, 16,
then steps of 16 up to ``max_num_seqs``) is captured once: the model forward and the LM
head over ``B`` decodes whose inputs live in persistent buffers (``InputBuffers`` with
a fixed layout per ``B``). A decode batch of ``n <= B`` sequences is padded to ``B``
(padding decodes write no KV and read one cached row) and replayed; sampling runs after
the replay, eagerly, on the first ``n`` rows of the graph's logits.

The decode attention inside a graph has a fixed grid, so its split plan is sized for
``max_model_len`` (``AttentionMetadata.decode_max_seq_len``): splits past a sequence's
end return at once and the combine step counts each sequence's own splits.

Only the Triton backends (``triton``, ``pod``: a decode-only batch runs the serial decode
kernel in both) are captured; the torch reference backend builds index tensors per batch.
"""
from __future__ import annotations

import bisect
import time

import torch

from podserve.core.batch import ScheduledBatch
from podserve.executor.inputs import InputBuffers

CAPTURABLE_BACKENDS = ("triton", "pod", "sdpa")  # decode-only graphs: sdpa decodes with the Triton kernel


def graph_buckets(max_num_seqs: int) -> list[int]:
    """Batch sizes to capture: 1, 2, 4, 8, 16, 32, 48, ... and ``max_num_seqs`` itself."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_num_seqs]
    sizes += list(range(16, max_num_seqs, 16))
    return sorted(set(sizes + [max_num_seqs]))


def warm_up_before_capture(device: torch.device, fn) -> None:
    """Run ``fn`` once eagerly on a side stream and wait for it, as torch advises before a
    capture: Triton kernels compile and cuBLAS sets up its workspaces outside the graph."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)


def smallest_bucket(buckets: list[int], n: int) -> int | None:
    """The smallest of the sorted ``buckets`` that holds ``n``, or None if none does."""
    i = bisect.bisect_left(buckets, n)
    return buckets[i] if i < len(buckets) else None


class DecodeGraphs:
    """Captured decode steps by bucket, over their own persistent input buffers."""

    def __init__(self, runner, buckets: list[int]):
        self.runner = runner
        self.buckets = sorted(buckets)
        self.max_batch = self.buckets[-1]
        self.buffers = InputBuffers(runner.device, self.max_batch, self.max_batch,
                                    runner.max_blocks_per_seq, tables=runner.inputs.tables)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None
        self._generation = self.buffers.generation
        self.capture_s = 0.0

    def bucket(self, n: int) -> int | None:
        return smallest_bucket(self.buckets, n)

    def can_run(self, batch: ScheduledBatch) -> bool:
        """Decode-only, every sequence samples, and a bucket holds it."""
        n = batch.num_seqs
        return (batch.num_decodes == n and n <= self.max_batch
                and all(s.do_sample for s in batch.seqs))

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first so that smaller ones reuse its memory pool."""
        t0 = time.perf_counter()
        self._graphs.clear()
        self._generation = self.buffers.generation
        runner = self.runner
        empty = ScheduledBatch(iteration=-1)
        for b in sorted(self.buckets, reverse=True):
            inputs = self._prepare(empty, b)
            warm_up_before_capture(runner.device, lambda: runner._forward_logits(inputs, all_rows=True))
            graph = torch.cuda.CUDAGraph()
            # thread_local: the virtual-KV mapping thread may call the driver meanwhile.
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                logits = runner._forward_logits(inputs, all_rows=True)  # [b, vocab]
            if self._pool is None:
                self._pool = graph.pool()
            self._graphs[b] = (graph, logits)
        torch.cuda.synchronize(runner.device)
        self.capture_s = time.perf_counter() - t0

    def _prepare(self, batch: ScheduledBatch, bucket: int):
        inputs = self.buffers.prepare(batch, self.runner.kv_pool.block_size, pad_to=bucket)
        inputs.meta.decode_max_seq_len = self.runner.max_model_len  # the graphs' fixed split plan
        return inputs

    def stage(self, batch: ScheduledBatch):
        """Copy ``batch``, padded to its bucket, into the graphs' buffers: (inputs, bucket).

        The returned inputs run eagerly exactly as the bucket's graph does (same padding,
        same split plan), which is how the CPU tests check the graph path."""
        b = self.bucket(batch.num_seqs)
        inputs = self._prepare(batch, b)
        if self.buffers.generation != self._generation:
            self.capture()  # the buffers were reallocated (a block table outgrew them)
            inputs = self._prepare(batch, b)
        return inputs, b

    def replay(self, bucket: int, num_seqs: int) -> torch.Tensor:  # [num_seqs, vocab] float32
        """Replay the bucket's graph over the staged inputs; the logits of the real rows."""
        graph, logits = self._graphs[bucket]
        graph.replay()
        return logits[:num_seqs]
