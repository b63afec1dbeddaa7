"""The discrete-event simulator: arrivals -> global scheduler -> replicas -> batches on a
virtual clock, with request and iteration metrics fed to the shared MetricsCollector."""
from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field

from podserve.bench.runner import fit_to_context
from podserve.bench.workloads import WorkloadRequest
from podserve.config import SchedulerConfig, check_pipeline_microbatches
from podserve.core.batch import ExecutorOutput, ScheduledBatch
from podserve.metrics import MetricsCollector
from podserve.metrics.pipeline import PipelineStats
from podserve.sim import events as E
from podserve.sim.cost_model import CostModel
from podserve.sim.global_scheduler import make_global_scheduler
from podserve.sim.replica import Replica
from podserve.sim.sim_request import SIM_TOKEN_ID, make_request
from podserve.sim.slo_watch import LatencySLO, SLOWatch


@dataclass(frozen=True)
class ClusterConfig:
    """What is deployed: replicas x (tp x pp) GPUs, a policy, and KV geometry."""

    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    num_replicas: int = 1
    tp: int = 1
    pp: int = 1
    pipeline_microbatches: int | None = None
    """Micro-batches in flight per replica with ``pp > 1``: the engine's
    ``ParallelConfig.pipeline_microbatches`` (None = the same default, ``config.pipeline_depth``)."""
    global_scheduler: str = "round_robin"
    block_size: int = 16
    watermark: float = 0.01
    seed: int = 0

    def __post_init__(self):
        check_pipeline_microbatches(self.pipeline_microbatches, self.pp, "ClusterConfig.pipeline_microbatches")

    @property
    def num_gpus(self) -> int:
        return self.num_replicas * self.tp * self.pp


@dataclass
class SimResult:
    """What one simulation produced (the same collector type ``podserve bench`` fills)."""

    collector: MetricsCollector
    wall_s: float
    """Real seconds the simulation took."""
    num_requests: int
    num_iterations: int
    stopped_early: str | None = None
    num_clipped: int = 0


class Simulator:
    """Event loop over a cluster of identical replicas sharing one cost model."""

    def __init__(self, config: ClusterConfig, cost_model: CostModel, num_blocks: int, token_budget=None):
        self.config = config
        self.cost_model = cost_model
        self.replicas = [Replica(i, config.scheduler, cost_model, num_blocks, config.block_size, config.watermark, config.pp,
                                 config.pipeline_microbatches) for i in range(config.num_replicas)]
        if token_budget is None and config.scheduler.tbt_slo is not None:
            from podserve.sim.token_budget import SLOTokenBudget

            token_budget = SLOTokenBudget(cost_model, config.scheduler.tbt_slo)  # the engine's rule, this cost model
        if token_budget is not None:
            for r in self.replicas:
                token_budget.attach(r.scheduler)
        self.router = make_global_scheduler(config.global_scheduler, self.replicas, config.seed)
        self.collector = MetricsCollector()
        self._heap: list[E.Event] = []
        self._seq = itertools.count()
        self.now = 0.0
        self.num_iterations = 0
        self.peak_running = 0
        """Most requests any replica ever had running: below max_num_seqs, the cap never bound."""
        self.watch: SLOWatch | None = None
        self._start_pending: set[int] = set()
        """Replicas with a SCHEDULE event queued at the current instant."""

    def _push(self, t: float, kind: str, payload: tuple = ()) -> None:
        heapq.heappush(self._heap, E.Event(t, E.PRIORITY[kind], next(self._seq), kind, payload))

    # --- handlers ------------------------------------------------------------------------
    def _on_arrival(self, request) -> None:
        replica = self.replicas[self.router.route(request)]
        replica.scheduler.add_request(request)
        if self.watch is not None:
            self.watch.on_arrival(request)
        self._start_soon(replica)

    def _start_soon(self, replica: Replica) -> None:
        """Form the next batch now, or, if more events share this instant (simultaneous
        arrivals, a batch ending as a request arrives), once they are all handled: the
        engine too adds every request that has arrived before it schedules."""
        heap = self._heap
        if heap and heap[0].time == self.now:
            if replica.replica_id not in self._start_pending:
                self._start_pending.add(replica.replica_id)
                self._push(self.now, E.SCHEDULE, (replica,))
            return
        self._try_start(replica)

    def _on_schedule(self, replica: Replica) -> None:
        self._start_pending.discard(replica.replica_id)
        self._try_start(replica)

    def _try_start(self, replica: Replica) -> None:
        now = self.now
        if not replica.can_start(now):
            return
        batch = replica.form_batch(now)
        running = len(replica.scheduler.running)
        if running > self.peak_running:
            self.peak_running = running
        if batch.is_empty:
            return  # idle until an arrival or a finishing batch wakes it
        cost = self.cost_model.iteration_cost(batch)
        if replica.pp == 1:
            end = now + cost.host + cost.stage + cost.last_stage_extra
            replica.stage_free[0] = end
            self._push(end, E.BATCH_END, (replica, batch, now))
        else:
            # The driver's host work (apply, schedule, ship) delays this micro-batch, and stage 0
            # may still be running earlier ones: with more micro-batches than stages it is, and
            # the host time is hidden behind them.
            shipped = now + cost.host
            replica.driver_free = shipped
            begin = max(shipped, replica.stage_free[0])
            end = begin + cost.stage
            replica.stage_free[0] = end
            spans = [(begin, end)]  # each stage's busy span, as the engine's workers report it
            self._push(end, E.STAGE_END, (replica, batch, now, 0, cost, spans))
            self._push(shipped, E.SCHEDULE, (replica,))  # the engine then fills the pipeline up

    def _on_stage_end(self, replica: Replica, batch: ScheduledBatch, start: float, stage: int, cost, spans) -> None:
        nxt = stage + 1
        begin = max(self.now, replica.stage_free[nxt])
        end = begin + cost.stage + (cost.last_stage_extra if nxt == replica.pp - 1 else 0.0)
        replica.stage_free[nxt] = end
        spans.append((begin, end))
        if nxt == replica.pp - 1:
            replica.pipeline.on_micro_batch(start, end, spans)
            self._push(end, E.BATCH_END, (replica, batch, start))
        else:
            self._push(end, E.STAGE_END, (replica, batch, start, nxt, cost, spans))

    def _on_batch_end(self, replica: Replica, batch: ScheduledBatch, start: float) -> None:
        now = self.now
        replica.batch_done(batch)
        output = ExecutorOutput([SIM_TOKEN_ID if s.do_sample else None for s in batch.seqs], now - start)
        updates = replica.scheduler.update(batch, output, now)
        self.collector.on_iteration(batch, start, now)
        self.num_iterations += 1
        if self.watch is not None:
            for u in updates:
                self.watch.on_token(u.request, now)
        self._start_soon(replica)

    # --- driver ----------------------------------------------------------------------------
    def run(self, workload: list[WorkloadRequest], slo: LatencySLO | None = None, prefix: str = "sim") -> SimResult:
        """Simulate ``workload`` to completion (or until ``slo`` certainly fails)."""
        t0 = time.perf_counter()
        max_len = self.config.scheduler.max_model_len
        workload, clipped = fit_to_context(sorted(workload, key=lambda r: r.arrival_time), max_len)
        requests = [make_request(i, w.arrival_time, w.num_prompt_tokens, w.num_output_tokens, prefix)
                    for i, w in enumerate(workload)]
        if slo is not None:
            self.watch = SLOWatch(slo, len(requests), sum(max(w.num_output_tokens - 1, 0) for w in workload))
        for r in requests:
            self._push(r.arrival_time, E.ARRIVAL, (r,))
        stopped = None
        heap = self._heap
        checks = 0
        while heap:
            ev = heapq.heappop(heap)
            self.now = ev.time
            kind = ev.kind
            if kind == E.BATCH_END:
                self._on_batch_end(*ev.payload)
            elif kind == E.ARRIVAL:
                self._on_arrival(*ev.payload)
            elif kind == E.STAGE_END:
                self._on_stage_end(*ev.payload)
            elif kind == E.SCHEDULE:
                self._on_schedule(*ev.payload)
            if self.watch is not None:
                checks += 1
                if checks % 64 == 0 and (stopped := self.watch.verdict(self.now)):
                    break
        if stopped:
            for replica in self.replicas:
                for rid in list(replica.scheduler.requests):
                    replica.scheduler.abort_request(rid)
        for r in requests:
            if r.times.arrival <= self.now or not stopped:
                self.collector.on_request_finished(r)
        if self.config.pp > 1:
            self.collector.pipeline = PipelineStats.combined([r.pipeline for r in self.replicas])
        return SimResult(self.collector, time.perf_counter() - t0, len(requests), self.num_iterations, stopped, clipped)

