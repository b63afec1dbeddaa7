"""One engine replica: an ``AsyncEngine`` inside a Ray actor, streaming each request's deltas.

The class is plain Python; ``launch.py`` wraps it with ``ray.remote`` and the replica's
resources (CPUs, or ``tensor_parallel_size`` GPUs). Its methods are coroutines, so Ray runs it
as an *async actor*: many ``generate`` calls are in flight at once on the actor's event loop
while the engine thread steps the batch, and ``ping`` answers between steps.

``generate`` is a Ray streaming generator. Its first item says whether the engine accepted
the request (or why not: the front end turns that into 400/503 before any response starts);
then one ``Delta`` per engine step that advanced the request. Only deltas cross the process
boundary (a cumulative output would make a request cost O(n^2) bytes); the front end rebuilds
the cumulative ``RequestOutput``. ``ray.cancel`` on the generator (a client that left) cancels
the coroutine, whose ``finally`` aborts the request and frees its KV.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time

from podserve.config import EngineConfig
from podserve.engine.async_engine import AsyncEngine, EngineDead, EngineOverloaded, RequestFailed
from podserve.request import SamplingParams

logger = logging.getLogger("podserve.replica")


@dataclasses.dataclass(frozen=True)
class Accepted:
    """First item of a stream: the engine queued the request."""

    pid: int


@dataclasses.dataclass(frozen=True)
class Delta:
    """One engine step's progress on one request."""

    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str | None


@dataclasses.dataclass(frozen=True)
class ReplicaError:
    """The request failed on the replica; ``kind`` picks the exception the front end raises."""

    kind: str
    """"bad_request" (ValueError), "overloaded", "engine_dead" or "failed" (RequestFailed)."""
    message: str
    retry_after_s: int = 1


@dataclasses.dataclass(frozen=True)
class ReplicaInfo:
    """What the front end needs to know about the model a replica serves."""

    model_name: str
    max_model_len: int
    vocab_size: int
    pid: int
    node_ip: str
    device: str


class ReplicaActor:
    """An engine plus its Prometheus registry, as a Ray async actor.

    Args:
        config: the engine to build (model loads here, in the actor's process).
        replica_id: this replica's index in the front end (for logs).
        served_model_name: the ``model_name`` label of the replica's metrics.
        max_queue_len: ``AsyncEngine`` admission limit (each replica has its own).
        num_threads: torch intra-op threads (= the CPUs Ray gave the actor on CPU).
    """

    def __init__(self, config: EngineConfig, replica_id: int, served_model_name: str | None = None,
                 max_queue_len: int | None = None, num_threads: int | None = None):
        import torch

        from podserve.engine.engine import Engine
        from podserve.entrypoints.openai.prom_metrics import ServerMetrics

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.replica_id = replica_id
        started = time.perf_counter()
        engine = Engine(config)
        engine.freeze_heap()  # the actor serves until it is killed
        self.async_engine = AsyncEngine(engine, max_queue_len=max_queue_len)
        self.metrics = ServerMetrics(self.async_engine, served_model_name or engine.model_name)
        self.async_engine.output_listeners.append(self.metrics.observe)
        self.async_engine.start()
        self.device = config.device
        logger.info("replica %d: %s ready in %.1f s (pid %d)", replica_id, engine.model_name,
                    time.perf_counter() - started, os.getpid())

    # --- control -------------------------------------------------------------------------
    async def info(self) -> ReplicaInfo:
        """Model facts; answering at all means the model is loaded (the front end's readiness check)."""
        import ray

        return ReplicaInfo(self.async_engine.model_name, self.async_engine.max_model_len,
                           self.async_engine.vocab_size, os.getpid(),
                           ray.util.get_node_ip_address(), self.device)

    async def tokenizer(self):
        """The model's tokenizer (pickled to the front end, which tokenizes prompts)."""
        return self.async_engine.tokenizer

    async def ping(self) -> dict:
        """Health check: the engine stats snapshot plus whether the engine loop runs."""
        stats = dataclasses.asdict(self.async_engine.stats)
        stats["is_running"] = self.async_engine.is_running
        return stats

    async def metric_families(self) -> list:
        """This replica's Prometheus metric families (the front end adds a ``replica`` label)."""
        return list(self.metrics.registry.collect())

    # --- requests ------------------------------------------------------------------------
    async def generate(self, prompt: list[int] | str, params: SamplingParams, request_id: str, age_s: float = 0.0):
        """Stream ``Accepted`` (or one ``ReplicaError``), then a ``Delta`` per step until finished.

        ``age_s`` is how long the request already waited in the front end, so TTFT and queue
        time in this replica's metrics count from the HTTP arrival (clocks of different hosts
        are never compared).
        """
        arrival = time.perf_counter() - max(0.0, age_s)
        try:
            stream = await self.async_engine.add_request(prompt, params, request_id, arrival)
        except EngineOverloaded as e:
            yield ReplicaError("overloaded", str(e), e.retry_after_s)
            return
        except EngineDead as e:
            yield ReplicaError("engine_dead", str(e))
            return
        except ValueError as e:
            yield ReplicaError("bad_request", str(e))
            return
        try:
            yield Accepted(os.getpid())
            async for out in stream:
                yield Delta(out.delta_token_ids, out.delta_text, out.finished, out.outputs[0].finish_reason)
        except RequestFailed as e:
            yield ReplicaError("failed", str(e))
        except EngineDead as e:
            yield ReplicaError("engine_dead", str(e))
        finally:
            stream.close()  # cancelled (the client left) or failed: abort, freeing its KV now
