"""Chunked prefills without piggybacking: the ablation of Sarathi-Serve."""
from __future__ import annotations

from podserve.core.batch import ScheduledBatch
from podserve.core.scheduler.base import Scheduler


class SimpleChunkingScheduler(Scheduler):
    """Alternates prefill-only iterations (chunks under ``chunk_size``: prefills under way,
    then new requests FCFS) with decode-only iterations (every running decode). When one
    kind has no work, the other runs, so chunking bounds each iteration's length but
    decodes still wait out every prefill iteration.
    Source: the "chunked prefills only" ablation of Sarathi-Serve (OSDI 2024, sec. 5.4).
    """

    name = "simple-chunking"

    def __init__(self, config, kv):
        super().__init__(config, kv)
        self._last_was_prefill = False

    def _schedule(self, batch: ScheduledBatch):
        budget = self.config.chunk_size
        if self._last_was_prefill:
            decodes = self._schedule_decodes(batch, budget)
            if decodes:
                self._last_was_prefill = False
                return decodes, []
        prefills = self._schedule_chunks(budget)
        if prefills:
            self._last_was_prefill = True
            return [], prefills
        self._last_was_prefill = False
        return self._schedule_decodes(batch, budget), []
