"""AsyncEngine: the synchronous Engine stepped by one background thread, fed by asyncio callers.

Only the engine thread touches the Engine. HTTP handlers hand it commands (add, abort)
through a lock-protected list and get results back on per-request ``asyncio.Queue`` s via
``loop.call_soon_threadsafe``, so the event loop never waits on a model forward. When there
is no work the thread sleeps on a ``threading.Condition``; a new command wakes it.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from podserve.engine.outputs import RequestOutput
from podserve.request import SamplingParams

logger = logging.getLogger(__name__)


class EngineOverloaded(RuntimeError):
    """The waiting queue is at its limit; the caller should retry later (HTTP 503)."""

    def __init__(self, num_waiting: int, limit: int, retry_after_s: int = 1):
        super().__init__(f"server overloaded: {num_waiting} requests waiting (limit {limit}); retry later")
        self.retry_after_s = retry_after_s


class EngineDead(RuntimeError):
    """The engine loop has stopped (shutdown or a fatal error); no request can be served."""


class RequestFailed(RuntimeError):
    """Processing this one request raised; the server keeps serving the others (HTTP 500)."""


@dataclass
class EngineStats:
    """A snapshot the loop refreshes after every step (read by /metrics without locking)."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    num_preemptions: int = 0
    num_iterations: int = 0
    busy_s: float = 0.0
    """Wall time spent inside ``engine.step()`` since start: busy_s / uptime is the engine's utilisation."""

    def after(self, engine, busy_s: float | None) -> "EngineStats":
        """The next snapshot of ``engine``; ``busy_s`` is the duration of the step just run
        (None: no step ran)."""
        s = engine.scheduler
        return EngineStats(
            num_running=s.num_running,
            num_waiting=s.num_waiting,
            kv_cache_usage=engine.kv.usage,
            num_preemptions=s.num_preemptions,
            num_iterations=self.num_iterations + (busy_s is not None),
            busy_s=self.busy_s + (busy_s or 0.0),
        )


@dataclass
class _Add:
    request_id: str
    prompt: str | list[int]
    params: SamplingParams
    arrival_time: float
    future: Future


class _Stream:
    """Where the engine thread delivers one request's outputs (an asyncio queue on the server loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def _put_all(items: list) -> None:
    for queue, item in items:
        queue.put_nowait(item)


def publish(outputs: list, listeners: list, by_loop: dict) -> None:
    """Run the output listeners on every output, then hand each event loop its
    ``(queue, item)`` pairs in one wake-up (each call_soon_threadsafe writes to the loop's
    self-pipe). A listener's exception is logged, never fatal."""
    for out in outputs:
        try:
            for listener in listeners:
                listener(out)
        except Exception:
            logger.exception("output listener failed on %s", out.request_id)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:
            pass  # that loop is closed: its callers are gone


class RequestStream:
    """The outputs of one accepted request, in order; iterate it, then ``close()`` it.

    ``close()`` before the final output aborts the request (a disconnected client), which
    frees its KV before the engine's next step. Iteration raises ``RequestFailed`` or
    ``EngineDead`` if the engine could not finish the request.
    """

    def __init__(self, owner: "AsyncEngine", request_id: str, stream: _Stream):
        self.owner = owner
        self.request_id = request_id
        self._stream = stream
        self.finished = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._stream.queue.get()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        self.finished = item.finished
        return item

    def close(self) -> None:
        """Abort the request unless it already finished (idempotent)."""
        if not self.finished:
            self.finished = True
            self.owner.abort(self.request_id)


class AsyncEngine:
    """Drive ``engine`` from a background thread; serve many asyncio callers (an ``EngineClient``).

    Args:
        engine: a built ``Engine``; from now on only the loop thread may call it.
        max_queue_len: most requests allowed to wait for admission (None = unbounded);
            beyond it ``generate`` raises ``EngineOverloaded``.
        output_listeners: callables ``f(output)`` run on the loop thread for every output
            (metrics); an exception there is logged, never fatal.
    """

    def __init__(self, engine, max_queue_len: int | None = None, output_listeners: list[Callable] | None = None):
        self.engine = engine
        self.max_queue_len = max_queue_len
        self.output_listeners = list(output_listeners or [])
        self.stats = EngineStats()
        self._cond = threading.Condition()
        self._adds: list[_Add] = []
        self._aborts: list[str] = []
        self._streams: dict[str, _Stream] = {}  # touched under _cond only
        self._stopping = False
        self._dead: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="podserve-engine", daemon=True)

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the engine thread."""
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort whatever is left, stop the thread and wait for it."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    # --- model facts (the EngineClient interface; read-only, safe from any thread) -------------
    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.engine.model_config.vocab_size

    # --- the asyncio side ------------------------------------------------------------------
    async def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str,
        arrival_time: float | None = None,
    ) -> "RequestStream":
        """Queue a request; return once the engine accepted it.

        Raises ``ValueError`` (bad input, from the engine), ``EngineOverloaded`` or
        ``EngineDead``, so callers can answer 400/503 before any response starts.
        """
        stream = _Stream(asyncio.get_running_loop())
        future: Future = Future()
        with self._cond:
            if self._dead is not None or self._stopping:
                raise EngineDead("the engine is not running")
            queued = self.stats.num_waiting + len(self._adds)
            if self.max_queue_len is not None and queued >= self.max_queue_len:
                raise EngineOverloaded(queued, self.max_queue_len)
            if request_id in self._streams:
                raise ValueError(f"request id {request_id!r} is already in use")
            self._streams[request_id] = stream
            arrival = time.perf_counter() if arrival_time is None else arrival_time
            self._adds.append(_Add(request_id, prompt, params, arrival, future))
            self._cond.notify()
        try:
            await asyncio.wrap_future(future)  # re-raises the engine's ValueError
        except BaseException:
            self.abort(request_id)  # cancelled while queued: don't leave it running
            raise
        return RequestStream(self, request_id, stream)

    async def generate(self, prompt, params: SamplingParams, request_id: str, arrival_time: float | None = None):
        """``add_request`` then yield every output; closing early aborts the request."""
        stream = await self.add_request(prompt, params, request_id, arrival_time)
        try:
            async for out in stream:
                yield out
        finally:
            stream.close()

    def abort(self, request_id: str) -> None:
        """Abort a request (thread-safe); it frees its KV before the next step."""
        with self._cond:
            self._streams.pop(request_id, None)
            self._aborts.append(request_id)
            self._cond.notify()

    # --- the engine thread -----------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        try:
            while True:
                with self._cond:
                    while not (self._adds or self._aborts or self._stopping or engine.has_unfinished_requests()):
                        self._cond.wait()  # idle: sleep until a command arrives
                    adds, self._adds = self._adds, []
                    aborts, self._aborts = self._aborts, []
                    stopping = self._stopping
                # Adds before aborts: a request cancelled while its add was still queued must
                # not start running after its abort went by.
                for add in adds:
                    self._apply_add(add)
                for rid in aborts:
                    engine.abort_request(rid)
                if stopping:
                    break
                if engine.has_unfinished_requests():  # commands alone (e.g. the last abort) need no step
                    self._step()
                else:
                    self._refresh_stats()
        except BaseException as e:  # a fault of the loop itself: fail everyone, refuse new work
            logger.exception("engine loop died")
            self._dead = e
        finally:
            self._abort_all(EngineDead("the engine stopped before this request finished"))

    def _apply_add(self, add: _Add) -> None:
        # A caller cancelled while queued has cancelled the future (asyncio.wrap_future does);
        # never start its request. Past this point the future can no longer be cancelled.
        if not add.future.set_running_or_notify_cancel():
            with self._cond:
                self._streams.pop(add.request_id, None)
            return
        try:
            self.engine.add_request(add.prompt, add.params, add.request_id, add.arrival_time)
        except Exception as e:  # bad input: only this request fails
            with self._cond:
                self._streams.pop(add.request_id, None)
            add.future.set_exception(e)
            return
        add.future.set_result(None)

    def _step(self) -> None:
        engine = self.engine
        start = time.perf_counter()
        try:
            outputs = engine.step()
        except Exception as e:
            # The batch's requests are in an unknown state; fail those that ran and keep
            # serving. The scheduler exposes no batch here, so every running request goes.
            logger.exception("engine step failed")
            self._fail_running(e)
            outputs = []
        self._refresh_stats(busy_s=time.perf_counter() - start)
        if outputs:
            self._deliver(outputs)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        """Hand a step's outputs to their streams: one wake-up per event loop, not per request
        (each call_soon_threadsafe writes to the loop's self-pipe)."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        with self._cond:
            for out in outputs:
                stream = self._streams.get(out.request_id)
                if out.finished:
                    self._streams.pop(out.request_id, None)
                if stream is not None:
                    by_loop.setdefault(stream.loop, []).append((stream.queue, out))
        publish(outputs, self.output_listeners, by_loop)

    def _fail_running(self, error: Exception) -> None:
        scheduler = self.engine.scheduler
        victims = [r.request_id for r in scheduler.running]
        for rid in victims:
            self.engine.abort_request(rid)
            self._fail(rid, RequestFailed(f"request {rid} failed inside the engine: {error!r}"))

    def _fail(self, request_id: str, error: BaseException) -> None:
        with self._cond:
            stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.put(error)

    def _abort_all(self, error: BaseException) -> None:
        with self._cond:
            streams, self._streams = self._streams, {}
            adds, self._adds = self._adds, []
        for add in adds:
            if add.future.set_running_or_notify_cancel():  # False: its caller already left
                add.future.set_exception(error)
        for rid, stream in streams.items():
            try:
                self.engine.abort_request(rid)
            except Exception:
                logger.exception("abort of %s failed during shutdown", rid)
            try:
                stream.put(error)
            except RuntimeError:
                pass  # the event loop is already closed: nobody is listening
        self._refresh_stats()

    def _refresh_stats(self, busy_s: float | None = None) -> None:
        """New snapshot; ``busy_s`` is the duration of the step just run (None: no step)."""
        self.stats = self.stats.after(self.engine, busy_s)
