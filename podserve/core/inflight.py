"""Micro-batches in flight in a pipeline, and the rules that pick the requests the
scheduler may see for the next one: the engine under pipeline parallelism and the
simulator's replicas share them.

1. *Never twice while a token is pending.* While a micro-batch that samples a request's
   next token (a decode, or the last chunk of a prefill) is travelling through the stages,
   that token is unknown, so scheduling the request again would feed a stale position:
   such requests are hidden.
2. *Prefill chunks back to back.* A non-final prefill chunk produces no token, and each
   stage runs micro-batches in submission order, so a stage has always written a chunk's
   KV before it meets the next chunk. A request whose in-flight work is only such chunks
   stays visible, its progress shown as if they had returned (``num_computed_tokens``
   advanced for the duration of ``schedule``), and its next chunk may join the next
   micro-batch -- as in Sarathi's pipeline-parallel scheduling, where a long prompt's
   chunks fill consecutive micro-batches instead of leaving them to decodes alone. It is
   pinned (``scheduler.pinned``) so that it is never chosen for preemption meanwhile.
3. *Balanced micro-batches.* A policy packs every visible running request into one batch
   (all decodes first), which would leave the next micro-batch empty once prefills are
   done -- one micro-batch in a ``pp``-stage pipeline, ``1 - 1/pp`` of it idle. So with
   ``m`` micro-batches in flight (``pp`` by default, ``ParallelConfig.pipeline_microbatches``)
   each sees at most ``ceil(running / m)`` running requests (the oldest not hidden): the
   running set splits into ``m`` groups that take turns, as vLLM's virtual engines and
   Sarathi's uniform micro-batches do. New requests are admitted as usual. With ``m > pp``
   stage 0 still holds a queued micro-batch when one returns, so the driver's work between
   them (apply, schedule, ship) overlaps the stages' instead of idling stage 0.

With ``lookahead`` (asynchronous scheduling for tensor parallelism: one executor, two
steps in flight, the next scheduled while the previous runs) rules 1 and 3 change:

1'. *Scheduled again with the token pending.* A request whose sampled token is still in
    flight stays visible, as if that step had returned: ``num_computed_tokens`` advanced
    by the step's tokens and a ``PENDING_TOKEN`` placeholder appended to its output for
    the duration of ``schedule``. Its next decode feeds the placeholder, which the
    executor replaces with the token it sampled one step earlier (the steps run in
    order). It is pinned meanwhile. A request whose pending token is sure to be its last
    (``max_tokens``, the context limit) is hidden instead; one that stops on EOS or a stop
    string costs one wasted decode, dropped by ``scheduler.update`` (the request is gone).
3'. No quota: every step sees every running request, as the synchronous engine does.

Hidden requests sit out of ``scheduler.running`` while the policy builds the batch and are
merged back in their original order; they are neither scheduled nor preempted, so
``max_num_seqs`` bounds the requests of each micro-batch rather than of the whole
pipeline, as in Sarathi's pipeline-parallel scheduling. The scheduler itself is
untouched: any policy works, and with one stage this is exactly ``scheduler.schedule(now)``.
"""
from __future__ import annotations

from podserve.core.batch import PENDING_TOKEN, ScheduledBatch


class InFlightBatches:
    """Tracks, per request id, the submitted micro-batches that have not returned yet."""

    def __init__(self, num_microbatches: int = 2, lookahead: bool = False):
        """``num_microbatches``: micro-batches in flight at most (``config.pipeline_depth``
        under pipeline parallelism, 2 for asynchronous scheduling); ``lookahead``: rules 1'
        and 3' instead of 1 and 3."""
        self._count: dict[str, int] = {}
        """In-flight sequences that sample a token, per request: the request is hidden
        (with ``lookahead``: shown with its token pending)."""
        self._sampling_tokens: dict[str, int] = {}
        """With ``lookahead``: input tokens of each request's in-flight sampling sequence."""
        self._ahead: dict[str, list[int]] = {}
        """In-flight non-final prefill chunks per request: [number of chunks, tokens]."""
        self.num_microbatches = num_microbatches
        self.lookahead = lookahead
        self._track = num_microbatches > 1
        """One stage only counts batches: a batch always returns before the next forms."""
        self.num_batches = 0
        """Micro-batches submitted and not yet returned."""

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._count or request_id in self._ahead

    def __len__(self) -> int:
        return self.num_batches

    def add(self, batch: ScheduledBatch) -> None:
        """Mark ``batch`` (just scheduled) as in flight."""
        self.num_batches += 1
        if not self._track:
            return
        count, ahead = self._count, self._ahead
        for s in batch.seqs:
            rid = s.request_id
            if s.do_sample:
                count[rid] = count.get(rid, 0) + 1
                if self.lookahead:
                    self._sampling_tokens[rid] = len(s.token_ids)
            else:
                chunks = ahead.get(rid)
                if chunks is None:
                    ahead[rid] = [1, len(s.token_ids)]
                else:
                    chunks[0] += 1
                    chunks[1] += len(s.token_ids)

    def remove(self, batch: ScheduledBatch) -> None:
        """``batch`` came back: its requests are visible again (call before ``scheduler.update``)."""
        self.num_batches -= 1
        if not self._track:
            return
        count, ahead = self._count, self._ahead
        for s in batch.seqs:
            rid = s.request_id
            if s.do_sample:
                left = count[rid] - 1
                if left:
                    count[rid] = left
                else:
                    del count[rid]
                    self._sampling_tokens.pop(rid, None)
            else:
                chunks = ahead[rid]
                chunks[0] -= 1
                chunks[1] -= len(s.token_ids)
                if not chunks[0]:
                    del ahead[rid]

    def schedule(self, scheduler, now: float) -> ScheduledBatch:
        """``scheduler.schedule(now)`` over the running requests not hidden, at most
        ``ceil(running / num_microbatches)`` of them, in-flight prefill chunks counted as done."""
        saved = scheduler.running
        if not self._track or not saved:
            return scheduler.schedule(now)
        count, ahead = self._count, self._ahead
        pending: list = []  # lookahead: requests shown with a placeholder for their pending token
        if self.lookahead:
            visible = []
            for r in saved:
                n = count.get(r.request_id)
                if n is None:
                    visible.append(r)
                elif n == 1 and not self._ends_with_pending(r, scheduler):
                    visible.append(r)
                    pending.append(r)
        else:
            quota = -(-len(saved) // self.num_microbatches)
            visible = [r for r in saved if r.request_id not in count][:quota]
        advanced = [(r, ahead[r.request_id][1]) for r in visible if r.request_id in ahead] if ahead else []
        advanced += [(r, self._sampling_tokens[r.request_id]) for r in pending]
        for r, tokens in advanced:
            r.num_computed_tokens += tokens
            scheduler.pinned.add(r.request_id)
        for r in pending:
            r.output_token_ids.append(PENDING_TOKEN)
        try:
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
        finally:
            for r in pending:
                r.output_token_ids.pop()
            for r, tokens in advanced:
                r.num_computed_tokens -= tokens
            if advanced:
                scheduler.pinned.clear()

    @staticmethod
    def _ends_with_pending(request, scheduler) -> bool:
        """The token in flight is certainly the request's last (length limits only)."""
        num_output = len(request.output_token_ids) + 1
        return (num_output >= request.sampling_params.max_tokens
                or len(request.prompt_token_ids) + num_output >= scheduler.max_total_tokens)
