"""Latency SLOs of the configuration search (P99 TTFT and P99 TBT) and an early-fail watch."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class LatencySLO:
    """A run passes if P99 TTFT <= ``ttft_s`` and P99 TBT <= ``tbt_s``."""

    ttft_s: float
    tbt_s: float

    def check(self, summary: dict) -> bool:
        """Verdict on a ``MetricsCollector.summary()`` of a complete run."""
        ttft, tbt = summary["ttft"]["p99"], summary["tbt"]["p99"]
        return ttft is not None and ttft <= self.ttft_s and (tbt is None or tbt <= self.tbt_s)

    def margins(self, summary: dict) -> dict:
        """How far below each bound the run stayed, as a fraction of the bound."""
        return {"ttft": None if summary["ttft"]["p99"] is None else 1 - summary["ttft"]["p99"] / self.ttft_s,
                "tbt": None if summary["tbt"]["p99"] is None else 1 - summary["tbt"]["p99"] / self.tbt_s}


class SLOWatch:
    """Counts samples certain to exceed the SLO as tokens come out; once more than
    1% + 2 of all samples are late, the P99 can only fail and the run can stop."""

    def __init__(self, slo: LatencySLO, num_requests: int, num_tbt_samples: int):
        self.slo = slo
        self.ttft_limit = 0.01 * num_requests + 2
        self.tbt_limit = 0.01 * num_tbt_samples + 2
        self.late_ttft = 0
        self.late_tbt = 0
        self._pending: deque = deque()

    def on_arrival(self, request) -> None:
        self._pending.append(request)

    def on_token(self, request, now: float) -> None:
        times = request.times.token_times
        if len(times) == 1:
            self.late_ttft += now - request.times.arrival > self.slo.ttft_s
        elif now - times[-2] > self.slo.tbt_s:
            self.late_tbt += 1

    def verdict(self, now: float) -> str | None:
        """A reason the run has already failed, or None."""
        if self.late_tbt > self.tbt_limit:
            return f"{self.late_tbt} TBT samples above {self.slo.tbt_s * 1e3:.0f} ms: P99 TBT fails"
        pending = self._pending
        while pending and pending[0].times.first_token is not None:
            pending.popleft()
        waiting_late = 0
        for r in pending:  # arrival order: stop at the first one still within its TTFT bound
            if now - r.times.arrival <= self.slo.ttft_s:
                break
            waiting_late += r.times.first_token is None
        if self.late_ttft + waiting_late > self.ttft_limit:
            return f"{self.late_ttft + waiting_late} requests over {self.slo.ttft_s:.2f} s TTFT: P99 TTFT fails"
        return None
