"""Engine: schedule -> execute -> update, plus detokenization and request bookkeeping."""
from __future__ import annotations

import gc
import itertools
import time
from collections import deque
from dataclasses import replace

from podserve.config import EngineConfig, async_scheduling_enabled, pipeline_depth
from podserve.core.inflight import InFlightBatches
from podserve.core.kv.paged import BlockManager
from podserve.core.scheduler import make_scheduler
from podserve.engine.detokenizer import IncrementalDetokenizer
from podserve.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from podserve.executor.model_runner import ModelRunner
from podserve.metrics.pipeline import PipelineStats
from podserve.model.loader import resolve_model
from podserve.request import Request, RequestStatus, SamplingParams

CPU_MAX_MODEL_LEN = 8192  # a CPU run never needs a longer context; keeps RoPE tables small


class Engine:
    """Synchronous engine. ``step()`` runs one iteration over every active request."""

    def __init__(self, config: EngineConfig):
        source = resolve_model(config.model)
        self.model_name = source.name
        self.tokenizer = source.tokenizer
        self.model_config = source.config
        max_len = config.max_model_len or source.config.max_position_embeddings
        if config.max_model_len is None and config.device == "cpu":
            max_len = min(max_len, CPU_MAX_MODEL_LEN)
        self.max_model_len = max_len
        self.config = replace(config, scheduler=replace(config.scheduler, max_model_len=max_len))
        parallel = self.config.parallel
        if parallel.is_distributed:
            # One worker process per rank; the scheduler stays here (docs/parallel.md).
            from podserve.distributed.executor import DistributedExecutor

            self.runner = DistributedExecutor(self.config, source.config, max_len)
        else:
            self.runner = ModelRunner(self.config, source.config, source.weights, max_len)
        self.num_stages = parallel.pipeline_parallel_size
        self.pipeline_stats: PipelineStats | None = PipelineStats(self.num_stages) if parallel.is_distributed else None
        """Per-stage busy time and bubble fraction (tensor/pipeline-parallel engines only)."""
        self.async_scheduling = async_scheduling_enabled(self.config)
        """Two steps in flight, the next scheduled while one runs (``ParallelConfig.async_scheduling``)."""
        self._depth = 2 if self.async_scheduling else pipeline_depth(self.num_stages, parallel.pipeline_microbatches)
        """Steps in flight at most: 1, 2 (asynchronous scheduling) or the pipeline's micro-batches."""
        self._inflight = InFlightBatches(self._depth, lookahead=self.async_scheduling)
        self._pending: deque = deque()  # (batch, submit time) of micro-batches in the pipeline
        self._carried: list[RequestOutput] = []
        """Outputs of steps collected outside ``step()`` (profile start/stop), returned by the next."""
        self._last_done = 0.0  # async scheduling: when the previous step's tokens came back
        cache = self.config.cache
        if cache.kv_layout == "virtual":
            # Slots and physical pages; the pool applies the manager's map/unmap plan each step.
            lookahead = cache.kv_lookahead if cache.kv_background_map else 0
            self.kv = self.runner.kv_pool.make_manager(cache.watermark, lookahead)
        else:
            self.kv = BlockManager(self.runner.num_blocks, cache.block_size, cache.watermark)
        self.scheduler = make_scheduler(self.config.scheduler, self.kv)
        self.eos_token_ids = tuple(self.tokenizer.eos_token_ids or source.config.eos_token_ids)
        self._detok: dict[str, IncrementalDetokenizer | None] = {}  # None: detokenize=False
        self._prompts: dict[str, str | None] = {}
        self._ids = itertools.count()
        self.clock = time.perf_counter
        """Timestamps of arrivals, iterations and tokens (a benchmark may swap in
        ``podserve.bench.clock.ThreadCPUClock``)."""
        self.iteration_listeners: list = []
        """Callables ``f(batch, start, end)`` told about every executed iteration (metrics)."""
        self.emit_unfinished = True
        """Whether ``step()`` returns outputs of requests that advanced without finishing
        (streaming needs them; ``LLM.generate``, which keeps only finished ones, turns it off)."""
        self.last_output = None
        """The ExecutorOutput of the latest iteration (its ``timing`` splits host and device time)."""
        self.token_budget = None
        """The SLO-aware token budget (``scheduler.tbt_slo``), or None for a fixed chunk size."""
        self.set_tbt_slo(self.config.scheduler.tbt_slo)

    def set_tbt_slo(self, tbt_slo: float | None) -> None:
        """Size sarathi's token budget per iteration so its predicted time (cost model of
        ``config.profile``) stays under ``tbt_slo`` seconds; None returns to the fixed chunk size."""
        if self.token_budget is not None:
            self.iteration_listeners.remove(self._observe_iteration)
        if tbt_slo is None:
            self.token_budget = None
            self.scheduler.token_budget = None
        else:
            from podserve.sim.token_budget import SLOTokenBudget

            budget = SLOTokenBudget.for_engine(self.config.profile, self.model_config, self.runner.device,
                                               str(self.runner.dtype).removeprefix("torch."), tbt_slo)
            budget.attach(self.scheduler)
            self.token_budget = budget
            self.iteration_listeners.append(self._observe_iteration)  # measured times correct its predictions
        self.config = replace(self.config, scheduler=replace(self.config.scheduler, tbt_slo=tbt_slo))

    def _observe_iteration(self, batch, start: float, end: float) -> None:
        self.token_budget.observe(batch, end - start)

    # --- requests ------------------------------------------------------------------------
    def add_request(
        self,
        prompt: str | list[int],
        sampling_params: SamplingParams | None = None,
        request_id: str | None = None,
        arrival_time: float | None = None,
    ) -> Request:
        """Tokenize (if text) and queue a request. Raises ValueError on bad input."""
        params = sampling_params or SamplingParams()
        if isinstance(prompt, str):
            token_ids, text = self.tokenizer.encode(prompt), prompt
        else:
            token_ids, text = list(prompt), None
            vocab = self.model_config.vocab_size
            if any(not isinstance(t, int) or t < 0 or t >= vocab for t in token_ids):
                raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        request = Request(
            request_id=request_id if request_id is not None else str(next(self._ids)),
            prompt_token_ids=token_ids,
            sampling_params=params,
            arrival_time=self.clock() if arrival_time is None else arrival_time,
            eos_token_ids=self.eos_token_ids,
        )
        self.scheduler.add_request(request)
        self._detok[request.request_id] = (IncrementalDetokenizer(self.tokenizer, token_ids, params.stop)
                                           if params.detokenize else None)
        self._prompts[request.request_id] = text
        return request

    def abort_request(self, request_id: str) -> None:
        """Stop a request now and free its KV blocks; unknown ids are ignored."""
        request = self.scheduler.abort_request(request_id)
        if request is not None:
            request.times.finished = self.clock()
        self._detok.pop(request_id, None)
        self._prompts.pop(request_id, None)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._pending) or bool(self._carried)

    def drain(self) -> None:
        """Collect steps still in flight that no unfinished request waits for (asynchronous
        scheduling leaves one behind when its last request stopped on EOS one step earlier)."""
        while self._pending and not self.scheduler.has_unfinished():
            self.step()

    def start_profile(self) -> None:
        """Start profiling the kernels of the steps that follow (every rank's, under tensor or
        pipeline parallelism); steps already in flight are collected first."""
        self._drain_all()
        self.runner.start_profile()

    def stop_profile(self) -> list[dict]:
        """Stop profiling; one summary per rank (one for a single device): device time per
        step by kernel family and for the top kernels (``executor.profiler``)."""
        self._drain_all()
        return self.runner.stop_profile()

    def _drain_all(self) -> None:
        """Collect and apply every step in flight, even ones unfinished requests wait for."""
        while self._pending:  # their outputs come with the next step()'s
            self._carried.extend(self._outputs(self._collect_oldest()))

    def freeze_heap(self) -> None:
        """Exclude every object alive now (the imported libraries, the model, the
        tokenizer) from Python's cyclic garbage collector, as vLLM and SGLang do after
        start-up. Without it a full collection walks them all: on CPU with 128 running
        requests, full collections stalled a step by ~90 ms every few hundred steps,
        which lands on the P99 time between tokens (docs/benchmarks.md). For processes
        that serve until they exit (``podserve serve``, engine processes, replicas);
        ``close()`` unfreezes, so a closed engine's cycles can be freed again."""
        gc.collect()
        gc.freeze()
        self._froze_heap = True

    def unfreeze_heap(self) -> None:
        """Undo ``freeze_heap`` (no-op if this engine did not freeze)."""
        if getattr(self, "_froze_heap", False):
            gc.unfreeze()
            self._froze_heap = False

    def close(self) -> None:
        """Stop the worker processes of a tensor/pipeline-parallel engine; discard a profile
        never stopped; undo ``freeze_heap`` (idempotent)."""
        self.runner.close()
        self.unfreeze_heap()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the loop --------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One iteration: schedule, execute, update. Returns outputs of requests that advanced.

        Up to ``self._depth`` batches are in flight, and the oldest is applied when its tokens
        return: one for the plain loop (schedule, run, apply); ``config.pipeline_depth`` (at
        least the stages) micro-batches for pipeline parallelism, whose in-flight requests are
        hidden from the scheduler (``InFlightBatches``), so none is scheduled twice; two for
        asynchronous scheduling, each over every running request (``InFlightBatches(lookahead=True)``)."""
        self._submit_ready()
        carried, self._carried = self._carried, []
        if not self._pending:
            return carried
        applied = self._collect_oldest()
        if self._depth > 1:
            # The next step goes out before this one's text is decoded and its outputs built:
            # with two processes on the host path of a tensor-parallel step, that work would
            # otherwise stand between the device finishing one step and receiving the next.
            self._submit_ready()
        return carried + self._outputs(applied)

    def _submit_ready(self) -> None:
        """Schedule and submit steps until ``self._depth`` are in flight or nothing is left."""
        while len(self._pending) < self._depth:
            host0 = time.perf_counter()
            start = self.clock()
            batch = self._inflight.schedule(self.scheduler, start)
            if batch.is_empty:
                break
            self._inflight.add(batch)
            schedule_s = time.perf_counter() - host0
            self._pending.append((batch, start, self.runner.submit(batch), schedule_s))

    def _collect_oldest(self) -> list[tuple]:
        """Wait for the oldest step in flight and apply it to the scheduler (``_apply``)."""
        batch, start, handle, schedule_s = self._pending.popleft()
        output = self.runner.collect(handle)
        timing = getattr(output, "timing", None)
        if timing is not None and timing.enqueue_s is not None:
            timing.cpu_s = schedule_s + timing.enqueue_s  # host time until the device had all the work
        self._inflight.remove(batch)
        now = self.clock()
        if self.async_scheduling:
            # A step scheduled while the previous one ran starts, for the metrics, when that
            # one's tokens came back: iteration durations then add up to the wall time.
            start, self._last_done = max(start, self._last_done), now
        return self._apply(batch, output, start, now)

    def _apply(self, batch, output, start: float, now: float) -> list[tuple]:
        """Update the scheduler with an executed batch. Requests with stop strings are
        detokenized here (a stop string finishes the request before the next step is
        scheduled); the others' text waits for ``_outputs``. Returns, per advanced request,
        ``(update, delta text or None, finished)``."""
        self.last_output = output
        updates = self.scheduler.update(batch, output, now)
        if self.pipeline_stats is not None and output.stage_spans is not None:
            self.pipeline_stats.on_micro_batch(start, now, output.stage_spans)
        for listener in self.iteration_listeners:
            listener(batch, start, now)
        applied = []
        for update in updates:
            rid = update.request.request_id
            detok = self._detok[rid]
            delta, finished = None, update.finished
            if detok is not None and detok.stop:
                delta, hit_stop = detok.add(update.new_token_ids)
                if hit_stop and not finished:
                    self.scheduler.finish_request(rid, RequestStatus.FINISHED_STOPPED, now)
                    finished = True
            applied.append((update, delta, finished))
        return applied

    def _outputs(self, applied: list[tuple]) -> list[RequestOutput]:
        """Detokenize what ``_apply`` left and build the outputs of the advanced requests."""
        results = []
        for update, delta, finished in applied:
            request = update.request
            rid = request.request_id
            detok = self._detok[rid]
            if delta is None:
                delta = detok.add(update.new_token_ids)[0] if detok is not None else ""
            if finished and detok is not None:
                delta += detok.flush()  # text held back in case it began a stop string
            if finished or self.emit_unfinished:
                results.append(self._output(request, delta, update.new_token_ids, finished))
            if finished:
                del self._detok[rid]
                del self._prompts[rid]
        return results

    def _output(self, request: Request, delta: str, delta_ids: list[int], finished: bool) -> RequestOutput:
        rid = request.request_id
        t = request.times
        return RequestOutput(
            request_id=rid,
            prompt=self._prompts.get(rid),
            prompt_token_ids=request.prompt_token_ids,
            outputs=[
                CompletionOutput(
                    index=0,
                    text=self._detok[rid].emitted_text if self._detok[rid] is not None else "",
                    token_ids=list(request.output_token_ids),
                    finish_reason=request.status.finish_reason if finished else None,
                )
            ],
            finished=finished,
            metrics=RequestMetrics(
                arrival_time=t.arrival,
                first_scheduled_time=t.first_scheduled,
                first_token_time=t.first_token,
                token_times=list(t.token_times) if finished else [],
                finished_time=t.finished,
                num_preemptions=request.num_preemptions,
            ),
            delta_text=delta,
            delta_token_ids=list(delta_ids),
        )
