"""Micro-batches in flight in a pipeline, and the rules that pick the requests the
scheduler may see for the next one: the engine under pipeline parallelism and the
simulator's replicas share them.

1. *Never twice.* While a request's micro-batch is still travelling through the stages its
   progress (``num_computed_tokens``, the sampled token) is unknown, so scheduling it
   again would feed a stale position: such requests are hidden.
2. *Balanced micro-batches.* A policy packs every visible running request into one batch
   (all decodes first), which would leave the next micro-batch empty once prefills are
   done -- one micro-batch in a ``pp``-stage pipeline, ``1 - 1/pp`` of it idle. So each
   micro-batch sees at most ``ceil(running / pp)`` running requests (the oldest not in
   flight): the running set splits into ``pp`` groups that take turns, as vLLM's virtual
   engines and Sarathi's uniform micro-batches do. New requests are admitted as usual.

Hidden requests sit out of ``scheduler.running`` while the policy builds the batch and are
merged back in their original order; they are neither scheduled nor preempted, so
``max_num_seqs`` bounds the requests of each micro-batch rather than of the whole
pipeline, as in Sarathi's pipeline-parallel scheduling. The scheduler itself is
untouched: any policy works, and with one stage this is exactly ``scheduler.schedule(now)``.
"""
from __future__ import annotations

from podserve.core.batch import ScheduledBatch


class InFlightBatches:
    """Counts, per request id, the submitted micro-batches that have not returned yet."""

    def __init__(self, num_stages: int = 2):
        self._count: dict[str, int] = {}
        self.num_stages = num_stages
        self._track = num_stages > 1
        """One stage only counts batches: a batch always returns before the next forms."""
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
        """``scheduler.schedule(now)`` over the running requests not in flight, at most
        ``ceil(running / num_stages)`` of them."""
        saved = scheduler.running
        if not self._track or not saved:
            return scheduler.schedule(now)
        count = self._count
        quota = -(-len(saved) // self.num_stages)
        visible = [r for r in saved if r.request_id not in count][:quota]
        if len(visible) == len(saved):
            return scheduler.schedule(now)
        shown = {id(r) for r in visible}
        scheduler.running = visible
        try:
            return scheduler.schedule(now)
        finally:
            after = scheduler.running
            kept = {id(r) for r in after}
            merged = [r for r in saved if id(r) not in shown or id(r) in kept]
            before = {id(r) for r in saved}
            merged += [r for r in after if id(r) not in before]  # admitted this iteration, newest last
            scheduler.running = merged
