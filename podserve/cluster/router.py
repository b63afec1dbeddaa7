"""The front end's global scheduler: an ``EngineClient`` over engine replicas in Ray actors.

Every request goes to one healthy replica chosen by the routing policy; its deltas stream back
through a Ray generator and are rebuilt into cumulative ``RequestOutput`` s, so the OpenAI
handlers cannot tell a replica from a local ``AsyncEngine``.

Failure handling. A replica is *healthy* (routed to), *unhealthy* (alive but its health check
timed out: not routed to until it answers again, unless no replica is healthy), *dead* (its
actor died or its engine loop stopped) or *starting* (a new actor is loading the model). A dead actor is noticed at once by
any request streaming from it (Ray fails the stream with ``ActorDiedError``) and otherwise by
the next health check (every ``health_check_interval_s``): from then on nothing is routed to
it. Requests in flight on it fail with ``ReplicaUnavailable`` (an ``EngineDead``: HTTP 503,
or an in-band error event on a stream) naming the replica; requests not yet accepted by it are
retried on another replica. With ``auto_restart`` a dead replica gets a fresh actor after a
back-off (``restart_delay_s``, doubling while restarts keep failing); ``restart(i)`` (the
admin endpoint) restarts one on demand.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Callable

import ray
from ray.exceptions import RayActorError

from podserve.cluster.policy import RoutingPolicy
from podserve.cluster.replica import Accepted, Delta, ReplicaError, ReplicaInfo
from podserve.engine.async_engine import EngineDead, EngineOverloaded, RequestFailed
from podserve.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from podserve.request import SamplingParams

logger = logging.getLogger("podserve.router")

HEALTHY, UNHEALTHY, DEAD, STARTING, STOPPED = "healthy", "unhealthy", "dead", "starting", "stopped"
MAX_RESTART_DELAY_S = 60.0


class ReplicaUnavailable(EngineDead):
    """The replica serving a request died (or stopped answering) before the request finished."""


class ReplicaOverloaded(EngineOverloaded):
    """The chosen replica's waiting queue is full (HTTP 503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: int = 1):
        RuntimeError.__init__(self, message)
        self.retry_after_s = retry_after_s


@dataclasses.dataclass(eq=False)
class Replica:
    """The router's view of one replica slot (its actor changes on every restart)."""

    replica_id: int
    actor: Any
    actor_name: str
    state: str = STARTING
    info: ReplicaInfo | None = None
    num_outstanding: int = 0
    """Requests routed here and not finished: the least-outstanding policy's signal."""
    num_routed: int = 0
    num_failed: int = 0
    """Requests that failed because this replica died under them."""
    num_restarts: int = 0
    generation: int = 0
    last_error: str | None = None
    stats: dict = dataclasses.field(default_factory=dict)
    """The last health check's engine stats (running, waiting, KV usage, ...)."""
    start_failures: int = 0
    restart_task: asyncio.Task | None = None

    def describe(self) -> dict:
        """This replica for ``/health``."""
        d = {"replica": self.replica_id, "state": self.state, "actor_name": self.actor_name,
             "num_outstanding": self.num_outstanding, "num_routed": self.num_routed,
             "num_failed": self.num_failed, "num_restarts": self.num_restarts, "last_error": self.last_error}
        if self.info is not None:
            d.update(pid=self.info.pid, node_ip=self.info.node_ip, device=self.info.device)
        for key in ("num_running", "num_waiting", "kv_cache_usage"):
            if key in self.stats:
                d[key] = self.stats[key]
        return d


class RemoteRequestStream:
    """One request's outputs from a replica's generator (an ``OutputStream``)."""

    def __init__(self, router: "Router", replica: Replica, actor, request_id: str, generator,
                 prompt_ids: list[int], arrival_time: float):
        self.router = router
        self.replica = replica
        self.actor = actor
        self.request_id = request_id
        self.finished = False
        self._generator = generator
        self._prompt_ids = prompt_ids
        self._arrival_time = arrival_time
        self._token_ids: list[int] = []
        self._text = ""
        self._released = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        replica = self.replica
        try:
            item = await (await self._generator.__anext__())
        except StopAsyncIteration:
            self._fail()
            raise EngineDead(f"replica {replica.replica_id} ended request {self.request_id} before it finished") from None
        except RayActorError as e:
            self._fail()
            replica.num_failed += 1
            self.router.replica_died(replica, self.actor, e)
            raise ReplicaUnavailable(
                f"replica {replica.replica_id} ({replica.actor_name}) died while serving request {self.request_id}: "
                f"{_first_line(e).rstrip('.')}; the request was not completed, retry it") from None
        except asyncio.CancelledError:
            raise  # the handler's close() aborts on the replica
        except Exception as e:  # a Ray-level fault of this one request
            self._fail()
            raise RequestFailed(f"request {self.request_id} failed on replica {replica.replica_id}: {_first_line(e)}") from e
        if isinstance(item, ReplicaError):
            self._fail()
            raise _error_from(item, replica)
        assert isinstance(item, Delta), item
        self._token_ids.extend(item.token_ids)
        self._text += item.text
        if item.finished:
            self.finished = True
            self._release()
        return RequestOutput(
            request_id=self.request_id, prompt=None, prompt_token_ids=self._prompt_ids,
            outputs=[CompletionOutput(0, self._text, list(self._token_ids), item.finish_reason if item.finished else None)],
            finished=item.finished,
            metrics=RequestMetrics(self._arrival_time, None, None, [], None),
            delta_text=item.text, delta_token_ids=list(item.token_ids),
        )

    def close(self) -> None:
        """Abort on the replica unless finished: ``ray.cancel`` cancels its ``generate`` coroutine,
        whose ``finally`` aborts the request there (idempotent)."""
        if self.finished:
            return
        self.finished = True
        self._release()
        try:
            ray.cancel(self._generator)
        except Exception:  # the actor is gone or the task already ended: nothing left to abort
            logger.debug("cancel of %s failed", self.request_id, exc_info=True)

    def _fail(self) -> None:
        self.finished = True
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.replica.num_outstanding -= 1


class Router:
    """Route requests over replicas; health-check, restart, report.

    Args:
        replicas: the started replicas (state HEALTHY), in id order.
        spawn: ``spawn(replica_id, generation) -> (actor, actor_name)`` creates a new actor
            (it loads the model in the background); used by restarts.
        policy: which healthy replica gets each request.
        tokenizer: the model's tokenizer (the handlers tokenize in the front end).
        info: model facts from a replica (every replica serves the same model).
        health_check_interval_s: seconds between pings of every replica.
        health_check_timeout_s: a ping unanswered this long marks the replica unhealthy.
        auto_restart: restart dead replicas automatically (else only via ``restart``).
        restart_delay_s: back-off before an automatic restart; doubles after each failed start.
        start_timeout_s: a new actor must answer ``info`` within this long.
        on_stop: called by ``shutdown`` after the actors are killed (e.g. ``ray.shutdown``).
    """

    def __init__(self, replicas: list[Replica], spawn: Callable[[int, int], tuple[Any, str]], policy: RoutingPolicy,
                 tokenizer, info: ReplicaInfo, *, health_check_interval_s: float = 1.0,
                 health_check_timeout_s: float = 5.0, auto_restart: bool = True, restart_delay_s: float = 1.0,
                 start_timeout_s: float = 600.0, namespace: str | None = None, on_stop: Callable[[], None] | None = None):
        self.replicas = replicas
        self.spawn = spawn
        self.policy = policy
        self._tokenizer = tokenizer
        self.info = info
        self.health_check_interval_s = health_check_interval_s
        self.health_check_timeout_s = health_check_timeout_s
        self.auto_restart = auto_restart
        self.restart_delay_s = restart_delay_s
        self.start_timeout_s = start_timeout_s
        self.namespace = namespace
        self.on_stop = on_stop
        self._monitor: asyncio.Task | None = None
        self._running = False

    # --- EngineClient: model facts and lifecycle -----------------------------------------
    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def model_name(self) -> str:
        return self.info.model_name

    @property
    def max_model_len(self) -> int:
        return self.info.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.info.vocab_size

    @property
    def is_running(self) -> bool:
        return self._running and any(r.state in (HEALTHY, UNHEALTHY) for r in self.replicas)

    def start(self) -> None:
        """Start the health monitor (call inside the server's event loop)."""
        self._running = True
        self._monitor = asyncio.get_running_loop().create_task(self._monitor_loop(), name="podserve-health-monitor")

    def shutdown(self) -> None:
        """Stop monitoring and restarting, kill every replica actor, then ``on_stop``."""
        self._running = False
        for task in [self._monitor] + [r.restart_task for r in self.replicas]:
            if task is not None:
                task.cancel()
        for r in self.replicas:
            r.state = STOPPED
            _kill(r.actor)
        if self.on_stop is not None:
            self.on_stop()

    # --- EngineClient: requests ----------------------------------------------------------
    async def add_request(self, prompt: str | list[int], params: SamplingParams, request_id: str,
                          arrival_time: float | None = None) -> RemoteRequestStream:
        """Send the request to a healthy replica; a replica that turns out dead before accepting
        it is skipped and the next one tried. Raises like ``AsyncEngine.add_request``."""
        if not self._running:
            raise EngineDead("the server is shutting down")
        arrival = time.perf_counter() if arrival_time is None else arrival_time
        tried: set[int] = set()
        while True:
            candidates = [r for r in self.replicas if r.state == HEALTHY and r.replica_id not in tried]
            if not candidates:
                # Every live replica missed a health check: an overloaded host answers slowly, a
                # dead one not at all. Slow beats a certain 503 (Envoy's "panic mode").
                candidates = [r for r in self.replicas if r.state == UNHEALTHY and r.replica_id not in tried]
            if not candidates:
                raise EngineDead("no healthy replica to serve the request (" +
                                 ", ".join(f"replica {r.replica_id}: {r.state}" for r in self.replicas) + ")")
            replica = self.policy.choose(candidates)
            tried.add(replica.replica_id)
            actor = replica.actor
            replica.num_outstanding += 1
            replica.num_routed += 1
            generator = actor.generate.remote(prompt, params, request_id, time.perf_counter() - arrival)
            try:
                first = await (await generator.__anext__())
            except RayActorError as e:
                replica.num_outstanding -= 1
                self.replica_died(replica, actor, e)
                continue  # not accepted anywhere yet: safe to send elsewhere
            except BaseException:  # cancelled (client left) or a Ray fault: don't leave it running
                replica.num_outstanding -= 1
                _cancel(generator)
                raise
            if isinstance(first, ReplicaError):
                replica.num_outstanding -= 1
                if first.kind == "engine_dead":  # its engine loop stopped: never accepted, go elsewhere
                    self.replica_died(replica, actor, first.message)
                    continue
                raise _error_from(first, replica)
            assert isinstance(first, Accepted), first
            ids = list(prompt) if not isinstance(prompt, str) else []
            return RemoteRequestStream(self, replica, actor, request_id, generator, ids, arrival)

    # --- health --------------------------------------------------------------------------
    def replica_died(self, replica: Replica, actor, error) -> None:
        """Stop routing to ``replica`` (if ``actor`` is still its actor) and schedule a restart."""
        if replica.actor is not actor or replica.state in (DEAD, STARTING, STOPPED):
            return  # already handled, or the slot has a new actor by now
        replica.state = DEAD
        replica.last_error = error if isinstance(error, str) else _first_line(error)
        logger.warning("replica %d (%s) is dead: %s", replica.replica_id, replica.actor_name, replica.last_error)
        _kill(actor)  # an engine that stopped inside a live actor: free its resources for the restart
        if self.auto_restart and self._running:
            self._schedule_restart(replica, self._backoff(replica))

    async def restart(self, replica_id: int) -> Replica:
        """Replace replica ``replica_id``'s actor now (whatever its state); returns at once,
        the new actor loads in the background (state STARTING, then HEALTHY or DEAD)."""
        replica = self.replicas[replica_id]
        if replica.state == STARTING and replica.restart_task is not None and not replica.restart_task.done():
            return replica  # already on its way
        if replica.restart_task is not None:
            replica.restart_task.cancel()  # a pending back-off: restart now instead
        self._schedule_restart(replica, 0.0)
        await asyncio.sleep(0)  # let the task mark it STARTING
        return replica

    def _backoff(self, replica: Replica) -> float:
        return min(MAX_RESTART_DELAY_S, self.restart_delay_s * 2 ** replica.start_failures)

    def _schedule_restart(self, replica: Replica, delay_s: float) -> None:
        replica.restart_task = asyncio.get_running_loop().create_task(self._restart(replica, delay_s))

    async def _restart(self, replica: Replica, delay_s: float) -> None:
        if delay_s > 0:
            logger.info("restarting replica %d in %.1f s", replica.replica_id, delay_s)
            await asyncio.sleep(delay_s)
        old = replica.actor
        replica.state = STARTING
        replica.generation += 1
        replica.num_restarts += 1
        _kill(old)  # in-flight requests on it fail with ReplicaUnavailable
        actor, name = self.spawn(replica.replica_id, replica.generation)
        replica.actor, replica.actor_name, replica.stats = actor, name, {}
        try:
            replica.info = await asyncio.wait_for(actor.info.remote(), self.start_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            replica.start_failures += 1
            replica.state = DEAD
            replica.last_error = f"restart failed: {_first_line(e)}"
            logger.error("replica %d failed to start: %s", replica.replica_id, replica.last_error)
            _kill(actor)
            if self.auto_restart and self._running:
                self._schedule_restart(replica, self._backoff(replica))
            return
        replica.start_failures = 0
        replica.state = HEALTHY
        logger.info("replica %d is back (%s, pid %d)", replica.replica_id, name, replica.info.pid)

    async def _monitor_loop(self) -> None:
        while True:
            results = await asyncio.gather(*(self._check(r) for r in self.replicas if r.state in (HEALTHY, UNHEALTHY)),
                                           return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    logger.error("health check failed", exc_info=result)
            await asyncio.sleep(self.health_check_interval_s)

    async def _check(self, replica: Replica) -> None:
        actor = replica.actor
        try:
            stats = await asyncio.wait_for(actor.ping.remote(), self.health_check_timeout_s)
        except RayActorError as e:
            self.replica_died(replica, actor, e)
            return
        except Exception as e:  # timeout (or a Ray fault): alive maybe, but not answering
            if replica.actor is actor and replica.state == HEALTHY:
                replica.state = UNHEALTHY
                replica.last_error = (f"no answer to a health check in {self.health_check_timeout_s:g} s"
                                      if isinstance(e, asyncio.TimeoutError) else _first_line(e))
                logger.warning("replica %d is unhealthy: %s", replica.replica_id, replica.last_error)
            return
        if replica.actor is not actor or replica.state not in (HEALTHY, UNHEALTHY):
            return
        if not stats.get("is_running", True):
            self.replica_died(replica, actor, "its engine loop stopped")
            return
        if replica.state == UNHEALTHY:
            logger.info("replica %d answers health checks again", replica.replica_id)
        replica.state = HEALTHY
        replica.stats = stats

    def health_report(self) -> tuple[bool, dict]:
        """(serving at all, the ``/health`` body): overall status plus every replica's state.

        ``ok``: every replica healthy; ``degraded``: some are not but requests are served (by
        healthy ones, or by slow ones when none is healthy); ``unavailable``: none is alive."""
        healthy = sum(r.state == HEALTHY for r in self.replicas)
        alive = sum(r.state in (HEALTHY, UNHEALTHY) for r in self.replicas)
        status = "ok" if healthy == len(self.replicas) else ("degraded" if alive else "unavailable")
        return alive > 0 and self._running, {
            "status": status, "routing": self.policy.name, "ray_namespace": self.namespace,
            "replicas": [r.describe() for r in self.replicas],
        }

    def build_metrics(self, model_name: str):
        """The ``/metrics`` exporter: every replica's registry labelled by replica, plus the router's."""
        from podserve.cluster.metrics import ClusterMetrics

        return ClusterMetrics(self, model_name)


def _error_from(err: ReplicaError, replica: Replica) -> Exception:
    if err.kind == "bad_request":
        return ValueError(err.message)
    if err.kind == "overloaded":
        return ReplicaOverloaded(f"replica {replica.replica_id}: {err.message}", err.retry_after_s)
    if err.kind == "engine_dead":
        return ReplicaUnavailable(f"replica {replica.replica_id}: {err.message}")
    return RequestFailed(f"replica {replica.replica_id}: {err.message}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _kill(actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already dead, or Ray is shutting down
        pass


def _cancel(generator) -> None:
    try:
        ray.cancel(generator)
    except Exception:
        pass
