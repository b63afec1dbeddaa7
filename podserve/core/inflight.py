"""Micro-batches in flight in a pipeline, and the rule that keeps their requests out of
the scheduler's sight: the engine under pipeline parallelism and the simulator's replicas
share it, so both never schedule a request whose previous batch has not come back.

While a request's micro-batch is still travelling through the stages its progress
(``num_computed_tokens``, the sampled token) is unknown, so scheduling it again would
feed a stale position. ``InFlightBatches.schedule`` hides such requests from
``scheduler.running`` while the policy builds the next batch, then merges them back in
their original order. Hidden requests are neither scheduled nor preempted (the policy
only sees the rest), so ``max_num_seqs`` bounds the requests of each micro-batch rather
than of the whole pipeline, as in Sarathi's pipeline-parallel scheduling. The scheduler
itself is untouched: any policy works, and without batches in flight this is exactly
``scheduler.schedule(now)``.
"""
from __future__ import annotations

from podserve.core.batch import ScheduledBatch


class InFlightBatches:
    """Counts, per request id, the submitted micro-batches that have not returned yet."""

    def __init__(self, track_requests: bool = True):
        self._count: dict[str, int] = {}
        self._track = track_requests
        """False only counts batches (one stage: a batch always returns before the next forms)."""
        self.num_batches = 0
        """Micro-batches submitted and not yet returned."""

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._count

    def __len__(self) -> int:
        return self.num_batches

    def add(self, batch: ScheduledBatch) -> None:
        """Mark ``batch`` (just scheduled) as in flight."""
        self.num_batches += 1
        if not self._track:
            return
        count = self._count
        for s in batch.seqs:
            count[s.request_id] = count.get(s.request_id, 0) + 1

    def remove(self, batch: ScheduledBatch) -> None:
        """``batch`` came back: its requests are visible again (call before ``scheduler.update``)."""
        self.num_batches -= 1
        if not self._track:
            return
        count = self._count
        for s in batch.seqs:
            left = count[s.request_id] - 1
            if left:
                count[s.request_id] = left
            else:
                del count[s.request_id]

    def schedule(self, scheduler, now: float) -> ScheduledBatch:
        """``scheduler.schedule(now)`` over the requests not in flight."""
        count = self._count
        if not count:
            return scheduler.schedule(now)
        saved = scheduler.running
        scheduler.running = [r for r in saved if r.request_id not in count]
        try:
            return scheduler.schedule(now)
        finally:
            after = scheduler.running
            kept = {id(r) for r in after}
            merged = [r for r in saved if r.request_id in count or id(r) in kept]
            before = {id(r) for r in saved}
            merged += [r for r in after if id(r) not in before]  # admitted this iteration, newest last
            scheduler.running = merged
