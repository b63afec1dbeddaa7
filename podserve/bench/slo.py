"""Serving SLOs: P99 TBT and P50 scheduling delay, checked at the end and during a run."""
from __future__ import annotations

from dataclasses import dataclass

from podserve.bench.workloads import WorkloadRequest
from podserve.request import Request


@dataclass(frozen=True)
class SLO:
    """A load passes if P99 TBT <= ``tbt_s`` and P50 scheduling delay <= ``delay_s``."""

    tbt_s: float
    delay_s: float = 2.0

    def check(self, summary: dict) -> bool:
        """Verdict on a ``MetricsCollector.summary()`` of a complete run."""
        tbt, delay = summary["tbt"]["p99"], summary["scheduling_delay"]["p50"]
        return tbt is not None and delay is not None and tbt <= self.tbt_s and delay <= self.delay_s


class SLOWatch:
    """Stop rule for ``run_workload``: ends a run once its SLO verdict can only be a fail.

    With N samples in all, more than 1% + 2 samples above the bound already put the
    (linearly interpolated) P99 above it, and more than 50% + 2 the P50; later samples
    cannot bring it back. This keeps overloaded capacity probes short.
    """

    def __init__(self, slo: SLO, workload: list[WorkloadRequest]):
        self.slo = slo
        self.num_tbt = sum(max(r.num_output_tokens - 1, 0) for r in workload)
        self.num_requests = len(workload)
        self._seen: dict[str, int] = {}
        self._late_tbt = 0

    def __call__(self, now: float, requests: list[Request]) -> str | None:
        late_delay = 0
        for r in requests:
            t = r.times
            n = len(t.token_times)
            for i in range(max(self._seen.get(r.request_id, 1), 1), n):
                self._late_tbt += t.token_times[i] - t.token_times[i - 1] > self.slo.tbt_s
            self._seen[r.request_id] = n
            waited = (t.first_scheduled if t.first_scheduled is not None else now) - t.arrival
            late_delay += waited > self.slo.delay_s
        if self._late_tbt >= 0.01 * self.num_tbt + 2:
            return f"{self._late_tbt} of {self.num_tbt} TBT samples above {self.slo.tbt_s:.3f}s: P99 TBT fails"
        if late_delay >= 0.5 * self.num_requests + 2:
            return f"{late_delay} of {self.num_requests} requests queued over {self.slo.delay_s:.2f}s: P50 delay fails"
        return None

