"""DistributedExecutor: the engine's side of tensor/pipeline parallelism.

It spawns one worker process per rank (``tp x pp``), sends every scheduled micro-batch to
all of them (pickled once) and reads the sampled tokens back from the last stage's leader,
plus each stage's busy span. It stands where the ModelRunner stands for one device:
``num_blocks`` and ``execute(batch)``; ``submit``/``collect`` let the engine keep up to
``pp`` micro-batches in flight.

Failures surface as ``WorkerError`` in the engine rather than hangs: every wait watches
all workers' pipes and process sentinels, with ``worker_timeout_s`` as a bound. ``close``
(also run at interpreter exit) stops the workers, terminating those that do not exit.
"""
from __future__ import annotations

import atexit
import os
import pickle
import socket
import subprocess
import sys
import time
import weakref
from collections import deque
from multiprocessing import connection
from pathlib import Path

from podserve.config import EngineConfig
from podserve.core.batch import ExecutorOutput, ScheduledBatch
from podserve.core.partition import Partition, rank_of


class WorkerError(RuntimeError):
    """A worker process failed, died or stopped answering; the executor is unusable after it."""


class DistributedExecutor:
    """Worker processes of one tp x pp model replica, driven from the engine's process."""

    def __init__(self, config: EngineConfig, model_config, max_model_len: int):
        par = config.parallel
        if config.cache.kv_layout == "virtual":
            raise ValueError("--kv virtual is not supported with tensor or pipeline parallelism yet; use --kv paged")
        self.partition = Partition.of(model_config, par.tensor_parallel_size, par.pipeline_parallel_size)
        self.tp, self.pp = par.tensor_parallel_size, par.pipeline_parallel_size
        self.timeout_s = par.worker_timeout_s
        devices = _devices(config.device, par.world_size)
        from podserve.distributed.context import free_port, resolve_backend

        backend = resolve_backend(par.distributed_backend, config.device)
        threads = par.worker_threads or max(1, (os.cpu_count() or 1) // par.world_size)
        port = free_port()
        self.procs: list[subprocess.Popen] = []
        self.conns: list[connection.Connection] = []
        self._closed = False
        self._failed: str | None = None
        self._pending: deque[tuple[int, float]] = deque()  # (iteration, submit time) in flight
        atexit.register(_close_ref, weakref.ref(self))
        try:
            for pp_rank in range(self.pp):
                for tp_rank in range(self.tp):
                    rank = rank_of(tp_rank, pp_rank, self.tp)
                    args = {"rank": rank, "tp_rank": tp_rank, "pp_rank": pp_rank, "device": devices[rank],
                            "backend": backend, "threads": threads, "max_model_len": max_model_len,
                            "model_config": model_config}
                    proc, conn = _start_worker(threads)
                    self.procs.append(proc)
                    self.conns.append(conn)
                    conn.send((config, args, port))
            infos = [self._recv(rank, "ready", par.worker_start_timeout_s) for rank in range(len(self.procs))]
        except BaseException:
            self.close()
            raise
        # Every rank sized its own pool; block ids must be valid on all of them.
        self.num_blocks = min(info["num_blocks"] for info in infos)
        self.worker_timings: deque[list[dict]] = deque(maxlen=100_000)
        """Per collected batch, each stage leader's split of its time: ``unpickle_s``,
        ``busy_s`` (inputs, forward, sampling, device sync), ``enqueue_s`` (host time until the
        device had the work), ``gpu_s`` (device time; None on CPU)."""
        self.cuda_graphs = all(info.get("cuda_graphs", False) for info in infos)
        """Every rank replays captured decode graphs (tensor-parallel CUDA ranks)."""
        self.one_shot_all_reduce = all(info.get("one_shot_all_reduce", False) for info in infos)
        """Every rank all-reduces small messages one-shot over symmetric memory (CUDA, tp > 1)."""
        self.fused_all_reduce = all(info.get("fused_all_reduce", False) for info in infos)
        """Every rank reduces row-parallel outputs inside the residual add + norm (allreduce.py)."""
        self.startup_errors = [f"rank {info['rank']}: {e}" for info in infos for e in info.get("startup_errors", [])]
        """Start-up optimisations a rank had to skip (graph capture, kernel warm-up), by rank."""
        self._leaders = [rank_of(0, s, self.tp) for s in range(self.pp)]

    # --- execution ---------------------------------------------------------------------------
    @property
    def num_in_flight(self) -> int:
        """Micro-batches submitted whose tokens have not been collected yet."""
        return len(self._pending)

    def submit(self, batch: ScheduledBatch) -> None:
        """Hand ``batch`` to every rank (stage 0 starts it as soon as it is free)."""
        self._check_usable()
        message = ("execute", pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
        self._pending.append((batch.iteration, time.perf_counter()))
        try:
            for conn in self.conns:
                conn.send(message)
        except (OSError, EOFError) as e:
            self._fail(f"could not send a batch to the workers ({e})")

    def collect(self, handle=None) -> ExecutorOutput:
        """Wait for the oldest submitted micro-batch and return its tokens and stage spans
        (``handle``, what ``submit`` returned, is unused: batches return in order)."""
        self._check_usable()
        if not self._pending:
            raise RuntimeError("collect() without a submitted batch")
        _, submitted = self._pending.popleft()
        spans, tokens, where = [], None, []
        for stage, rank in enumerate(self._leaders):
            _, start, end, sampled, timing = self._recv(rank, "done")
            spans.append((start, end))
            where.append(timing)
            if stage == self.pp - 1:
                tokens = sampled
        self.worker_timings.append(where)
        return ExecutorOutput(sampled_token_ids=tokens, duration=time.perf_counter() - submitted, stage_spans=spans)

    def execute(self, batch: ScheduledBatch) -> ExecutorOutput:
        """Run one batch to completion (no pipelining)."""
        self.submit(batch)
        return self.collect()

    # --- profiling ----------------------------------------------------------------------------
    def start_profile(self) -> None:
        """Start every rank's kernel profiler (nothing may be in flight)."""
        self._send_profile("start")

    def stop_profile(self) -> list[dict]:
        """Stop every rank's profiler; their summaries, by rank."""
        self._send_profile("stop")
        return [self._recv(rank, "profile")[1] for rank in range(len(self.procs))]

    def _send_profile(self, action: str) -> None:
        self._check_usable()
        if self._pending:
            raise RuntimeError("profile start/stop with micro-batches in flight (drain the engine first)")
        try:
            for conn in self.conns:
                conn.send(("profile", action))
        except (OSError, EOFError) as e:
            self._fail(f"could not reach the workers ({e})")

    # --- failure handling ----------------------------------------------------------------------
    def _recv(self, rank: int, kind: str, timeout_s: float | None = None):
        """The next message of worker ``rank``; any worker's death ends the wait within
        a fraction of a second (a worker that fails reports its traceback, then exits)."""
        conn = self.conns[rank]
        timeout_s = timeout_s or self.timeout_s
        deadline = time.monotonic() + timeout_s
        while not conn.poll(0.2):
            for other, proc in enumerate(self.procs):
                if proc.poll() is not None and not (other == rank and conn.poll()):
                    self._fail(self._death_note(other))
            if time.monotonic() > deadline:
                field = "worker_start_timeout_s" if kind == "ready" else "worker_timeout_s"
                self._fail(f"worker rank {rank} sent no {kind!r} within {timeout_s:.0f}s (ParallelConfig.{field})")
        try:
            message = conn.recv()
        except (EOFError, OSError):
            self._fail(self._death_note(rank))
        if message[0] == "error":
            if kind == "ready" and message[2] == "ValueError":  # bad input found while building
                self._fail(f"worker rank {rank}: {message[3]}", ValueError)
            self._fail(self._diagnose(rank, f"worker rank {rank} failed:\n{message[1]}"))
        if message[0] != kind:
            self._fail(f"worker rank {rank} sent {message[0]!r} while {kind!r} was expected")
        return message[1] if kind == "ready" else message

    def _diagnose(self, rank: int, report: str) -> str:
        """A worker's error, led by any other worker that has died: a collective fails on
        every rank once one rank is gone, and the dead one is the cause worth naming."""
        time.sleep(0.2)
        dead = [self._death_note(i) for i, p in enumerate(self.procs) if i != rank and p.poll() is not None]
        return "\n".join(dead + [("then " if dead else "") + report])

    def _death_note(self, rank: int) -> str:
        proc = self.procs[rank]
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        conn = self.conns[rank]
        try:
            while conn.poll():  # its traceback, if it sent one, follows any 'done' still unread
                message = conn.recv()
                if message[0] == "error":
                    return f"worker rank {rank} failed:\n{message[1]}"
        except (EOFError, OSError):
            pass
        code = proc.returncode
        how = "is unresponsive" if code is None else f"exited with code {code}"
        return f"worker rank {rank} (pid {proc.pid}) {how}"

    def _fail(self, why: str, kind: type[Exception] | None = None):
        self._failed = why
        self.close()
        raise (kind or WorkerError)(why)

    def _check_usable(self) -> None:
        if self._failed:
            raise WorkerError(f"the engine's workers have failed earlier: {self._failed.splitlines()[0]}")
        if self._closed:
            raise WorkerError("the engine has been closed")

    # --- shutdown ------------------------------------------------------------------------------
    def close(self, timeout_s: float = 10.0) -> None:
        """Stop every worker: ask politely, then terminate, then kill. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for conn in self.conns:
            try:
                conn.send(("shutdown",))
            except (OSError, EOFError, ValueError):
                pass
        deadline = time.monotonic() + (timeout_s if not self._failed else 0.5)
        for proc in self.procs:
            _wait(proc, deadline - time.monotonic())
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            if not _wait(proc, 2.0):
                proc.kill()
                _wait(proc, 2.0)
        for conn in self.conns:
            try:
                conn.close()
            except OSError:
                pass

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers (tests check that none outlives ``close``)."""
        return [p.pid for p in self.procs]

    def __del__(self):
        try:
            self.close(timeout_s=1.0)
        except Exception:
            pass


def _start_worker(threads: int) -> tuple[subprocess.Popen, connection.Connection]:
    """Start ``python -m podserve.distributed.worker`` with one end of a socket pair.

    A fresh interpreter rather than multiprocessing's spawn: it never re-imports the
    caller's ``__main__``, so scripts need no ``if __name__ == "__main__"`` guard.
    """
    parent, child = socket.socketpair()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    root = str(Path(__file__).resolve().parents[2])  # the directory holding the podserve package
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    try:
        proc = subprocess.Popen([sys.executable, "-m", "podserve.distributed.worker", str(child.fileno()), str(os.getpid())],
                                pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL)
    finally:
        child.close()
    return proc, connection.Connection(parent.detach())


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``proc`` to exit; True if it has."""
    try:
        proc.wait(timeout=max(0.0, timeout))
        return True
    except subprocess.TimeoutExpired:
        return False


def _close_ref(ref) -> None:
    executor = ref()
    if executor is not None:
        executor.close(timeout_s=2.0)


def _devices(device: str, world_size: int) -> list[str]:
    """One device per rank: the CPU for all, or consecutive CUDA devices from ``device``'s index."""
    if not device.startswith("cuda"):
        return ["cpu"] * world_size
    import torch

    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device; use --device cpu")
    first = int(device.split(":")[1]) if ":" in device else 0
    have = torch.cuda.device_count()
    if first + world_size > have:
        raise ValueError(f"tensor x pipeline parallel size {world_size} needs {world_size} GPUs from cuda:{first}, "
                         f"but only {have} are visible")
    return [f"cuda:{first + r}" for r in range(world_size)]
