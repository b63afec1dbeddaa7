"""What every scheduling policy shares: queues, admission checks, preemption, updates."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

from podserve.config import SchedulerConfig
from podserve.core.batch import ExecutorOutput, ScheduledBatch, ScheduledSeq
from podserve.core.kv.paged import BlockManager
from podserve.request import Request, RequestStatus


@dataclass
class RequestUpdate:
    """What one iteration did to one request: tokens appended and whether it finished."""

    request: Request
    new_token_ids: list[int]
    finished: bool


class Scheduler:
    """Base policy. Subclasses implement ``_schedule`` and document their rule.

    The engine and the simulator both drive it: ``schedule(now)`` builds a batch,
    the executor (or a cost model) runs it, ``update(batch, output, now)`` applies it.
    """

    name = "base"

    def __init__(self, config: SchedulerConfig, kv: BlockManager):
        self.config = config
        self.kv = kv
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.iteration = 0
        self.num_preemptions = 0
        self.pinned: set[str] = set()
        """Ids of running requests that must not be preempted now: under pipeline parallelism,
        requests whose earlier prefill chunks are still in the pipeline (``core/inflight.py``);
        their KV is being written by stages that have not run them yet."""
        self._max_total_tokens = min(config.max_model_len, kv.max_request_tokens + 1)
        """A request ends by length on reaching this many tokens: the context limit, or one
        past what the whole KV cache holds (its next decode could never run)."""

    @property
    def max_total_tokens(self) -> int:
        """Prompt plus output tokens at which a request ends by length."""
        return self._max_total_tokens

    # --- request lifecycle -------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        """Queue a request; reject at once one that could never run."""
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        n, limit = request.num_prompt_tokens, self.config.max_model_len
        if n == 0:
            raise ValueError("prompt is empty: at least one token is needed")
        if n >= limit:
            raise ValueError(f"prompt has {n} tokens, but the context length (max_model_len) is {limit}: at most {limit - 1} prompt tokens fit")
        if self.kv.blocks_needed(n + 1) > self.kv.num_blocks:
            raise ValueError(f"prompt of {n} tokens needs more KV blocks than the whole cache holds ({self.kv.num_blocks})")
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def abort_request(self, request_id: str) -> Request | None:
        """Drop a request wherever it is and free its KV; unknown ids are ignored."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        self._finish(request, RequestStatus.FINISHED_ABORTED, now=None)
        return request

    def finish_request(self, request_id: str, status: RequestStatus, now: float) -> None:
        """End a request for a reason decided above the scheduler (e.g. a stop string)."""
        request = self.requests.get(request_id)
        if request is not None:
            self._finish(request, status, now)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    # --- one iteration -----------------------------------------------------------------
    def schedule(self, now: float) -> ScheduledBatch:
        """Build the next batch (decodes first, then prefill chunks)."""
        batch = ScheduledBatch(iteration=self.iteration)
        decodes, prefills = self._schedule(batch)
        seqs, make_seq = batch.seqs, self._make_seq
        for pairs in (decodes, prefills):
            for request, num_tokens in pairs:
                seqs.append(make_seq(request, num_tokens))
                times = request.times
                if times.first_scheduled is None:
                    times.first_scheduled = now
        batch.num_decodes = len(decodes)
        self.iteration += 1
        return batch

    def _schedule(self, batch: ScheduledBatch) -> tuple[list[tuple[Request, int]], list[tuple[Request, int]]]:
        """Policy hook: return (decodes, prefill chunks) as (request, num_tokens) pairs.

        Must leave KV allocated for every scheduled token, move admitted requests from
        ``waiting`` to ``running``, and record preemptions in ``batch.preempted_ids``.
        """
        raise NotImplementedError

    def update(self, batch: ScheduledBatch, output: ExecutorOutput, now: float) -> list[RequestUpdate]:
        """Apply an executed batch: advance progress, append sampled tokens, finish requests."""
        updates = []
        get_request, running, max_total_tokens = self.requests.get, RequestStatus.RUNNING, self._max_total_tokens
        for seq, token_id in zip(batch.seqs, output.sampled_token_ids):
            request = get_request(seq.request_id)
            if request is None or request.status is not running:
                continue  # aborted while the batch ran
            request.num_computed_tokens += len(seq.token_ids)
            if not seq.do_sample:
                continue
            if token_id is None:
                raise RuntimeError(f"executor sampled no token for {seq.request_id}")
            output_ids = request.output_token_ids
            output_ids.append(token_id)
            times = request.times
            times.token_times.append(now)
            if times.first_token is None:
                times.first_token = now
            status = request.check_token_stop(token_id)
            if status is None and len(request.prompt_token_ids) + len(output_ids) >= max_total_tokens:
                status = RequestStatus.FINISHED_LENGTH
            if status is not None:
                self._finish(request, status, now)
            updates.append(RequestUpdate(request, [token_id], status is not None))
        return updates

    # --- helpers for policies ----------------------------------------------------------
    def _make_seq(self, request: Request, num_tokens: int) -> ScheduledSeq:
        # Called for every scheduled request every iteration: lengths are read once, and
        # the block table is the KV manager's live list, not a copy (it only grows when
        # the request is scheduled again; the executor copies it into a tensor).
        start = request.num_computed_tokens
        num_output = len(request.output_token_ids)
        total = len(request.prompt_token_ids) + num_output
        return ScheduledSeq(  # positional (keywords cost ~0.2 us a call): fields in declaration order
            request.request_id,                              # request_id
            request.token_ids_from(start, num_tokens),       # token_ids
            start,                                           # start_pos
            total - start > 1,                               # is_prefill
            start + num_tokens == total,                     # do_sample
            self.kv.block_table(request),                    # block_table
            request.sampling_params,                         # sampling_params
            num_output,                                      # num_output_tokens
        )

    def _can_admit(self, request: Request, num_tokens: int) -> bool:
        """KV for ``num_tokens`` above the watermark; or, when no request holds KV at all, in
        the whole cache: the watermark protects running requests from preempting each other,
        and with none it would only keep a large (or preempted and grown) request waiting forever."""
        kv = self.kv
        return kv.can_admit(request, num_tokens) or (kv.num_requests() == 0 and kv.can_grow(request, num_tokens))

    def _admit(self, request: Request) -> None:
        """Move the head of ``waiting`` to ``running``."""
        assert self.waiting[0] is request
        self.waiting.popleft()
        request.status = RequestStatus.RUNNING
        self.running.append(request)

    def _preempt(self, request: Request, batch: ScheduledBatch) -> None:
        """Preempt by recompute: free the KV and requeue at the front of ``waiting``."""
        self.running.remove(request)
        self.kv.free(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
        self.num_preemptions += 1
        batch.preempted_ids.append(request.request_id)

    def _schedule_decodes(self, batch: ScheduledBatch, budget: int) -> list[tuple[Request, int]]:
        """One token for every running request past its prefill, oldest first, while
        ``budget`` lasts; on KV shortage the newest running requests are preempted."""
        decodes: list[tuple[Request, int]] = []
        running, grow = RequestStatus.RUNNING, self.kv.grow
        for request in list(self.running):
            if budget == 0:
                break
            if request.status is not running:
                continue  # preempted earlier in this loop (every request in ``running`` is RUNNING)
            num_computed = request.num_computed_tokens
            if len(request.prompt_token_ids) + len(request.output_token_ids) - num_computed > 1:
                continue  # still prefilling
            # Fast path: KV for the token is at hand; else preempt until it is (or give up).
            if grow(request, num_computed + 1) or self._reserve_decode(request, batch):
                decodes.append((request, 1))
                budget -= 1
        return decodes

    def _schedule_chunks(self, budget: int, max_prefills: int | None = None) -> list[tuple[Request, int]]:
        """Prefill chunks under ``budget``: first the next chunk of every request whose
        prefill is under way, then new requests FCFS, the last one chunked to fit.

        KV for the whole prompt is reserved on admission so a chunked prefill never
        stalls half-way. ``max_prefills`` caps the number of chunks (decode-maximal).
        """
        prefills: list[tuple[Request, int]] = []

        def full() -> bool:
            return max_prefills is not None and len(prefills) >= max_prefills

        for request in self.running:
            left = len(request.prompt_token_ids) + len(request.output_token_ids) - request.num_computed_tokens
            if left <= 1:
                continue  # decoding
            if budget == 0 or full():
                break
            chunk = min(left, budget)
            prefills.append((request, chunk))
            budget -= chunk
        while self.waiting and budget > 0 and not full():
            request = self.waiting[0]
            if len(self.running) >= self.config.max_num_seqs:
                break
            if not self._can_admit(request, request.num_tokens):
                break
            self.kv.allocate(request, request.num_tokens)
            self._admit(request)
            chunk = min(request.num_tokens, budget)
            prefills.append((request, chunk))
            budget -= chunk
        return prefills

    def _admit_whole_prompts(self, budget: int, reserve_tokens: Callable[[Request], int]) -> list[tuple[Request, int]]:
        """Admit waiting requests FCFS, each as one whole-prompt prefill, while their
        tokens fit ``budget``, ``max_num_seqs`` allows and KV for ``reserve_tokens(request)``
        tokens can be reserved (above the watermark). Stops at the first misfit so a
        long prompt at the head is never overtaken."""
        prefills: list[tuple[Request, int]] = []
        while self.waiting:
            request = self.waiting[0]
            num_tokens = request.num_tokens - request.num_computed_tokens
            reserve = reserve_tokens(request)
            if len(self.running) >= self.config.max_num_seqs or num_tokens > budget:
                break
            if not self._can_admit(request, reserve):
                break
            self.kv.allocate(request, reserve)
            self._admit(request)
            prefills.append((request, num_tokens))
            budget -= num_tokens
        return prefills

    def _check_whole_prompts_fit(self) -> None:
        """Policies that never chunk need every possible prompt to fit one iteration."""
        cap, limit = self.config.token_cap, self.config.max_model_len
        if cap < limit:
            raise ValueError(
                f"scheduler {self.name!r} runs whole prompts, so max_num_batched_tokens ({cap}) "
                f"must be >= max_model_len ({limit}); raise it or lower max_model_len")

    def _check_full_reservation_fits(self) -> None:
        """Policies that reserve KV for ``max_model_len`` up front need one such
        reservation to fit the cache above its watermark, or nothing could ever run."""
        kv, limit = self.kv, self.config.max_model_len
        if kv.blocks_needed(limit) > kv.num_blocks - kv.watermark_blocks:
            raise ValueError(
                f"scheduler {self.name!r} reserves KV for max_model_len={limit} tokens per request, "
                f"more than the cache holds above its watermark "
                f"({kv.num_blocks - kv.watermark_blocks} blocks of {kv.block_size}); lower max_model_len")

    def _reserve_decode(self, request: Request, batch: ScheduledBatch) -> bool:
        """Find KV for one more token of ``request``, preempting the newest running
        requests if needed. Returns False if ``request`` itself had to be preempted, or if
        every other candidate is pinned (in flight): then it simply waits a step."""
        num_tokens = request.num_computed_tokens + 1
        grow, pinned = self.kv.grow, self.pinned
        while not grow(request, num_tokens):
            victim = self.running[-1]
            if pinned and victim.request_id in pinned:
                victim = next((r for r in reversed(self.running) if r.request_id not in pinned), None)
                if victim is None:
                    return False  # every candidate is in flight: this decode waits a step, nothing preempted
            self._preempt(victim, batch)
            if victim is request:
                return False
        return True

    def _finish(self, request: Request, status: RequestStatus, now: float | None) -> None:
        if request in self.running:
            self.running.remove(request)
        elif request.status is RequestStatus.WAITING:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
        self.kv.free(request)
        request.status = status
        if now is not None:
            request.times.finished = now
        self.requests.pop(request.request_id, None)
