"""Capacity: the highest Poisson load (QPS) a deployment serves within its SLO.

A bracketing search: double (or halve) the QPS from a starting guess until one probe
passes and one fails, then bisect until the bracket is within a relative tolerance.
The capacity is the highest passing QPS. Probes share one seed, so every probe and
every scheduler sees the same request lengths; only the arrival gaps scale with QPS.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable


@dataclass
class Probe:
    """One load level tried by the search."""

    qps: float
    passed: bool
    p99_tbt_s: float | None
    p50_delay_s: float | None
    wall_s: float
    stopped_early: str | None = None
    summary: dict | None = field(default=None, repr=False)


@dataclass
class CapacityResult:
    capacity_qps: float
    """Highest passing QPS found (0.0 if even ``min_qps`` failed)."""
    bracket: tuple[float | None, float | None]
    """(highest pass, lowest fail) when the search stopped."""
    tolerance: float
    probes: list[Probe]

    def to_json(self) -> dict:
        return {"capacity_qps": self.capacity_qps, "bracket": list(self.bracket), "tolerance": self.tolerance,
                "probes": [asdict(p) for p in self.probes]}


def find_capacity(probe: Callable[[float], Probe], qps_start: float = 1.0, tolerance: float = 0.1,
                  min_qps: float = 0.01, max_qps: float = 1e4, max_probes: int = 16,
                  on_probe: Callable[[Probe], None] | None = None) -> CapacityResult:
    """Search the pass/fail boundary of ``probe`` to ``(fail - pass) / fail <= tolerance``."""
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance={tolerance}: must be in (0, 1)")
    probes: list[Probe] = []
    lo: float | None = None  # highest QPS that passed
    hi: float | None = None  # lowest QPS that failed

    def run(qps: float) -> bool:
        p = probe(qps)
        probes.append(p)
        if on_probe is not None:
            on_probe(p)
        return p.passed

    qps = qps_start
    while (lo is None or hi is None) and len(probes) < max_probes:
        if run(qps):
            lo = qps
            if qps >= max_qps:
                break
            qps = min(qps * 2, max_qps)
        else:
            hi = qps
            if qps <= min_qps:
                break
            qps = max(qps / 2, min_qps)
    while lo is not None and hi is not None and (hi - lo) / hi > tolerance and len(probes) < max_probes:
        mid = (lo + hi) / 2
        if run(mid):
            lo = mid
        else:
            hi = mid
    return CapacityResult(lo or 0.0, (lo, hi), tolerance, probes)


def decode_iteration_time(engine, *, batch_size: int, prompt_tokens: int, output_tokens: int = 16, seed: int = 0) -> float:
    """Median duration of decode-only iterations with ``batch_size`` requests of
    ``prompt_tokens``-token prompts: the unit of the TBT SLO (Sarathi-Serve uses 5x
    it as the strict SLO and 25x as the relaxed one)."""
    from podserve.bench.workloads import WorkloadRequest, prompt_token_ids
    from podserve.request import SamplingParams

    durations: list[float] = []
    # Under a small chunk the first requests would finish before the last is prefilled:
    # generate long enough that the whole batch decodes together for ``output_tokens`` steps.
    cfg = engine.scheduler.config
    chunk = cfg.chunk_size if cfg.policy in ("sarathi", "simple-chunking") else cfg.token_cap
    output_tokens += -(-batch_size * prompt_tokens // max(1, chunk - batch_size)) + batch_size

    def listen(batch, start, end):
        if batch.num_prefills == 0 and batch.num_decodes == batch_size:
            durations.append(end - start)

    workload = [WorkloadRequest(0.0, prompt_tokens, output_tokens)] * batch_size
    engine.iteration_listeners.append(listen)
    try:
        for i, ids in enumerate(prompt_token_ids(workload, engine.model_config.vocab_size, seed)):
            engine.add_request(ids, SamplingParams(max_tokens=output_tokens, temperature=0.0, ignore_eos=True),
                               request_id=f"calibrate-{i}")
        while engine.has_unfinished_requests():
            engine.step()
    finally:
        engine.iteration_listeners.remove(listen)
    if not durations:
        raise RuntimeError(f"no decode-only iteration of {batch_size} requests ran (max_num_seqs too small?)")
    return statistics.median(durations)
