"""One worker process: a rank's ModelRunner over its shard, driven by the engine's messages.

Protocol over the worker's pipe (the engine's side is ``executor.DistributedExecutor``):

- worker -> engine, once: ``("ready", {"num_blocks": ...})`` or ``("error", traceback)``;
- engine -> worker: ``("execute", pickled ScheduledBatch)`` per micro-batch, in order,
  ``("profile", "start" | "stop")`` with nothing in flight, or ``("shutdown",)``;
- stage leaders (tp_rank 0) -> engine, per micro-batch: ``("done", start, end, tokens)``:
  the stage's busy span on the perf_counter clock and, from the last stage, the sampled
  tokens (None elsewhere); every rank -> engine, after a profile stop: ``("profile", summary)``
  (``executor.profiler.StepProfiler.stop``); any rank -> engine: ``("error", traceback)``
  before it exits.

Every rank of a stage runs the same batch (tensor-parallel collectives keep them in step);
earlier stages sample nothing (their copy of the batch has ``do_sample`` cleared).
"""
from __future__ import annotations

import os
import pickle
import sys
import time
import traceback
from collections import deque
from dataclasses import replace


def main(argv: list[str]) -> None:
    """``python -m podserve.distributed.worker FD PARENT_PID``: FD is this worker's end of its
    socket pair with the engine; the first message is ``(EngineConfig, place, port)``."""
    from multiprocessing.connection import Connection

    _die_with_parent(int(argv[1]))
    conn = Connection(int(argv[0]))
    try:
        config, ctx_args, port = conn.recv()
    except (EOFError, OSError):
        return
    worker_main(conn, config, ctx_args, port)
    # Nothing left to clean up: skip the interpreter's slow teardown of torch.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _die_with_parent(parent_pid: int) -> None:
    """Exit as soon as the engine's process is gone (this process gets reparented), even
    while the main thread is blocked in a collective: no worker outlives its engine."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def worker_main(conn, config, ctx_args: dict, port: int) -> None:
    """Build this rank's shard, report readiness, then execute batches until shutdown."""
    threads = ctx_args.pop("threads")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        ctx, runner, all_reduce = _build(config, ctx_args, port)
    except BaseException:
        _report_error(conn)
        return
    try:
        conn.send(("ready", {"num_blocks": runner.num_blocks, "rank": ctx.rank, "cuda_graphs": runner.graphs is not None,
                             "one_shot_all_reduce": all_reduce is not None and all_reduce.one_shot,
                             "fused_all_reduce": all_reduce is not None and all_reduce.fused,
                             "startup_errors": runner.startup_errors}))
        _serve(conn, ctx, runner)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the engine went away: nothing left to report to
    except BaseException:
        _report_error(conn)
        return
    _close(runner)


def _build(config, ctx_args: dict, port: int):
    import torch

    from podserve.config import pipeline_depth
    from podserve.core.partition import Partition
    from podserve.distributed.context import RankContext, init_distributed
    from podserve.distributed.layers import parallelize
    from podserve.distributed.weights import rank_weights
    from podserve.executor.model_runner import ModelRunner
    from podserve.model.loader import resolve_weights

    model_config = ctx_args["model_config"]  # the engine has resolved and validated the model
    par = config.parallel
    part = Partition.of(model_config, par.tensor_parallel_size, par.pipeline_parallel_size)
    device = torch.device(ctx_args["device"])
    ctx = RankContext(rank=ctx_args["rank"], tp_rank=ctx_args["tp_rank"], pp_rank=ctx_args["pp_rank"],
                      tp=par.tensor_parallel_size, pp=par.pipeline_parallel_size, partition=part, device=device)
    init_distributed(ctx, ctx_args["backend"], port, max(par.worker_timeout_s, par.worker_start_timeout_s))
    shard = part.shard_config(model_config, ctx.tp_rank, ctx.pp_rank)
    weights = rank_weights(resolve_weights(config.model, model_config), model_config, part,
                           ctx.tp_rank, ctx.pp_rank, config.seed, device)
    rank_config = replace(config, device=str(device))
    installed = []
    runner = ModelRunner(rank_config, shard, weights, ctx_args["max_model_len"],
                         model_hook=lambda model: installed.append(
                             parallelize(model, ctx, model_config.vocab_size, par.custom_all_reduce,
                                         pipeline_depth(par.pipeline_parallel_size, par.pipeline_microbatches))))
    all_reduce = installed[0]
    if all_reduce is not None and all_reduce.error is not None:
        runner.startup_errors.append(all_reduce.error)
    return ctx, runner, all_reduce


def _serve(conn, ctx, runner) -> None:
    import torch

    from podserve.config import async_scheduling_enabled
    from podserve.distributed.layers import PipelineRecv

    recv = runner.model.embed_tokens if isinstance(runner.model.embed_tokens, PipelineRecv) else None
    cuda = runner.device.type == "cuda"
    # Asynchronous scheduling (tensor parallelism only): enqueue step N+1 before waiting for
    # step N's tokens when the engine has already sent it, so the device never waits for
    # this process to unpickle and prepare the next step. Pipeline stages stay one at a time
    # (PipelineRecv waits on the host for activations).
    depth = 2 if async_scheduling_enabled(runner.config) else 1
    inflight: deque = deque()  # (handle, picked-up time, unpickle seconds)
    last_end = 0.0
    while True:
        if len(inflight) < depth:
            ready = conn.poll() if inflight else True
            while not ready and not runner.is_done(inflight[0][0]):
                ready = conn.poll(0.0002)
            if ready:
                message = conn.recv()
                if message[0] == "shutdown":
                    return
                if message[0] == "profile":  # the engine drained first: nothing is in flight
                    _profile(conn, runner, message[1])
                    continue
                t_recv = time.perf_counter()
                batch = pickle.loads(message[1])
                start = time.perf_counter()
                if not ctx.is_last_stage:
                    for s in batch.seqs:
                        s.do_sample = False
                inflight.append((runner.submit(batch), start, start - t_recv))
                continue
        handle, start, unpickle_s = inflight.popleft()
        output = runner.collect(handle)
        if cuda and not inflight:  # compute done (not the activations' send: waiting for the next stage is idle)
            torch.cuda.current_stream(runner.device).synchronize()  # nothing queued behind it: free
            runner.flush_timings()
        end = time.perf_counter()
        if recv is not None:
            start = max(start, recv.received_at)  # waiting for activations is idle, not busy
        start = max(start, last_end)  # two steps in flight: busy spans do not overlap
        last_end = end
        if ctx.is_stage_leader:
            tokens = output.sampled_token_ids if ctx.is_last_stage else None
            timing = output.timing
            where = {"unpickle_s": unpickle_s, "busy_s": end - start,
                     "enqueue_s": timing.enqueue_s if timing is not None else None,
                     "gpu_s": timing.gpu_s if timing is not None else None}
            conn.send(("done", start, end, tokens, where))


def _profile(conn, runner, action: str) -> None:
    """``start`` or ``stop`` this rank's kernel profile; every rank answers a stop with
    ``("profile", summary)``."""
    if action == "start":
        runner.profiler.start()
    else:
        conn.send(("profile", runner.profiler.stop()))


def _close(runner) -> None:
    import torch.distributed as dist

    from podserve.distributed.layers import PipelineSend

    if isinstance(runner.model.norm, PipelineSend):
        runner.model.norm.wait()
    if dist.is_initialized():
        dist.destroy_process_group()


def _report_error(conn) -> None:
    """Send the exception being handled: traceback, and its type and message (the engine
    re-raises a ValueError at start-up as a ValueError: bad input, not a crash)."""
    exc = sys.exc_info()[1]
    try:
        conn.send(("error", traceback.format_exc(), type(exc).__name__, str(exc)))
    except (OSError, EOFError):
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
