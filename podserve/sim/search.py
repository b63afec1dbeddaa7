"""Configuration search: capacity (highest Poisson QPS within P99 TTFT and P99 TBT SLOs)
of every deployment in a grid, found by bisection in simulation, run in parallel over
local processes or a Ray cluster."""
from __future__ import annotations

import functools
import itertools
import time
from dataclasses import asdict, dataclass, replace

from podserve.bench.capacity import Probe, find_capacity
from podserve.bench.workloads import WorkloadConfig, WorkloadRequest, generate
from podserve.config import SchedulerConfig, check_pipeline_microbatches, microbatches_of
from podserve.sim.slo_watch import LatencySLO

CHUNKED = ("sarathi", "simple-chunking")
"""Policies for which chunk_size is a knob (the others batch whole prompts)."""


@dataclass(frozen=True)
class SearchPoint:
    """One deployment to evaluate."""

    model: str
    profile: str
    tp: int
    pp: int
    num_replicas: int
    scheduler: str
    chunk_size: int
    max_num_seqs: int
    tbt_budget: bool = False
    """Sarathi with the SLO-aware token budget (chunk_size is then only the cap)."""
    pipeline_microbatches: int | None = None
    """Micro-batches in flight with ``pp > 1`` (``ParallelConfig.pipeline_microbatches``);
    None = the engine's default."""

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.num_replicas

    def label(self) -> str:
        sched = self.scheduler + ("+slo-budget" if self.tbt_budget else f"/c{self.chunk_size}" if self.scheduler in CHUNKED else "")
        pp = f"pp{self.pp}" + (f"/mb{self.pipeline_microbatches}" if self.pipeline_microbatches is not None else "")
        return f"{self.model}@{self.profile} tp{self.tp} {pp} x{self.num_replicas} {sched} seqs{self.max_num_seqs}"


def grid(models, profiles, tps, pps, replicas, schedulers, chunk_sizes, max_num_seqs, tbt_budget: bool = False,
         max_gpus: int | None = None, microbatches: tuple[str, ...] = ("default",)) -> list[SearchPoint]:
    """Every combination; chunk sizes only vary for chunked policies, micro-batches in flight
    (``microbatches``: ``default``, ``pp+K`` or integers, see ``config.microbatches_of``) only
    with pipeline stages."""
    points = []
    for m, p, tp, pp, r, s, seqs in itertools.product(models, profiles, tps, pps, replicas, schedulers, max_num_seqs):
        if max_gpus is not None and tp * pp * r > max_gpus:
            continue
        depths = dict.fromkeys(microbatches_of(spec, pp) for spec in microbatches) if pp > 1 else {None: None}
        for mb in depths:
            if mb is not None:
                check_pipeline_microbatches(mb, pp, "--pipeline-microbatches")
            for c in (chunk_sizes if s in CHUNKED else chunk_sizes[-1:]):
                points.append(SearchPoint(m, p, tp, pp, r, s, c, seqs, pipeline_microbatches=mb))
            if tbt_budget and s == "sarathi":
                points.append(SearchPoint(m, p, tp, pp, r, s, max(chunk_sizes), seqs, tbt_budget=True,
                                          pipeline_microbatches=mb))
    return points


@dataclass
class SearchTask:
    """Everything a worker needs (picklable: it crosses process and Ray boundaries)."""

    point: SearchPoint
    workload: WorkloadConfig
    slo: LatencySLO
    tolerance: float = 0.1
    max_probes: int = 12
    qps_start: float = 1.0
    max_model_len: int | None = None
    more_max_num_seqs: tuple[int, ...] = ()
    """Larger batch caps of the same deployment, evaluated after ``point`` in this task: when
    no probe ever reached the smaller cap, a larger one changes no scheduling decision, so
    its result is the same and is not simulated again."""


@functools.lru_cache(maxsize=8)
def _fitted(profile_spec: str, model: str):
    """(fitted profile, model config, max_model_len default) once per worker process:
    deriving and hashing a profile costs more than a probe."""
    from podserve.sim.cache import fitted_profile
    from podserve.sim.deployment import default_max_model_len, model_shape, resolve_profile

    profile = resolve_profile(profile_spec, model)
    _, config = model_shape(model, profile)
    return fitted_profile(profile), config, default_max_model_len(config, profile)


@functools.lru_cache(maxsize=8)
def _base_workload(workload: WorkloadConfig) -> tuple:
    """The workload at 1 QPS. Poisson gaps are seeded standard exponentials divided by the
    rate, so the workload at ``qps`` is this one with arrival times divided by ``qps``:
    every probe sees the same requests, and the trace is read once."""
    return tuple(generate(replace(workload, qps=1.0, arrival="poisson")))


def group_tasks(points: list[SearchPoint], **task_fields) -> list[SearchTask]:
    """One task per deployment, its max_num_seqs values ascending in ``more_max_num_seqs``
    (SLO-budget points stay alone: their budget looks at the free batch slots)."""
    groups: dict[SearchPoint, list[int]] = {}
    for p in points:
        if p.tbt_budget:
            groups[p] = [p.max_num_seqs]
        else:
            groups.setdefault(replace(p, max_num_seqs=0), []).append(p.max_num_seqs)
    tasks = []
    for key, seqs in groups.items():
        seqs = sorted(set(seqs))
        tasks.append(SearchTask(replace(key, max_num_seqs=seqs[0]), more_max_num_seqs=tuple(seqs[1:]), **task_fields))
    return tasks


def evaluate_group(task: SearchTask) -> list[dict]:
    """Results of ``task.point`` and of each larger cap in ``task.more_max_num_seqs``."""
    results = [evaluate(task)]
    for seqs in task.more_max_num_seqs:
        prev = results[-1]
        point = replace(task.point, max_num_seqs=seqs)
        if prev.get("feasible") and prev["peak_running"] < prev["point"]["max_num_seqs"]:
            results.append({**prev, "point": asdict(point), "label": point.label(), "wall_s": 0.0,
                            "same_as": prev["label"]})
        else:
            results.append(evaluate(replace(task, point=point, more_max_num_seqs=())))
    return results


def evaluate(task: SearchTask) -> dict:
    """Capacity of one deployment (runs in a worker). Infeasible ones report why."""
    from podserve.sim.cost_model import CostModel
    from podserve.sim.memory import num_kv_blocks
    from podserve.sim.simulator import ClusterConfig, Simulator
    from podserve.sim.token_budget import SLOTokenBudget

    t0 = time.perf_counter()
    pt = task.point
    out = {"point": asdict(pt), "label": pt.label(), "num_gpus": pt.num_gpus}
    try:
        fitted, config, default_len = _fitted(pt.profile, pt.model)
        max_len = task.max_model_len or default_len
        sched = SchedulerConfig(policy=pt.scheduler, chunk_size=pt.chunk_size, max_num_seqs=pt.max_num_seqs,
                                max_model_len=max_len)
        cost = CostModel(fitted, config, pt.tp, pt.pp)
        blocks = num_kv_blocks(config, fitted.meta, tp=pt.tp, pp=pt.pp)
        cluster = ClusterConfig(scheduler=sched, num_replicas=pt.num_replicas, tp=pt.tp, pp=pt.pp,
                                pipeline_microbatches=pt.pipeline_microbatches, global_scheduler="round_robin")
        Simulator(cluster, cost, blocks)  # validates the policy's limits before any probe
    except ValueError as e:
        return {**out, "feasible": False, "reason": str(e), "wall_s": time.perf_counter() - t0}

    best: dict = {}
    peak = [0]
    # The same number of requests per replica: a two-replica probe runs as long as a one-replica one.
    base = _base_workload(replace(task.workload, num_requests=task.workload.num_requests * pt.num_replicas))

    def probe(qps: float) -> Probe:
        budget = SLOTokenBudget(cost, task.slo.tbt_s) if pt.tbt_budget else None
        sim = Simulator(cluster, cost, blocks, token_budget=budget)
        workload = [WorkloadRequest(w.arrival_time / qps, w.num_prompt_tokens, w.num_output_tokens) for w in base]
        res = sim.run(workload, slo=task.slo)
        peak[0] = max(peak[0], sim.peak_running)
        s = res.collector.summary()
        passed = res.stopped_early is None and task.slo.check(s)
        if passed and qps >= best.get("qps", 0.0):
            best.update(qps=qps, summary=s)
        return Probe(qps, passed, s["tbt"]["p99"], s["scheduling_delay"]["p50"], res.wall_s, res.stopped_early)

    try:
        result = find_capacity(probe, qps_start=task.qps_start, tolerance=task.tolerance, max_probes=task.max_probes)
    except ValueError as e:  # e.g. a trace prompt longer than this deployment's whole KV cache
        return {**out, "feasible": False, "reason": str(e), "wall_s": time.perf_counter() - t0}
    s = best.get("summary")
    return {
        **out, "feasible": True, "capacity_qps": result.capacity_qps, "bracket": list(result.bracket),
        "capacity_per_gpu": result.capacity_qps / pt.num_gpus, "num_probes": len(result.probes),
        "kv_blocks_per_replica": blocks, "peak_running": peak[0],
        "p99_ttft_s": s["ttft"]["p99"] if s else None, "p99_tbt_s": s["tbt"]["p99"] if s else None,
        "slo_margins": task.slo.margins(s) if s else None, "wall_s": time.perf_counter() - t0,
    }


def run_local(tasks: list[SearchTask], workers: int, on_result) -> list[dict]:
    """Evaluate tasks over ``workers`` processes (1: in this process), reporting each result."""
    results = []
    if workers <= 1:
        for t in tasks:
            for r in evaluate_group(t):
                results.append(r)
                on_result(r)
        return results
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(evaluate_group, t) for t in tasks]
        for f in as_completed(futures):
            for r in f.result():
                results.append(r)
                on_result(r)
    return results


def run_ray(tasks: list[SearchTask], address: str, on_result) -> list[dict]:
    """Evaluate tasks as Ray tasks on the cluster at ``address``."""
    try:
        import ray
    except ImportError:
        raise ValueError("--ray-address needs Ray: pip install 'ray[default]' (or drop --ray-address to use local processes)") from None
    ray.init(address=address, ignore_reinit_error=True)
    remote = ray.remote(evaluate_group)
    pending = [remote.remote(t) for t in tasks]
    results = []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for r in ray.get(done[0]):
            results.append(r)
            on_result(r)
    return results


def pareto_front(results: list[dict], key_x: str = "p99_tbt_s", key_y: str = "capacity_per_gpu") -> list[dict]:
    """Feasible results not dominated in (lower ``key_x``, higher ``key_y``)."""
    ok = sorted((r for r in results if r.get("feasible") and r.get("capacity_qps") and r.get(key_x) is not None),
                key=lambda r: (r[key_x], -r[key_y]))
    front, best_y = [], -1.0
    for r in ok:
        if r[key_y] > best_y:
            front.append(r)
            best_y = r[key_y]
    return front
