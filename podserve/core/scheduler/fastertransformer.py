"""FasterTransformer's request-level (static) batching."""
from __future__ import annotations

from podserve.core.batch import ScheduledBatch
from podserve.core.scheduler.base import Scheduler


class FasterTransformerScheduler(Scheduler):
    """Request-level batching: a batch of whole prompts is admitted FCFS (up to
    ``max_num_seqs`` and the token cap), then decodes together until every member has
    finished; only an empty batch admits new requests. KV for the full ``max_model_len``
    is reserved per request, like FasterTransformer's static buffers, so it never preempts.
    Source: NVIDIA FasterTransformer, the request-level baseline of Orca (OSDI 2022)
    and Sarathi-Serve (OSDI 2024).
    """

    name = "fastertransformer"

    def __init__(self, config, kv):
        super().__init__(config, kv)
        self._check_whole_prompts_fit()
        if kv.blocks_needed(config.max_model_len) > kv.num_blocks - kv.watermark_blocks:
            raise ValueError(
                f"scheduler 'fastertransformer' reserves KV for max_model_len={config.max_model_len} "
                f"tokens per request, more than the cache holds above its watermark "
                f"({kv.num_blocks - kv.watermark_blocks} blocks of {kv.block_size})")

    def _schedule(self, batch: ScheduledBatch):
        if self.running:
            decodes = []
            for request in self.running:
                self.kv.allocate(request, request.num_computed_tokens + 1)  # already reserved
                decodes.append((request, 1))
            return decodes, []
        prefills = self._admit_whole_prompts(self.config.token_cap, lambda r: self.config.max_model_len)
        return [], prefills
