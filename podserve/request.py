"""Requests and sampling parameters: pure Python state shared by engine and simulator."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    """How to pick each new token and when to stop, as in vLLM.

    Invalid values raise ``ValueError`` naming the field.
    """

    max_tokens: int = 16
    """Most tokens to generate."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    top_k: int = -1
    """Keep the k most likely tokens; -1 (or 0) keeps all."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p times the top one, in [0, 1]."""
    seed: int | None = None
    """Per-request seed: the same seed gives the same tokens whatever else is batched."""
    stop: list[str] | str | None = None
    """Strings that end generation; the matched string is not returned."""
    stop_token_ids: list[int] | None = None
    """Token ids that end generation (besides EOS)."""
    ignore_eos: bool = False
    """Keep generating past EOS (benchmarks)."""
    min_tokens: int = 0
    """Generate at least this many tokens before EOS/stop tokens may end the request."""
    detokenize: bool = True
    """Turn output tokens into text; False returns token ids only and spends no host time
    on the tokenizer (benchmarks; stop strings then cannot be used), as in vLLM."""

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        _check(isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens", self.max_tokens, "an integer >= 1")
        _check(_finite(self.temperature) and self.temperature >= 0, "temperature", self.temperature, ">= 0")
        _check(_finite(self.top_p) and 0 < self.top_p <= 1, "top_p", self.top_p, "in (0, 1]")
        _check(isinstance(self.top_k, int) and self.top_k >= -1, "top_k", self.top_k, "-1 (all) or >= 0")
        _check(_finite(self.min_p) and 0 <= self.min_p <= 1, "min_p", self.min_p, "in [0, 1]")
        _check(self.seed is None or isinstance(self.seed, int), "seed", self.seed, "an integer or None")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop", self.stop, "non-empty strings")
        _check(all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids), "stop_token_ids", self.stop_token_ids, "non-negative integers")
        _check(isinstance(self.min_tokens, int) and 0 <= self.min_tokens <= self.max_tokens, "min_tokens", self.min_tokens, "in [0, max_tokens]")
        _check(self.detokenize or not self.stop, "stop", self.stop, "no stop strings when detokenize=False")

    @property
    def greedy(self) -> bool:
        """Temperatures this small would overflow the softmax: treat them as 0, as vLLM does."""
        return self.temperature < _GREEDY_BELOW


_GREEDY_BELOW = 1e-5


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"SamplingParams.{name}={value!r} is invalid: expected {expected}")


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "finished_stopped"
    FINISHED_LENGTH = "finished_length"
    FINISHED_ABORTED = "finished_aborted"

    @property
    def finished(self) -> bool:
        return self.value.startswith("finished")

    @property
    def finish_reason(self) -> str | None:
        return {"finished_stopped": "stop", "finished_length": "length", "finished_aborted": "abort"}.get(self.value)


@dataclass
class RequestTimes:
    """Wall-clock (engine) or virtual (simulator) timestamps of one request, in seconds."""

    arrival: float
    first_scheduled: float | None = None
    first_token: float | None = None
    token_times: list[float] = field(default_factory=list)
    finished: float | None = None


@dataclass(eq=False)
class Request:
    """One generation request as the scheduler sees it: token ids and progress, no tensors."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    arrival_time: float
    eos_token_ids: tuple[int, ...] = ()
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    """Tokens whose KV is in the cache (prompt and output alike)."""
    status: RequestStatus = RequestStatus.WAITING
    num_preemptions: int = 0
    times: RequestTimes = field(init=False)

    def __post_init__(self):
        self.times = RequestTimes(arrival=self.arrival_time)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_prefill(self) -> bool:
        """More than one token still lacks KV: the request needs a (chunked) prefill."""
        return self.num_tokens - self.num_computed_tokens > 1

    @property
    def max_total_tokens(self) -> int:
        """Prompt plus the most tokens it may generate: its largest possible KV footprint."""
        return self.num_prompt_tokens + self.sampling_params.max_tokens

    def token_ids_from(self, start: int, count: int) -> list[int]:
        """Tokens ``start .. start + count - 1`` of prompt + output, without joining the two
        (a decode reads only the output's tail: O(count), not O(context))."""
        n = len(self.prompt_token_ids)
        end = start + count
        if end <= n:
            return self.prompt_token_ids[start:end]
        if start >= n:
            return self.output_token_ids[start - n:end - n]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - n]

    def check_token_stop(self, token_id: int) -> RequestStatus | None:
        """Token-level stop after ``token_id`` was appended (stop strings are the engine's job)."""
        sp = self.sampling_params
        num_output = len(self.output_token_ids)
        if num_output >= sp.min_tokens:
            if not sp.ignore_eos and token_id in self.eos_token_ids:
                return RequestStatus.FINISHED_STOPPED
            if token_id in sp.stop_token_ids:
                return RequestStatus.FINISHED_STOPPED
        if num_output >= sp.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None
