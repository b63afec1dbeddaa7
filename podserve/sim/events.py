"""Simulation events. Each carries its time and knows which handler of the Simulator runs it.

Ordered by (time, kind priority, sequence number): at equal times, batch ends are
handled before schedule attempts so a finishing batch frees its KV first, and before
arrivals so the freed capacity is visible to the request that arrives at that instant.
"""
from __future__ import annotations

from typing import NamedTuple


class Event(NamedTuple):
    """A tuple, so the heap compares events in C; ``seq`` is unique, so ``kind`` and
    ``payload`` are never compared."""

    time: float
    priority: int
    seq: int
    kind: str
    payload: tuple = ()


BATCH_END, STAGE_END, ARRIVAL, SCHEDULE = "batch_end", "stage_end", "arrival", "schedule"
PRIORITY = {BATCH_END: 0, STAGE_END: 1, ARRIVAL: 2, SCHEDULE: 3}
"""A batch leaves its last stage (tokens are sampled, requests advance); a pipeline stage
finishes a micro-batch; a request arrives; a replica forms its next batch (queued only when
other events share the instant, so that it sees all of them, as the engine would)."""
