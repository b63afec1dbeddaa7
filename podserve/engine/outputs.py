"""What the engine returns to callers: vLLM-shaped request outputs."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    """One generated sequence (``n`` is always 1 for now)."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    """"stop" (EOS, stop token or string), "length" (max_tokens or context), "abort", or None while running."""


@dataclass
class RequestMetrics:
    """Timestamps of one request, in seconds of ``time.perf_counter()``."""

    arrival_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    token_times: list[float]
    finished_time: float | None
    num_preemptions: int = 0


@dataclass
class RequestOutput:
    """State of one request after a step: cumulative text plus this step's delta."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
