"""The contract between policy and mechanism: what runs in one iteration, and its answer."""
from __future__ import annotations

from dataclasses import dataclass, field

from podserve.request import SamplingParams


PENDING_TOKEN = -1
"""Input token of a decode scheduled while the step that samples it is still running
(asynchronous scheduling, ``core/inflight.py``): the executor substitutes the token it
sampled for that request in the previous step."""


@dataclass
class ScheduledSeq:
    """One request's share of an iteration: a decode token or a prefill chunk."""

    request_id: str
    token_ids: list[int]
    """Input tokens fed this iteration (1 for a decode, the chunk for a prefill)."""
    start_pos: int
    """Position of the first input token (= tokens already in the KV cache)."""
    is_prefill: bool
    """Part of a (possibly chunked, possibly recomputed) prefill rather than a decode."""
    do_sample: bool
    """This chunk reaches the end of the known tokens, so a new token is sampled."""
    block_table: list[int]
    """Physical KV blocks of the request (paged) or its single slot (virtual). The KV
    manager's own list, not a copy: it grows in place when the request is next scheduled,
    so read (or copy) it before then — the executor copies it into a tensor at once."""
    sampling_params: SamplingParams
    num_output_tokens: int
    """Tokens generated so far: with the seed, it fixes the sampler's random stream."""

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def context_len(self) -> int:
        """Context length once this iteration's tokens are in the cache."""
        return self.start_pos + len(self.token_ids)


@dataclass
class ScheduledBatch:
    """Everything one iteration computes. Decodes come first, then prefill chunks."""

    iteration: int
    seqs: list[ScheduledSeq] = field(default_factory=list)
    num_decodes: int = 0
    preempted_ids: list[str] = field(default_factory=list)
    """Requests pushed back to the waiting queue while building this batch."""

    @property
    def num_seqs(self) -> int:
        return len(self.seqs)

    @property
    def num_prefills(self) -> int:
        return len(self.seqs) - self.num_decodes

    @property
    def num_decode_tokens(self) -> int:
        return self.num_decodes

    @property
    def num_prefill_tokens(self) -> int:
        return sum(s.num_tokens for s in self.seqs[self.num_decodes:])

    @property
    def num_tokens(self) -> int:
        return self.num_decodes + self.num_prefill_tokens

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    def describe(self) -> str:
        return f"iter {self.iteration}: {self.num_decodes} decodes, {self.num_prefills} prefills ({self.num_prefill_tokens} tokens)"


@dataclass
class IterationTiming:
    """Where one executed iteration's time went (engine only; the simulator has none)."""

    enqueue_s: float | None = None
    """Host seconds from the executor's entry until it had enqueued all of the iteration's
    device work, just before it waited for the sampled tokens."""
    cpu_s: float | None = None
    """Host seconds from the start of the engine step (scheduling included) until the work
    was enqueued: the scheduler's time plus ``enqueue_s``."""
    gpu_s: float | None = None
    """Device time of the iteration's work (CUDA events around input copy, forward and
    sampling); None on CPU. May be filled in after the step, at the executor's next sync."""


@dataclass
class ExecutorOutput:
    """The answer to a ScheduledBatch: one sampled token per sequence with ``do_sample``."""

    sampled_token_ids: list[int | None]
    """Aligned with ``ScheduledBatch.seqs``; None where the sequence did not sample."""
    duration: float = 0.0
    """Seconds the iteration took (measured by the engine, predicted by the simulator)."""
    timing: IterationTiming | None = None
    """Host and device time of the iteration, when the executor measures them."""
    stage_spans: list[tuple[float, float]] | None = None
    """Under pipeline (or tensor) parallelism: each stage's busy (start, end) for this batch,
    on the engine's perf_counter clock; None on a single device."""
