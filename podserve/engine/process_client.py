"""EngineProcessClient: the engine in a process of its own, the HTTP front end in this one.

With the engine stepped by a thread of the server process, every model step, every
scheduler decision and every detokenization competes with uvicorn, JSON encoding and SSE
framing for one interpreter lock. vLLM's V1 answer, used here too, is a separate
engine-core process: the server process keeps the event loop, tokenization of prompts and
the OpenAI protocol; the child owns the ``Engine`` and runs schedule -> execute -> update
without waiting on anyone.

Protocol (one duplex ``multiprocessing`` pipe, pickled tuples):

- front -> engine: ``("add", request_id, prompt_ids, params, arrival_time)``,
  ``("abort", request_id)``, ``("stop",)``.
- engine -> front, one message per loop turn: ``("tick", accepted, rejected, deltas,
  failed, stats)`` where ``deltas`` carry only what the step added (new token ids, new
  text, finish reason, metrics when finished) so a message never grows with the length of
  a request; the front rebuilds vLLM-shaped cumulative ``RequestOutput`` s.

``time.perf_counter()`` is CLOCK_MONOTONIC on Linux, shared by both processes, so arrival
times stamped here and token times stamped there are on one clock.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from podserve.config import EngineConfig
from podserve.engine.async_engine import (
    EngineDead,
    EngineOverloaded,
    EngineStats,
    RequestFailed,
    RequestStream,
    _Stream,
    publish,
)
from podserve.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from podserve.request import SamplingParams

logger = logging.getLogger(__name__)


@dataclass
class _Delta:
    """What one step added to one request (engine -> front)."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None
    metrics: RequestMetrics


@dataclass
class _Pending:
    """Front-side state of one request: its stream and the cumulative output so far."""

    stream: _Stream
    accepted: asyncio.Future
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""


# --- the engine process ------------------------------------------------------------------------
def _engine_main(config: EngineConfig, conn, threads: int | None) -> None:
    """Entry point of the engine process: build the engine, then serve the pipe until "stop"."""
    import torch

    from podserve.engine.engine import Engine

    if threads:
        torch.set_num_threads(threads)
    try:
        engine = Engine(config)
    except BaseException as e:  # model load failed: tell the front, which raises it
        conn.send(("failed_to_start", e))
        return
    engine.freeze_heap()  # this process serves until it stops: no full-heap GC pauses
    conn.send(("ready", {"max_model_len": engine.max_model_len, "model_name": engine.model_name}))
    stats = EngineStats()
    try:
        while True:
            busy = engine.has_unfinished_requests()
            # Idle: block on the pipe (no busy-wait). Busy: take what arrived, then step.
            if not busy:
                conn.poll(None)
            accepted, rejected, failed = [], [], []
            stop = False
            while conn.poll():
                msg = conn.recv()
                if msg[0] == "add":
                    _, rid, ids, params, arrival = msg
                    try:
                        engine.add_request(ids, params, rid, arrival)
                        accepted.append(rid)
                    except Exception as e:  # bad input: only this request fails
                        rejected.append((rid, e))
                elif msg[0] == "abort":
                    engine.abort_request(msg[1])
                elif msg[0] == "stop":
                    stop = True
            if stop:
                break
            deltas: list[_Delta] = []
            busy_s = None
            if engine.has_unfinished_requests():
                start = time.perf_counter()
                try:
                    outputs = engine.step()
                except Exception as e:  # the batch's requests are in an unknown state: fail them
                    logger.exception("engine step failed")
                    outputs = []
                    for request in list(engine.scheduler.running):
                        engine.abort_request(request.request_id)
                        failed.append((request.request_id, f"request {request.request_id} failed inside the engine: {e!r}"))
                busy_s = time.perf_counter() - start
                deltas = [
                    _Delta(o.request_id, o.delta_token_ids, o.delta_text, o.finished,
                           o.outputs[0].finish_reason, o.metrics)
                    for o in outputs
                ]
            stats = stats.after(engine, busy_s)
            conn.send(("tick", accepted, rejected, deltas, failed, stats))
    except (EOFError, OSError, BrokenPipeError):
        pass  # the front went away: nothing left to serve
    finally:
        engine.close()  # parallel workers, KV pools
        conn.close()


# --- the front end -----------------------------------------------------------------------------
class EngineProcessClient:
    """An ``EngineClient`` whose engine runs in a child process.

    Args:
        config: the engine configuration (picklable; the child builds ``Engine(config)``).
        max_queue_len: most requests allowed to wait for admission (None = unbounded);
            beyond it ``add_request`` raises ``EngineOverloaded``.
        output_listeners: callables ``f(output)`` run on this process's reader thread for
            every output (metrics); an exception there is logged, never fatal.
        start_timeout: seconds to wait for the child to load the model.
        threads: torch threads in the engine process (None: torch's default).

    The child is started (and the model loaded) by the constructor, so a bad model fails
    here, before the server binds its port. ``start()`` begins delivering outputs.
    """

    def __init__(self, config: EngineConfig, max_queue_len: int | None = None,
                 output_listeners: list[Callable] | None = None, start_timeout: float = 900.0,
                 threads: int | None = None):
        from podserve.model.loader import resolve_model

        source = resolve_model(config.model)  # tokenizer and shapes only; weights load in the child
        self._tokenizer = source.tokenizer
        self._vocab_size = source.config.vocab_size
        self.max_queue_len = max_queue_len
        self.output_listeners = list(output_listeners or [])
        self.stats = EngineStats()
        ctx = mp.get_context("spawn")  # a fork would copy this process's threads and locks
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=_engine_main, args=(config, child_conn, threads),
                                 name="podserve-engine-core", daemon=True)
        self._proc.start()
        child_conn.close()
        if not self._conn.poll(start_timeout):
            self._proc.kill()
            raise RuntimeError(f"the engine process did not start within {start_timeout:.0f} s")
        try:
            kind, info = self._conn.recv()
        except EOFError:
            self._proc.join(5)
            raise RuntimeError(f"the engine process exited while starting (exit code {self._proc.exitcode})") from None
        if kind == "failed_to_start":
            self._proc.join(5)
            raise info
        self._model_name = info["model_name"]
        self._max_model_len = info["max_model_len"]
        self._lock = threading.Lock()  # guards _pending, the send side of the pipe and the flags
        self._pending: dict[str, _Pending] = {}
        self._num_adding = 0
        self._stopping = False
        self._dead: BaseException | None = None
        self._reader = threading.Thread(target=self._read_loop, name="podserve-engine-reader", daemon=True)

    # --- model facts -----------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def pid(self) -> int | None:
        """The engine process's pid."""
        return self._proc.pid

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin delivering the engine's outputs (idempotent)."""
        if not self._reader.is_alive() and self._reader.ident is None:
            self._reader.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the engine process; requests still in flight fail with ``EngineDead``."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            try:
                self._conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        if self._reader.ident is not None:
            self._reader.join(timeout)
        self._fail_all(EngineDead("the engine stopped before this request finished"))
        self._conn.close()

    @property
    def is_running(self) -> bool:
        return self._proc.is_alive() and not self._stopping and self._dead is None

    # --- the asyncio side ------------------------------------------------------------------------
    async def add_request(self, prompt: str | list[int], params: SamplingParams, request_id: str,
                          arrival_time: float | None = None) -> RequestStream:
        """Queue a request; return its stream once the engine accepted it.

        Raises ``ValueError`` (bad input), ``EngineOverloaded`` or ``EngineDead``.
        """
        loop = asyncio.get_running_loop()
        if isinstance(prompt, str):
            text, ids = prompt, self._tokenizer.encode(prompt)
        else:
            text, ids = None, list(prompt)
        pending = _Pending(_Stream(loop), loop.create_future(), text, ids)
        arrival = time.perf_counter() if arrival_time is None else arrival_time
        with self._lock:
            if self._dead is not None or self._stopping or not self._proc.is_alive():
                raise EngineDead("the engine is not running")
            queued = self.stats.num_waiting + self._num_adding
            if self.max_queue_len is not None and queued >= self.max_queue_len:
                raise EngineOverloaded(queued, self.max_queue_len)
            if request_id in self._pending:
                raise ValueError(f"request id {request_id!r} is already in use")
            self._pending[request_id] = pending
            self._num_adding += 1
            self._send(("add", request_id, ids, params, arrival))
        try:
            await pending.accepted
        except BaseException:
            self.abort(request_id)  # cancelled while queued: don't leave it running
            raise
        return RequestStream(self, request_id, pending.stream)

    def abort(self, request_id: str) -> None:
        """Abort a request (thread-safe); the engine frees its KV before its next step."""
        with self._lock:
            if self._pending.pop(request_id, None) is None or self._stopping:
                return
            self._send(("abort", request_id))

    def _send(self, msg) -> None:  # under self._lock
        try:
            self._conn.send(msg)
        except (OSError, BrokenPipeError) as e:
            self._dead = self._dead or e

    # --- the reader thread -----------------------------------------------------------------------
    def _read_loop(self) -> None:
        try:
            while True:
                msg = self._conn.recv()
                if msg[0] == "tick":
                    self._on_tick(*msg[1:])
        except (EOFError, OSError) as e:
            if not self._stopping:
                logger.error("the engine process exited (exit code %s)", self._proc.exitcode)
                self._dead = e
        except BaseException as e:  # a fault of the reader itself
            logger.exception("engine reader died")
            self._dead = e
        finally:
            if not self._stopping:
                self._fail_all(EngineDead(f"the engine process exited (exit code {self._proc.exitcode}) "
                                          "before this request finished"))

    def _on_tick(self, accepted, rejected, deltas, failed, stats) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        settle: list[tuple[asyncio.Future, BaseException | None]] = []
        outputs: list[RequestOutput] = []
        with self._lock:
            self.stats = stats
            self._num_adding -= len(accepted) + len(rejected)
            for rid in accepted:
                p = self._pending.get(rid)
                if p is not None:
                    settle.append((p.accepted, None))
            for rid, error in rejected:
                p = self._pending.pop(rid, None)
                if p is not None:
                    settle.append((p.accepted, error))
            for rid, message in failed:
                p = self._pending.pop(rid, None)
                if p is not None:
                    by_loop.setdefault(p.stream.loop, []).append((p.stream.queue, RequestFailed(message)))
            for d in deltas:
                p = self._pending.get(d.request_id)
                if p is None:
                    continue  # aborted here while the step ran
                p.token_ids.extend(d.new_token_ids)
                p.text += d.new_text
                out = RequestOutput(
                    request_id=d.request_id, prompt=p.prompt, prompt_token_ids=p.prompt_token_ids,
                    outputs=[CompletionOutput(0, p.text, list(p.token_ids), d.finish_reason)],
                    finished=d.finished, metrics=d.metrics, delta_text=d.new_text,
                    delta_token_ids=d.new_token_ids,
                )
                if d.finished:
                    del self._pending[d.request_id]
                outputs.append(out)
                by_loop.setdefault(p.stream.loop, []).append((p.stream.queue, out))
        for future, error in settle:
            future.get_loop().call_soon_threadsafe(_settle, future, error)
        publish(outputs, self.output_listeners, by_loop)

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for p in pending.values():
            try:
                p.accepted.get_loop().call_soon_threadsafe(_settle, p.accepted, error)
                p.stream.put(error)
            except RuntimeError:
                pass  # the event loop is already closed: nobody is listening


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return  # the caller was cancelled meanwhile
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
