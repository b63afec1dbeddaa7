"""The Router's failure handling against fake actors (no Ray cluster: milliseconds, deterministic).

A fake actor answers ``ping``/``info``/``generate`` the way a Ray actor handle does
(``method.remote(...)`` returns an awaitable; ``generate`` returns an async iterator of
awaitables); it can hang, or die (raising Ray's own ``ActorDiedError``).
"""
from __future__ import annotations

import asyncio

import pytest

ray = pytest.importorskip("ray")
from ray.exceptions import ActorDiedError  # noqa: E402

from podserve.cluster.policy import LeastOutstanding, RoundRobin  # noqa: E402
from podserve.cluster.replica import Accepted, Delta, ReplicaError, ReplicaInfo  # noqa: E402
from podserve.cluster.router import DEAD, HEALTHY, STARTING, UNHEALTHY, Replica, ReplicaUnavailable, Router  # noqa: E402
from podserve.engine.async_engine import EngineDead, EngineOverloaded  # noqa: E402
from podserve.request import SamplingParams  # noqa: E402

INFO = ReplicaInfo("fake", 64, 100, 1, "127.0.0.1", "cpu")


class FakeRay:
    """Stands in for ``ray`` inside router.py: records kills and cancels (real ones would
    auto-start a local cluster just to reject a fake handle)."""

    def __init__(self):
        self.killed, self.cancelled = [], []

    def kill(self, actor, no_restart=True):
        self.killed.append(actor)
        actor.dead = True

    def cancel(self, generator):
        self.cancelled.append(generator)


@pytest.fixture(autouse=True)
def fake_ray(monkeypatch):
    import podserve.cluster.router as router_module

    fake = FakeRay()
    monkeypatch.setattr(router_module, "ray", fake)
    yield fake
    assert not ray.is_initialized()  # fakes only: no cluster was started behind our back


async def _value(v):
    return v


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return self.fn(*args)


class _Generator:
    """What ``actor.generate.remote`` returns: ``await (await gen.__anext__())`` is the next item."""

    def __init__(self, actor, items):
        self.actor = actor
        self.items = list(items)

    async def __anext__(self):
        if self.actor.dead:
            raise ActorDiedError()
        if not self.items:
            raise StopAsyncIteration
        return _value(self.items.pop(0))


class FakeActor:
    def __init__(self, tokens: int = 3, first=None):
        self.dead = False
        self.hang = False
        self.tokens = tokens
        self.first = first
        self.num_generate = 0
        self.ping = _Method(self._ping)
        self.info = _Method(self._info)
        self.generate = _Method(self._generate)

    async def _ping(self):
        if self.dead:
            raise ActorDiedError()
        while self.hang:
            await asyncio.sleep(0.01)
        return {"is_running": True, "num_running": 0, "num_waiting": 0, "kv_cache_usage": 0.0}

    async def _info(self):
        if self.dead:
            raise ActorDiedError()
        return INFO

    def _generate(self, prompt, params, request_id, age_s):
        self.num_generate += 1
        deltas = [Delta([7], "x", i == self.tokens - 1, "length" if i == self.tokens - 1 else None)
                  for i in range(self.tokens)]
        return _Generator(self, [self.first or Accepted(1), *deltas])


def make_router(actors, policy=None, auto_restart=False, spawn=None, **kw) -> Router:
    replicas = [Replica(i, a, f"fake-{i}", state=HEALTHY, info=INFO) for i, a in enumerate(actors)]
    spawned = []

    def default_spawn(replica_id, generation):
        actor = FakeActor()
        spawned.append(actor)
        return actor, f"fake-{replica_id}-r{generation}"

    router = Router(replicas, spawn or default_spawn, policy or RoundRobin(), tokenizer=None, info=INFO,
                    health_check_interval_s=0.02, health_check_timeout_s=0.1, auto_restart=auto_restart,
                    restart_delay_s=0.05, **kw)
    router.spawned = spawned
    return router


async def _wait(predicate, timeout=2.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def _generate(router, rid="r"):
    stream = await router.add_request([1, 2], SamplingParams(max_tokens=3), rid)
    outs = [o async for o in stream]
    return stream, outs


def test_streams_rebuild_cumulative_outputs_and_release_outstanding():
    async def main():
        router = make_router([FakeActor(), FakeActor()])
        router.start()
        stream, outs = await _generate(router)
        assert [o.outputs[0].text for o in outs] == ["x", "xx", "xxx"]
        assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "length"
        assert outs[-1].outputs[0].token_ids == [7, 7, 7] and outs[-1].delta_token_ids == [7]
        assert [r.num_outstanding for r in router.replicas] == [0, 0]
        router.shutdown()

    asyncio.run(main())


def test_closing_an_unfinished_stream_cancels_it_on_the_replica(fake_ray):
    async def main():
        router = make_router([FakeActor(tokens=5)])
        router.start()
        stream = await router.add_request([1], SamplingParams(max_tokens=5), "left")
        await stream.__anext__()
        stream.close()
        stream.close()  # idempotent
        assert fake_ray.cancelled == [stream._generator] and router.replicas[0].num_outstanding == 0
        router.shutdown()
        assert fake_ray.killed == [router.replicas[0].actor]

    asyncio.run(main())


def test_a_hung_replica_leaves_and_rejoins_routing():
    async def main():
        a, b = FakeActor(), FakeActor()
        router = make_router([a, b])
        router.start()
        a.hang = True
        await _wait(lambda: router.replicas[0].state == UNHEALTHY)
        assert "no answer to a health check" in router.replicas[0].last_error
        for i in range(4):
            await _generate(router, f"r{i}")
        assert (a.num_generate, b.num_generate) == (0, 4)
        a.hang = False
        await _wait(lambda: router.replicas[0].state == HEALTHY)
        await _generate(router, "back")
        assert a.num_generate == 1
        # Both slow (an overloaded host): still served, by the slow ones, rather than 503 for all.
        a.hang = b.hang = True
        await _wait(lambda: [r.state for r in router.replicas] == [UNHEALTHY, UNHEALTHY])
        _, outs = await _generate(router, "slow")
        assert outs[-1].finished
        ok, report = router.health_report()
        assert ok and report["status"] == "degraded"
        a.hang = b.hang = False
        router.shutdown()

    asyncio.run(main())


def test_dead_replica_fails_in_flight_requests_naming_it_and_restarts_with_backoff():
    async def main():
        a, b = FakeActor(), FakeActor()
        router = make_router([a, b], policy=LeastOutstanding(), auto_restart=True)
        router.start()
        stream = await router.add_request([1], SamplingParams(max_tokens=3), "victim")
        assert stream.replica.replica_id == 0 and router.replicas[0].num_outstanding == 1
        a.dead = True  # accepted, no output yet: in flight
        with pytest.raises(ReplicaUnavailable, match=r"replica 0 \(fake-0\) died while serving request victim"):
            async for _ in stream:
                pass
        assert router.replicas[0].state in (DEAD, STARTING) and router.replicas[0].num_outstanding == 0
        assert router.replicas[0].num_failed == 1
        await _generate(router, "meanwhile")  # goes to the survivor
        assert b.num_generate == 1
        await _wait(lambda: router.replicas[0].state == HEALTHY)  # automatic restart
        assert router.replicas[0].num_restarts == 1 and router.replicas[0].actor is router.spawned[0]
        assert router.replicas[0].actor_name == "fake-0-r1"
        router.shutdown()

    asyncio.run(main())


def test_failed_restarts_back_off_exponentially():
    async def main():
        attempts = []

        def spawn(replica_id, generation):
            attempts.append(asyncio.get_running_loop().time())
            actor = FakeActor()
            actor.dead = generation < 3  # the first two restarts fail to load
            return actor, f"fake-{replica_id}-r{generation}"

        a = FakeActor()
        router = make_router([a], auto_restart=True, spawn=spawn)
        router.start()
        a.dead = True
        await _wait(lambda: router.replicas[0].state == HEALTHY and router.replicas[0].generation == 3, timeout=5)
        gaps = [later - earlier for earlier, later in zip(attempts, attempts[1:])]
        assert gaps[0] >= 0.1 - 0.01 and gaps[1] >= 0.2 - 0.01  # 0.05 s doubled per failure
        assert router.replicas[0].start_failures == 0 and router.replicas[0].num_restarts == 3
        router.shutdown()

    asyncio.run(main())


def test_a_replica_dead_before_accepting_is_skipped_and_the_request_retried():
    async def main():
        a, b = FakeActor(), FakeActor()
        router = make_router([a, b])
        router.start()
        a.dead = True  # the monitor has not noticed yet: the router still thinks it healthy
        router.replicas[0].state = HEALTHY
        _, outs = await _generate(router, "retried")
        assert outs[-1].finished and (a.num_generate, b.num_generate) == (1, 1)
        assert router.replicas[0].state == DEAD and router.replicas[0].num_outstanding == 0
        b.dead = True
        router.replicas[1].state = HEALTHY
        with pytest.raises(EngineDead, match="no healthy replica"):
            await router.add_request([1], SamplingParams(), "nowhere")
        router.shutdown()

    asyncio.run(main())


def test_replica_errors_map_to_the_engine_exceptions():
    async def main():
        router = make_router([FakeActor(first=ReplicaError("bad_request", "prompt too long"))])
        router.start()
        with pytest.raises(ValueError, match="prompt too long"):
            await router.add_request([1], SamplingParams(), "bad")
        router.replicas[0].actor.first = ReplicaError("overloaded", "server overloaded: 9 waiting", 3)
        with pytest.raises(EngineOverloaded, match="replica 0: server overloaded") as info:
            await router.add_request([1], SamplingParams(), "busy")
        assert info.value.retry_after_s == 3
        assert router.replicas[0].num_outstanding == 0 and router.replicas[0].state == HEALTHY
        router.shutdown()

    asyncio.run(main())


def test_health_report_and_router_metrics():
    async def main():
        from podserve.cluster.metrics import ClusterMetrics

        router = make_router([FakeActor(), FakeActor()])
        router.start()
        await _generate(router)
        router.replicas[1].state = DEAD
        ok, report = router.health_report()
        assert ok and report["status"] == "degraded"
        assert [r["state"] for r in report["replicas"]] == ["healthy", "dead"]
        families = {f.name: f for f in ClusterMetrics(router, "fake").router_families()}
        healthy = {s.labels["replica"]: s.value for s in families["podserve:replica_healthy"].samples}
        assert healthy == {"0": 1.0, "1": 0.0}
        router.replicas[0].state = DEAD
        assert router.health_report()[0] is False and router.health_report()[1]["status"] == "unavailable"
        router.shutdown()

    asyncio.run(main())
