"""Orca's iteration-level batching with whole prompts."""
from __future__ import annotations

from podserve.core.batch import ScheduledBatch
from podserve.core.scheduler.base import Scheduler


class OrcaScheduler(Scheduler):
    """Iteration-level batching: every running request decodes each iteration and new
    whole prompts join the same batch FCFS while ``max_num_seqs`` and the token cap
    (decodes plus prompt tokens) allow. KV for the full ``max_model_len`` is reserved on
    admission, as Orca does without knowing the output length, so it never preempts
    (reserving prompt + max_tokens would admit more requests; we follow the paper).
    Source: Yu et al., "Orca: A Distributed Serving System for Transformer-Based
    Generative Models" (OSDI 2022), as configured in the Sarathi-Serve evaluation.
    """

    name = "orca"

    def __init__(self, config, kv):
        super().__init__(config, kv)
        self._check_whole_prompts_fit()
        if kv.blocks_needed(config.max_model_len) > kv.num_blocks - kv.watermark_blocks:
            raise ValueError(
                f"scheduler 'orca' reserves KV for max_model_len={config.max_model_len} tokens per "
                f"request, more than the cache holds above its watermark "
                f"({kv.num_blocks - kv.watermark_blocks} blocks of {kv.block_size})")

    def _schedule(self, batch: ScheduledBatch):
        decodes = []
        for request in self.running:
            # The up-front reservation covers every position: allocate() only checks it
            # (and raises, rather than preempting, if that invariant were ever broken).
            self.kv.allocate(request, request.num_computed_tokens + 1)
            decodes.append((request, 1))
        budget = self.config.token_cap - len(decodes)
        prefills = self._admit_whole_prompts(budget, lambda r: self.config.max_model_len)
        return decodes, prefills
