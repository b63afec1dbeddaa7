"""One row per finished request and one per iteration, derived from scheduler state."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from operator import attrgetter

from podserve.core.batch import ScheduledBatch
from podserve.request import Request


@dataclass
class RequestMetrics:
    """Latencies of one request, in seconds on the clock that fed ``Request.times``."""

    request_id: str
    arrival: float
    num_prompt_tokens: int
    num_output_tokens: int
    finish_reason: str | None
    num_preemptions: int
    scheduling_delay: float | None
    """first_scheduled - arrival: time spent queued before any of its tokens ran."""
    ttft: float | None
    """first_token - arrival."""
    e2e: float | None
    """finished - arrival."""
    tbt: list[float] = field(default_factory=list)
    """Every gap between consecutive output tokens (a preemption shows up as one long gap)."""

    @property
    def normalized_e2e(self) -> float | None:
        """E2E per output token: comparable across requests of different lengths."""
        if self.e2e is None or self.num_output_tokens == 0:
            return None
        return self.e2e / self.num_output_tokens

    @classmethod
    def from_request(cls, request: Request) -> "RequestMetrics":
        t = request.times

        def since_arrival(x: float | None) -> float | None:
            return None if x is None else x - t.arrival

        return cls(
            request_id=request.request_id,
            arrival=t.arrival,
            num_prompt_tokens=request.num_prompt_tokens,
            num_output_tokens=request.num_output_tokens,
            finish_reason=request.status.finish_reason,
            num_preemptions=request.num_preemptions,
            scheduling_delay=since_arrival(t.first_scheduled),
            ttft=since_arrival(t.first_token),
            e2e=since_arrival(t.finished),
            tbt=[b - a for a, b in zip(t.token_times, t.token_times[1:])],
        )

    def row(self) -> dict:
        """Flat CSV row: TBT as count/mean/max plus the full list joined by ';'."""
        d = asdict(self)
        tbt = d.pop("tbt")
        d["normalized_e2e"] = self.normalized_e2e
        d["tbt_mean"] = sum(tbt) / len(tbt) if tbt else None
        d["tbt_max"] = max(tbt) if tbt else None
        d["tbt"] = ";".join(f"{x:.6f}" for x in tbt)
        return d


_START_POS = attrgetter("start_pos")


@dataclass
class IterationRecord:
    """Shape and duration of one executed batch."""

    iteration: int
    start: float
    duration: float
    num_prefill_tokens: int
    num_decode_tokens: int
    batch_size: int
    num_decodes: int
    num_prefills: int
    num_preempted: int
    num_sampled: int = 0
    """Sequences that sampled a token (rows through the LM head)."""
    decode_context_tokens: int = 0
    """Sum of the decodes' context lengths: the KV they read."""
    prefill_context_tokens: int = 0
    """Sum of the prefill chunks' context lengths (cached prefix plus chunk)."""
    prefill_attention_pairs: float = 0.0
    """Causal (query, key) pairs of the prefill chunks: ``q * (kv - q) + q * (q + 1) / 2`` each."""
    cpu_time: float | None = None
    """Host time from the step's start (scheduling included) until its device work was
    enqueued; None where not measured (the simulator)."""
    gpu_time: float | None = None
    """Device time of the step (CUDA events); None on CPU and in the simulator."""

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens

    @property
    def kind(self) -> str:
        """"decode" (decode-only), "prefill" (prefill-only), "hybrid" (both), or "empty"."""
        if self.num_decodes and self.num_prefills:
            return "hybrid"
        return "decode" if self.num_decodes else "prefill" if self.num_prefills else "empty"

    @classmethod
    def from_batch(cls, batch: ScheduledBatch, start: float, end: float) -> "IterationRecord":
        nd = batch.num_decodes
        seqs = batch.seqs
        pairs, prefill_ctx, prefill_tokens = 0.0, 0, 0
        sampled = nd  # a decode feeds the last known token: it always samples
        for s in seqs[nd:]:
            q = len(s.token_ids)
            pairs += q * s.start_pos + q * (q + 1) / 2.0
            prefill_ctx += s.start_pos + q
            prefill_tokens += q
            sampled += s.do_sample
        return cls(
            iteration=batch.iteration,
            start=start,
            duration=end - start,
            num_prefill_tokens=prefill_tokens,
            num_decode_tokens=nd,
            batch_size=len(seqs),
            num_decodes=nd,
            num_prefills=len(seqs) - nd,
            num_preempted=len(batch.preempted_ids),
            num_sampled=sampled,
            decode_context_tokens=sum(map(_START_POS, seqs[:nd])) + nd,  # a decode adds one token
            prefill_context_tokens=prefill_ctx,
            prefill_attention_pairs=pairs,
        )

    def row(self) -> dict:
        return {**asdict(self), "kind": self.kind}
