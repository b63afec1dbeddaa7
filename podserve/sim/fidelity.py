"""Fidelity: run one workload through the real engine and through the simulator, compare.

Both runs report to ``MetricsCollector``, so the comparison is over identical summaries:
P50 and P90 of TTFT, TBT and E2E, plus request throughput.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from podserve.bench.workloads import WorkloadRequest
from podserve.config import EngineConfig

METRICS = ("ttft", "tbt", "e2e")
PERCENTILES = ("p50", "p90")


@dataclass
class FidelityReport:
    rows: list[dict]
    """One per compared number: metric, engine, simulated, relative error."""
    engine_summary: dict
    sim_summary: dict
    variants: dict[str, "FidelityReport"] = field(default_factory=dict)
    """The same engine run against other simulator set-ups (ablations), by name."""

    @property
    def median_abs_error(self) -> float:
        return float(np.median([abs(r["error"]) for r in self.rows]))

    def format(self) -> str:
        lines = [f"{'metric':<22}{'engine':>12}{'simulated':>12}{'error':>9}"]
        for r in self.rows:
            lines.append(f"{r['metric']:<22}{r['engine']:>12.4f}{r['simulated']:>12.4f}{r['error']:>+9.1%}")
        lines.append(f"median absolute error: {self.median_abs_error:.1%}")
        for name, v in self.variants.items():
            errors = ", ".join(f"{r['metric'].split(' (')[0]} {r['error']:+.1%}" for r in v.rows)
            lines.append(f"  {name}: median absolute error {v.median_abs_error:.1%} ({errors})")
        return "\n".join(lines)


def compare(engine_summary: dict, sim_summary: dict) -> FidelityReport:
    rows = []
    for m in METRICS:
        for p in PERCENTILES:
            e, s = engine_summary[m][p], sim_summary[m][p]
            if e:
                rows.append({"metric": f"{m} {p} (s)", "engine": e, "simulated": s, "error": (s - e) / e})
    e, s = engine_summary["throughput_requests_per_s"], sim_summary["throughput_requests_per_s"]
    rows.append({"metric": "throughput (req/s)", "engine": e, "simulated": s, "error": (s - e) / e})
    return FidelityReport(rows, engine_summary, sim_summary)


def run_engine(engine_config: EngineConfig, workload: list[WorkloadRequest], seed: int = 0, clock: str = "wall"):
    """The real engine at the workload's arrival times (podserve bench's runner), timed
    on ``clock`` (``podserve.bench.clock.make_clock``)."""
    from podserve.bench.clock import make_clock
    from podserve.bench.runner import run_workload
    from podserve.engine.engine import Engine

    engine = Engine(engine_config)
    engine.clock = make_clock(clock)
    # As a server runs (and as the profile's engine phase ran): the start-up heap frozen,
    # so no full garbage collection (~100 ms on a test process's heap) lands in the run.
    engine.freeze_heap()
    try:
        return engine, run_workload(engine, workload, seed=seed)
    finally:
        engine.unfreeze_heap()


def run_sim(fitted, engine, workload: list[WorkloadRequest]):
    """The simulator with the engine's own scheduler config and KV block count."""
    from podserve.sim.cost_model import CostModel
    from podserve.sim.simulator import ClusterConfig, Simulator

    cfg = engine.config
    cluster = ClusterConfig(scheduler=cfg.scheduler, block_size=cfg.cache.block_size, watermark=cfg.cache.watermark)
    sim = Simulator(cluster, CostModel(fitted, engine.model_config), engine.kv.num_blocks)
    return sim.run(workload)


def median_summary(summaries: list[dict]) -> dict:
    """Per compared number (``METRICS`` x ``PERCENTILES``, throughput), the median over
    several runs of one workload; the rest from the first run."""
    out = {**summaries[0]}
    for m in METRICS:
        out[m] = {**summaries[0][m], **{p: float(np.median([s[m][p] for s in summaries])) for p in PERCENTILES}}
    out["throughput_requests_per_s"] = float(np.median([s["throughput_requests_per_s"] for s in summaries]))
    return out


def run_fidelity(model: str | None, workload: list[WorkloadRequest], *, scheduler=None, grid=None,
                 max_model_len: int = 2048, threads: int | None = 1, profile_dir=None, progress=print,
                 clock: str = "wall", engine_runs: int = 1) -> FidelityReport:
    """Profile ``model`` on this CPU, run ``workload`` through the engine and the simulator,
    and compare. Uses ``threads`` torch threads for both (the profile is only valid for the
    thread count it was measured with). ``clock="cpu"`` times profile and engine alike in
    the CPU time of their one thread, idle gaps skipped: on a shared machine, what a
    dedicated core would show (``podserve.bench.clock``). ``engine_runs`` > 1 runs the
    engine that many times and compares the median of each number (on a shared machine
    one run can land in another job's burst). ``variants`` holds the same
    engine run against the simulator without the whole-forward calibration."""
    from dataclasses import replace

    from podserve.config import CacheConfig, SchedulerConfig
    from podserve.sim.predictors import fit_profile
    from podserve.sim.profiler import ProfileGrid, Profiler

    profiler = Profiler(model, grid=grid or ProfileGrid.quick(), threads=threads, max_model_len=max_model_len, progress=progress,
                        clock=clock)
    profile = profiler.run()
    if profile_dir is not None:
        profile.save(profile_dir)
    fitted = fit_profile(profile)
    del profiler  # free its engine before building the measured one
    sched = replace(scheduler or SchedulerConfig(), max_model_len=max_model_len)
    if engine_runs < 1:
        raise ValueError(f"engine_runs must be at least 1, got {engine_runs}")
    summaries = []
    for _ in range(engine_runs):
        engine, run = run_engine(EngineConfig(model=model, max_model_len=max_model_len, scheduler=sched,
                                              cache=CacheConfig()), workload, clock=clock)
        summaries.append(run.collector.summary())
    measured = median_summary(summaries)
    report = compare(measured, run_sim(fitted, engine, workload).collector.summary())
    if fitted.forward is not None:
        ops_only = replace(fitted, forward=None)
        report.variants["operators only (no whole-forward calibration)"] = compare(
            measured, run_sim(ops_only, engine, workload).collector.summary())
    return report
