"""Sarathi-Serve stall-free batching (and the original decode-maximal Sarathi)."""
from __future__ import annotations

from podserve.core.batch import ScheduledBatch
from podserve.core.scheduler.base import Scheduler


class SarathiScheduler(Scheduler):
    """Stall-free hybrid batching under a per-iteration token budget (``chunk_size``).

    Every running decode gets its token first, then partially prefilled requests get
    their next chunk, then waiting requests are admitted FCFS, the last prefill chunked
    to fit the budget; new prompts never pause ongoing decodes. With ``decode_maximal``
    at most one prefill chunk joins the decodes, as in the original Sarathi.
    Sources: Agrawal et al., "Taming Throughput-Latency Tradeoff in LLM Inference with
    Sarathi-Serve" (OSDI 2024); "SARATHI: Efficient LLM Inference by Piggybacking
    Decodes with Chunked Prefills" (arXiv 2308.16369).
    """

    name = "sarathi"

    def _schedule(self, batch: ScheduledBatch):
        budget = self.config.chunk_size
        max_prefills = 1 if self.config.decode_maximal else None
        # 1. One token for every running decode; preempt the newest requests on KV shortage.
        decodes = self._schedule_decodes(batch, budget)
        # 2-3. Chunks of prefills under way, then new requests, in what budget remains.
        prefills = self._schedule_chunks(budget - len(decodes), max_prefills)
        return decodes, prefills
