"""Clocks a benchmark can run the engine on: wall time, or the CPU time of the thread that
steps the engine (what one dedicated core would measure)."""
from __future__ import annotations

import time


class ThreadCPUClock:
    """Seconds of the calling thread's CPU time, plus idle gaps skipped on purpose.

    On a shared machine, wall-clock timings include other processes' time slices: the same
    iteration can take twice as long a minute later. This clock counts only the work of
    the thread that reads it (run torch with one thread, so the model's work is on it), and
    ``advance_to`` jumps over the idle time a benchmark would otherwise sleep through. It is
    what the engine would take alone on one core; other tenants still slow it through the
    shared caches and memory bandwidth, but no longer by descheduling it.
    """

    def __init__(self):
        self._offset = 0.0

    def __call__(self) -> float:
        return time.thread_time() + self._offset

    def advance_to(self, t: float) -> None:
        """Let time pass without work until ``t`` (no-op if ``t`` is already past)."""
        now = self()
        if t > now:
            self._offset += t - now


def make_clock(name: str):
    """``"wall"`` (time.perf_counter) or ``"cpu"`` (a new ThreadCPUClock)."""
    if name == "wall":
        return time.perf_counter
    if name == "cpu":
        return ThreadCPUClock()
    raise ValueError(f"clock {name!r}: choose wall or cpu")
