"""Scheduling policies, all driven by the engine and the simulator alike."""
from __future__ import annotations

from podserve.config import SchedulerConfig
from podserve.core.kv.paged import BlockManager
from podserve.core.scheduler.base import RequestUpdate, Scheduler
from podserve.core.scheduler.fastertransformer import FasterTransformerScheduler
from podserve.core.scheduler.orca import OrcaScheduler
from podserve.core.scheduler.sarathi import SarathiScheduler
from podserve.core.scheduler.simple_chunking import SimpleChunkingScheduler
from podserve.core.scheduler.vllm import VLLMScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls
    for cls in (SarathiScheduler, VLLMScheduler, OrcaScheduler, FasterTransformerScheduler, SimpleChunkingScheduler)
}


def make_scheduler(config: SchedulerConfig, kv: BlockManager) -> Scheduler:
    """Instantiate the policy named by ``config.policy``."""
    try:
        cls = SCHEDULERS[config.policy]
    except KeyError:
        raise ValueError(f"unknown scheduler {config.policy!r}; choose one of {', '.join(sorted(SCHEDULERS))}") from None
    return cls(config, kv)


__all__ = [
    "SCHEDULERS", "FasterTransformerScheduler", "OrcaScheduler", "RequestUpdate", "SarathiScheduler",
    "Scheduler", "SimpleChunkingScheduler", "VLLMScheduler", "make_scheduler",
]
