"""Run a workload against an in-process Engine at its real arrival times."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from podserve.bench.workloads import WorkloadRequest, prompt_token_ids
from podserve.metrics import MetricsCollector
from podserve.request import Request, SamplingParams

StopRule = Callable[[float, list[Request]], str | None]
"""Called after every iteration with (now on the engine's clock, requests added so far);
returns a reason to stop the run early (e.g. an SLO is already certainly missed), or None."""


@dataclass
class BenchRun:
    """What one workload run produced."""

    collector: MetricsCollector
    wall_s: float
    num_requests: int
    stopped_early: str | None = None
    """Why the run stopped before every request finished (remaining requests were aborted)."""
    num_clipped: int = 0
    """Requests whose output was shortened to fit the context length."""


def fit_to_context(workload: list[WorkloadRequest], max_model_len: int) -> tuple[list[WorkloadRequest], int]:
    """Shorten prompts/outputs so prompt + output fits ``max_model_len``; count the changes."""
    out, clipped = [], 0
    for r in workload:
        prompt = min(r.num_prompt_tokens, max_model_len - 2)
        output = min(r.num_output_tokens, max_model_len - prompt)
        clipped += (prompt, output) != (r.num_prompt_tokens, r.num_output_tokens)
        out.append(WorkloadRequest(r.arrival_time, prompt, output))
    return out, clipped


def run_workload(engine, workload: list[WorkloadRequest], *, seed: int = 0, progress: bool = False,
                 stop_rule: StopRule | None = None, desc: str = "bench", detokenize: bool = True) -> BenchRun:
    """Add each request when its arrival time comes and step the engine until all finish.

    Requests use ``ignore_eos`` and greedy sampling so each yields exactly its
    ``num_output_tokens``. A request's arrival time is its scheduled one, not the moment
    the loop noticed it: time spent waiting for a running iteration counts as queueing.
    ``detokenize=False`` skips turning tokens into text (as vLLM's --disable-detokenize).
    Iteration records carry the executor's host/device time split where it measures one.
    Times are on ``engine.clock``; a clock with ``advance_to`` (ThreadCPUClock) skips idle
    gaps instead of sleeping through them.
    """
    workload, num_clipped = fit_to_context(sorted(workload, key=lambda r: r.arrival_time), engine.max_model_len)
    prompts = prompt_token_ids(workload, engine.model_config.vocab_size, seed)
    collector = MetricsCollector()

    def listener(batch, start, end):
        output = getattr(engine, "last_output", None)
        collector.on_iteration(batch, start, end, getattr(output, "timing", None))

    engine.iteration_listeners.append(listener)
    stages = getattr(engine, "pipeline_stats", None)  # tensor/pipeline-parallel engines
    if stages is not None:
        stages.reset()
    bar = _progress_bar(len(workload), desc) if progress else None
    requests: list[Request] = []
    stopped = None
    clock = engine.clock
    skip_idle = getattr(clock, "advance_to", None)
    wall0 = time.perf_counter()
    t0 = clock()
    try:
        while len(requests) < len(workload) or engine.has_unfinished_requests():
            now = clock() - t0
            while len(requests) < len(workload) and workload[len(requests)].arrival_time <= now:
                i = len(requests)
                params = SamplingParams(max_tokens=workload[i].num_output_tokens, temperature=0.0, ignore_eos=True,
                                        detokenize=detokenize)
                requests.append(engine.add_request(prompts[i], params, request_id=f"bench-{i}",
                                                   arrival_time=t0 + workload[i].arrival_time))
            if not engine.has_unfinished_requests():
                if skip_idle is not None:
                    skip_idle(t0 + workload[len(requests)].arrival_time)
                else:
                    time.sleep(max(0.0, workload[len(requests)].arrival_time - (clock() - t0)))
                continue
            finished = sum(out.finished for out in engine.step())
            if bar is not None and finished:
                bar.update(finished)
            if stop_rule is not None:
                stopped = stop_rule(clock(), requests)
                if stopped:
                    for r in requests:
                        engine.abort_request(r.request_id)
                    break
    finally:
        engine.iteration_listeners.remove(listener)
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - wall0
    flush = getattr(getattr(engine, "runner", None), "flush_timings", None)
    if flush is not None:
        flush()  # device times of the last steps
    if stages is not None:
        collector.pipeline = stages.summary()
    for r in requests:
        collector.on_request_finished(r)
    return BenchRun(collector, wall, len(workload), stopped, num_clipped)


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="req", dynamic_ncols=True)
