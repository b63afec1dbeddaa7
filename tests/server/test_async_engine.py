"""AsyncEngine in-process on the tiny random-weight preset: aborts, fault isolation, idling, overload."""
from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from podserve.config import EngineConfig
from podserve.engine.async_engine import AsyncEngine, EngineOverloaded, RequestFailed
from podserve.engine.engine import Engine
from podserve.entrypoints.openai.server import build_app
from podserve.request import SamplingParams

LONG = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def engine():
    """One tiny engine for the module; each test leaves it empty (asserted at teardown)."""
    return Engine(EngineConfig(model="tiny-llama"))


@pytest.fixture()
def async_engine(engine):
    ae = AsyncEngine(engine)
    ae.start()
    yield ae
    ae.shutdown()
    assert not engine.has_unfinished_requests() and engine.kv.usage == 0


async def _wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def test_close_aborts_within_one_iteration_and_frees_kv(async_engine):
    engine = async_engine.engine

    async def main():
        stream = await async_engine.add_request("tell me a long story", LONG, "r1")
        await stream.__anext__()
        await stream.__anext__()
        assert engine.kv.usage > 0
        iteration = async_engine.stats.num_iterations
        stream.close()
        await _wait_until(lambda: not engine.has_unfinished_requests())
        # the abort is applied before the next step: at most the step in flight ran after close()
        assert async_engine.stats.num_iterations - iteration <= 1
        assert engine.kv.usage == 0 and not engine.has_unfinished_requests()

    asyncio.run(main())


def test_step_failure_fails_running_requests_only_and_serving_continues(async_engine, monkeypatch):
    engine = async_engine.engine
    real_step = engine.step
    armed = threading.Event()

    def step():
        if armed.is_set():
            armed.clear()
            raise RuntimeError("injected kernel fault")
        return real_step()

    monkeypatch.setattr(engine, "step", step)

    async def main():
        victim = await async_engine.add_request("victim", LONG, "victim")
        await victim.__anext__()
        armed.set()
        with pytest.raises(RequestFailed, match="injected kernel fault"):
            async for _ in victim:
                pass
        assert engine.kv.usage == 0
        outs = [o async for o in async_engine.generate("next", SamplingParams(max_tokens=4, ignore_eos=True), "after")]
        assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 4

    asyncio.run(main())


def test_bad_input_fails_only_that_request(async_engine):
    async def main():
        good = await async_engine.add_request("fine", SamplingParams(max_tokens=3, ignore_eos=True), "good")
        with pytest.raises(ValueError, match="prompt token ids"):
            await async_engine.add_request([10**6], SamplingParams(max_tokens=3), "bad")
        outs = [o async for o in good]
        assert outs[-1].finished

    asyncio.run(main())


def test_idle_loop_does_not_spin(async_engine):
    """No work: the engine thread sleeps on its condition, so no iterations and ~no CPU time
    (process_time counts every thread of this process, the engine thread included)."""
    time.sleep(0.2)
    iterations = async_engine.stats.num_iterations
    start = time.process_time()
    time.sleep(1.0)
    assert async_engine.stats.num_iterations == iterations
    assert time.process_time() - start < 0.2


def test_queue_limit_raises_overloaded(engine):
    ae = AsyncEngine(engine, max_queue_len=2)
    # not started: nothing leaves the queue, so the third request finds it full

    async def main():
        tasks = [asyncio.ensure_future(ae.add_request("x", LONG, f"q{i}")) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(EngineOverloaded):
            await ae.add_request("x", LONG, "q2")
        for t in tasks:
            t.cancel()

    asyncio.run(main())


def test_exception_in_one_requests_processing_is_500_and_others_are_served(engine, monkeypatch):
    """A fault in the HTTP layer's handling of one request (here: tokenizing its prompt)."""
    ae = AsyncEngine(engine)
    app = build_app(ae)
    tokenizer = ae.engine.tokenizer
    real_encode = tokenizer.encode

    def encode(text, *args, **kwargs):
        if "poison" in text:
            raise RuntimeError("tokenizer bug")
        return real_encode(text, *args, **kwargs)

    monkeypatch.setattr(tokenizer, "encode", encode)

    async def main():
        ae.start()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = {"max_tokens": 4, "ignore_eos": True}
            results = await asyncio.gather(
                client.post("/v1/completions", json={"prompt": "poison", **body}),
                client.post("/v1/completions", json={"prompt": "healthy one", **body}),
                client.post("/v1/completions", json={"prompt": "healthy two", **body}),
            )
        return results

    try:
        bad, ok1, ok2 = asyncio.run(main())
    finally:
        ae.shutdown()
    assert bad.status_code == 500 and bad.json()["error"]["type"] == "internal_server_error"
    assert ok1.status_code == ok2.status_code == 200
    assert ok1.json()["usage"]["completion_tokens"] == 4


def test_cancel_before_the_engine_saw_the_add_never_runs_it(engine):
    """Add and abort queued in the same batch of commands: the request must not start."""
    ae = AsyncEngine(engine)

    async def main():
        task = asyncio.ensure_future(ae.add_request("orphan", SamplingParams(max_tokens=1500, ignore_eos=True), "orphan"))
        await asyncio.sleep(0)  # the add is queued; the engine thread is not running yet
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        ae.start()
        # commands apply in order: once a later request finished, the orphan's were applied
        outs = [o async for o in ae.generate("later", SamplingParams(max_tokens=2, ignore_eos=True), "later")]
        assert outs[-1].finished
        assert "orphan" not in engine.scheduler.requests  # 1500 tokens would still be running
        assert not engine.has_unfinished_requests() and engine.kv.usage == 0

    try:
        asyncio.run(main())
    finally:
        ae.shutdown()
