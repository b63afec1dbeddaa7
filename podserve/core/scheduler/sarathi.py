"""Sarathi-Serve stall-free batching (and the original decode-maximal Sarathi)."""
from __future__ import annotations

from podserve.core.batch import ScheduledBatch
from podserve.core.scheduler.base import Scheduler
from podserve.request import Request


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
        decodes: list[tuple[Request, int]] = []
        prefills: list[tuple[Request, int]] = []
        max_prefills = 1 if self.config.decode_maximal else None

        # 1. One token for every running decode; preempt the newest requests on KV shortage.
        for request in list(self.running):
            if request.is_prefill or request not in self.running or budget == 0:
                continue
            if self._reserve_decode(request, batch):
                decodes.append((request, 1))
                budget -= 1

        # 2. The next chunk of requests whose prefill is under way (KV already reserved).
        for request in self.running:
            if not request.is_prefill or budget == 0 or _full(prefills, max_prefills):
                continue
            chunk = min(request.num_tokens - request.num_computed_tokens, budget)
            prefills.append((request, chunk))
            budget -= chunk

        # 3. New requests, FCFS; KV for the whole prompt is reserved on admission so a
        #    chunked prefill never stalls half-way.
        while self.waiting and budget > 0 and not _full(prefills, max_prefills):
            request = self.waiting[0]
            if len(self.running) >= self.config.max_num_seqs:
                break
            if not self.kv.can_admit(request, request.num_tokens):
                break
            self.kv.allocate(request, request.num_tokens)
            self._admit(request)
            chunk = min(request.num_tokens, budget)
            prefills.append((request, chunk))
            budget -= chunk
        return decodes, prefills


def _full(prefills: list, limit: int | None) -> bool:
    return limit is not None and len(prefills) >= limit
