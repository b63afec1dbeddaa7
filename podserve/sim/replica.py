"""One simulated replica: the engine's own scheduler and KV accounting, with pipeline stages.

With ``pp`` stages, up to ``microbatches`` micro-batches are in flight (the engine's
``ParallelConfig.pipeline_microbatches`` and default, ``config.pipeline_depth``). As in the
engine, the driver forms the next one as soon as there is room and it has finished its host
work for the previous one; stage 0 starts it once free, so with more micro-batches than
stages the host time overlaps stage 0's work. Requests of in-flight micro-batches are hidden
from the scheduler while it builds the next one (their progress is not applied until their
batch leaves the last stage), so no request is scheduled twice; this also means
``max_num_seqs`` bounds the requests of each micro-batch rather than of the whole pipeline,
as in Sarathi's PP. The rule is ``podserve.core.inflight.InFlightBatches``, which the
engine's pipeline uses too.
"""
from __future__ import annotations

from podserve.config import SchedulerConfig, pipeline_depth
from podserve.core.batch import ScheduledBatch
from podserve.core.inflight import InFlightBatches
from podserve.core.kv.paged import BlockManager
from podserve.core.scheduler import make_scheduler
from podserve.metrics.pipeline import PipelineStats
from podserve.sim.cost_model import CostModel


class Replica:
    """Scheduler + BlockManager + cost model + pipeline-stage clocks of one replica."""

    def __init__(self, replica_id: int, scheduler_config: SchedulerConfig, cost_model: CostModel,
                 num_blocks: int, block_size: int = 16, watermark: float = 0.01, pp: int = 1,
                 microbatches: int | None = None):
        self.replica_id = replica_id
        self.kv = BlockManager(num_blocks, block_size, watermark)
        self.scheduler = make_scheduler(scheduler_config, self.kv)
        self.cost_model = cost_model
        self.pp = pp
        self.microbatches = pipeline_depth(pp, microbatches)
        """Micro-batches in flight at most (1 without pipeline stages)."""
        self.stage_free = [0.0] * pp
        """Virtual time at which each pipeline stage finishes the micro-batches it was given."""
        self.driver_free = 0.0
        """Virtual time at which the driver has shipped the last micro-batch it formed (pp > 1)."""
        self.inflight = InFlightBatches(self.microbatches)
        """Micro-batches between the driver and the end of the last stage."""
        self.pipeline = PipelineStats(pp)
        """Each stage's busy time and the in-pipeline windows (bubble fraction), pp > 1."""

    @property
    def num_outstanding(self) -> int:
        """Requests queued or running here (what least-outstanding routing compares)."""
        return len(self.scheduler.requests)

    @property
    def num_inflight(self) -> int:
        return self.inflight.num_batches

    def can_start(self, now: float) -> bool:
        """Without stages: the replica is idle. With stages: the pipeline has room for another
        micro-batch and the driver is free (stage 0 may still be busy: it queues)."""
        if self.pp == 1:
            return self.inflight.num_batches < 1 and self.stage_free[0] <= now
        return self.inflight.num_batches < self.microbatches and self.driver_free <= now

    def form_batch(self, now: float) -> ScheduledBatch:
        """Ask the scheduler for the next batch (empty if nothing can run now)."""
        batch = self.inflight.schedule(self.scheduler, now)
        if not batch.is_empty:
            self.inflight.add(batch)
        return batch

    def batch_done(self, batch: ScheduledBatch) -> None:
        """Forget ``batch`` as in flight (call before applying its update)."""
        self.inflight.remove(batch)
