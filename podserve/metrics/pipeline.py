"""Pipeline bubbles: how much of the time a pipeline had work in flight each stage sat idle.

Fed one record per micro-batch (when it was submitted, when its tokens came back, and
each stage's busy span). The *active* time is the union of the submitted-to-returned
intervals: time with at least one micro-batch in the pipeline. Then

    bubble_fraction = 1 - sum(stage busy time) / (num_stages * active time)

is the share of stage-time spent waiting (for activations, for the engine to schedule,
for a slow neighbour). One stage that computes back-to-back scores 0; a pipeline of
``pp`` stages that only ever holds one micro-batch scores about ``1 - 1/pp``.
"""
from __future__ import annotations


class PipelineStats:
    """Per-stage busy time and active windows of a run (pure Python: engine and simulator)."""

    def __init__(self, num_stages: int):
        self.num_stages = num_stages
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far (e.g. after a warm-up)."""
        self.stage_busy = [0.0] * self.num_stages
        self.intervals: list[tuple[float, float]] = []
        self.num_micro_batches = 0

    def on_micro_batch(self, submitted: float, returned: float, spans: list[tuple[float, float]]) -> None:
        """Record one micro-batch: its time in the pipeline and each stage's busy (start, end)."""
        for i, (start, end) in enumerate(spans):
            self.stage_busy[i] += max(0.0, end - start)
        self.intervals.append((submitted, returned))
        self.num_micro_batches += 1

    def active_time(self) -> float:
        """Length of the union of the in-pipeline intervals."""
        total, end = 0.0, float("-inf")
        for a, b in sorted(self.intervals):
            if b <= end:
                continue
            total += b - max(a, end)
            end = b
        return total

    def summary(self) -> dict:
        """num_stages, num_micro_batches, active_s, stage_busy_s, stage_utilization, bubble_fraction."""
        return pipeline_summary(self.num_stages, self.num_micro_batches, self.active_time(), self.stage_busy)

    @staticmethod
    def combined(stats: list["PipelineStats"]) -> dict:
        """The summary of several pipelines (replicas): stage busy and active times summed,
        so the bubble fraction is the share of all their stage-time spent idle."""
        if len(stats) == 1:
            return stats[0].summary()
        num_stages = stats[0].num_stages
        busy = [sum(s.stage_busy[i] for s in stats) for i in range(num_stages)]
        return {**pipeline_summary(num_stages, sum(s.num_micro_batches for s in stats),
                                   sum(s.active_time() for s in stats), busy),
                "num_replicas": len(stats)}


def pipeline_summary(num_stages: int, num_micro_batches: int, active: float, stage_busy: list[float]) -> dict:
    """The summary's numbers from the stage busy times and the time with work in flight."""
    return {
        "num_stages": num_stages,
        "num_micro_batches": num_micro_batches,
        "active_s": active,
        "stage_busy_s": list(stage_busy),
        "stage_utilization": [b / active if active > 0 else None for b in stage_busy],
        "bubble_fraction": 1.0 - sum(stage_busy) / (num_stages * active) if active > 0 else None,
    }
