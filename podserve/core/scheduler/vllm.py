"""vLLM's original prefill-first scheduler."""
from __future__ import annotations

from podserve.core.batch import ScheduledBatch
from podserve.core.scheduler.base import Scheduler


class VLLMScheduler(Scheduler):
    """Prefill-first batching: admit whole prompts FCFS while their tokens fit
    ``max_num_batched_tokens`` and ``max_num_seqs``; an iteration that admits any prompt
    runs prefills only, otherwise every running request decodes. On KV exhaustion the
    newest requests are preempted and later recomputed.
    Source: Kwon et al., "Efficient Memory Management for Large Language Model Serving
    with PagedAttention" (SOSP 2023), the vLLM v0 scheduler (the Sarathi-Serve baseline).
    """

    name = "vllm"

    def __init__(self, config, kv):
        super().__init__(config, kv)
        self._check_whole_prompts_fit()

    def _schedule(self, batch: ScheduledBatch):
        # New prompts pause every ongoing decode: this is the generation stall that
        # Sarathi-Serve removes. KV covers the prompt only; decodes grow it block by block.
        prefills = self._admit_whole_prompts(self.config.token_cap, lambda r: r.num_tokens)
        if prefills:
            return [], prefills
        return self._schedule_decodes(batch, self.config.token_cap), []
