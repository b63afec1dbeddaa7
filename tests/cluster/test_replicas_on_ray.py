"""Two CPU replicas on a local Ray cluster behind one OpenAI endpoint: balance, kill, restart.

The test process starts the Ray cluster (so it can ``ray.kill`` a replica's actor, as an
operator or a node failure would) and a real ``podserve serve --ray-address ... --replicas 2``
subprocess joins it. Tests run in file order and share the server: the kill test leaves
replica 1 restarted, the admin test restarts replica 0.
"""
from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import openai
import pytest

from tests.server.util import ServerProcess

ray = pytest.importorskip("ray")

MODEL = "tiny-llama"
RESTART_DELAY_S = 10  # long enough to watch routing skip the dead replica before it comes back
LONG = {"max_tokens": 2000, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def ray_address():
    # Other suites share this machine's memory: Ray's OOM monitor would kill replicas when the
    # node passes 95% (tests here must only see the kills they make). Read when Ray starts.
    saved = os.environ.get("RAY_memory_monitor_refresh_ms")
    os.environ["RAY_memory_monitor_refresh_ms"] = "0"
    try:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    finally:
        if saved is None:
            del os.environ["RAY_memory_monitor_refresh_ms"]
        else:
            os.environ["RAY_memory_monitor_refresh_ms"] = saved
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def server(ray_address):
    proc = ServerProcess("--ray-address", ray_address, "--replicas", "2", "--model", MODEL, "--max-model-len", "2048",
                         "--kv-cache-memory", "32MiB", "--routing", "round-robin",
                         "--replica-restart", "auto", "--replica-restart-delay", str(RESTART_DELAY_S))
    yield proc
    proc.stop()


def health(server) -> dict:
    return httpx.get(server.base_url + "/health", timeout=10).json()


def replica_states(server) -> list[str]:
    return [r["state"] for r in health(server)["replicas"]]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def per_replica(metrics_text: str, name: str, **match) -> dict[str, float]:
    """Sum of samples called ``name`` by their ``replica`` label (other labels must match ``match``)."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in match.items()):
                totals[s.labels["replica"]] = totals.get(s.labels["replica"], 0.0) + s.value
    return totals


def scrape(server) -> str:
    return httpx.get(server.base_url + "/metrics", timeout=10).text


def complete(server, prompt: str = "hi", **body) -> httpx.Response:
    return httpx.post(server.base_url + "/v1/completions", json={"prompt": prompt, "max_tokens": 4, **body}, timeout=60)


def test_health_reports_every_replica(server):
    report = health(server)
    assert report["status"] == "ok" and report["routing"] == "round-robin"
    assert [r["replica"] for r in report["replicas"]] == [0, 1]
    assert all(r["state"] == "healthy" and r["device"] == "cpu" for r in report["replicas"])
    assert len({r["pid"] for r in report["replicas"]}) == 2  # two processes, two engines
    assert [m.id for m in openai.OpenAI(base_url=server.base_url + "/v1", api_key="x").models.list().data] == [MODEL]


def test_concurrent_openai_requests_are_balanced_over_both_replicas(server):
    before = per_replica(scrape(server), "podserve:request_success_total")
    client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)

    async def one(i: int) -> str:
        if i % 4 == 0:
            r = await client.completions.create(model=MODEL, prompt=f"request {i}", max_tokens=8,
                                                extra_body={"ignore_eos": True})
            return r.choices[0].text
        if i % 4 == 1:
            stream = await client.completions.create(model=MODEL, prompt=f"request {i}", max_tokens=8, stream=True,
                                                     extra_body={"ignore_eos": True})
            return "".join([c.choices[0].text async for c in stream])
        messages = [{"role": "user", "content": f"request {i}"}]
        if i % 4 == 2:
            r = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                                     extra_body={"ignore_eos": True})
            return r.choices[0].message.content
        stream = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, stream=True,
                                                      extra_body={"ignore_eos": True})
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    async def all_requests():
        return await asyncio.gather(*(one(i) for i in range(16)))

    texts = asyncio.run(all_requests())
    assert all(texts)
    after = per_replica(scrape(server), "podserve:request_success_total")
    served = {k: after[k] - before.get(k, 0) for k in after}
    assert served == {"0": 8.0, "1": 8.0}  # round-robin: exactly half each
    # Nothing leaks: every stream closed, every replica idle.
    wait_for(lambda: all(r["num_outstanding"] == 0 for r in health(server)["replicas"]), 10, "outstanding back to 0")
    tokens = per_replica(scrape(server), "podserve:generation_tokens_total")
    assert tokens["0"] > 0 and tokens["1"] > 0


def test_replicas_answer_alike_and_say_who_answered(server):
    """Greedy output does not depend on the replica; streamed deltas rebuild the same text."""
    body = {"prompt": "The same prompt", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    a, b = complete(server, **body), complete(server, **body)
    assert a.status_code == b.status_code == 200
    assert {a.headers["x-podserve-replica"], b.headers["x-podserve-replica"]} == {"0", "1"}
    assert a.json()["choices"][0]["text"] == b.json()["choices"][0]["text"]
    with httpx.stream("POST", server.base_url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["text"] for e in events) == a.json()["choices"][0]["text"]


async def _open_stream(http: httpx.AsyncClient, prompt: str) -> httpx.Response:
    request = http.build_request("POST", "/v1/completions", json={"prompt": prompt, "stream": True, **LONG})
    response = await http.send(request, stream=True)
    assert response.status_code == 200
    return response


async def _first_event(response: httpx.Response, lines) -> dict:
    async for line in lines:
        if line.startswith("data: {"):
            return json.loads(line[6:])
    raise AssertionError("stream ended before its first event")


async def _drain(lines) -> list[dict | str]:
    """The rest of a stream's events: dicts, and the final "[DONE]"."""
    events = []
    async for line in lines:
        if line.startswith("data: "):
            events.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
    return events


def test_killing_a_replica_mid_run_fails_its_requests_and_routes_around_it(server):
    async def scenario():
        async with httpx.AsyncClient(base_url=server.base_url, timeout=180) as http:
            # Round-robin puts one stream and one non-streaming request on each replica.
            streams = [await _open_stream(http, "stream a"), await _open_stream(http, "stream b")]
            stream_replica = [s.headers["x-podserve-replica"] for s in streams]
            assert sorted(stream_replica) == ["0", "1"]
            lines = [s.aiter_lines() for s in streams]
            for s, it in zip(streams, lines):
                await _first_event(s, it)
            posts = []
            for i in range(2):
                routed = sum(r["num_routed"] for r in health(server)["replicas"])
                posts.append(asyncio.create_task(http.post("/v1/completions", json={"prompt": f"plain {i}", **LONG})))
                await asyncio.to_thread(wait_for, lambda: sum(r["num_routed"] for r in health(server)["replicas"]) > routed,
                                        10, "the request to be routed")
            report = health(server)
            assert [r["num_outstanding"] for r in report["replicas"]] == [2, 2]
            victim = report["replicas"][1]

            killed_at = time.monotonic()
            ray.kill(ray.get_actor(victim["actor_name"], namespace="podserve"))

            # Routing stops within a few seconds (in practice: as soon as a stream on it fails).
            await asyncio.to_thread(wait_for, lambda: replica_states(server)[1] != "healthy", 5, "replica 1 marked down")
            detected_s = time.monotonic() - killed_at
            rest = await asyncio.gather(*(_drain(it) for it in lines))
            results = await asyncio.gather(*posts)
            return stream_replica, rest, results, detected_s, victim["actor_name"]

    stream_replica, rest, results, detected_s, victim_name = asyncio.run(scenario())
    assert detected_s < 5
    for replica, events in zip(stream_replica, rest):
        assert events[-1] == "[DONE]"
        if replica == "1":  # in flight on the dead replica: an in-band 503 naming it
            error = events[-2]["error"]
            assert error["code"] == 503 and error["type"] == "service_unavailable_error"
            assert "replica 1" in error["message"] and "died" in error["message"]
        else:  # the survivor's stream ran to its end
            assert events[-2]["choices"][0]["finish_reason"] == "length"
            assert all("error" not in e for e in events[:-1])
    by_status = sorted(results, key=lambda r: r.status_code)
    assert [r.status_code for r in by_status] == [200, 503]
    assert by_status[0].headers["x-podserve-replica"] == "0"
    assert by_status[0].json()["usage"]["completion_tokens"] == LONG["max_tokens"]
    message = by_status[1].json()["error"]["message"]
    assert "replica 1" in message and "died" in message

    # The survivor takes everything while replica 1 is down (it waits RESTART_DELAY_S to restart).
    routed_to_dead = health(server)["replicas"][1]["num_routed"]
    for i in range(6):
        r = complete(server, f"after {i}")
        assert r.status_code == 200 and r.headers["x-podserve-replica"] == "0"
    report = health(server)
    assert report["status"] == "degraded" and report["replicas"][1]["state"] != "healthy", report
    assert report["replicas"][1]["num_routed"] == routed_to_dead
    assert report["replicas"][1]["last_error"]
    text = scrape(server)
    assert per_replica(text, "podserve:replica_healthy") == {"0": 1.0, "1": 0.0}
    assert per_replica(text, "podserve:router_requests_failed_total")["1"] >= 2
    assert all(r["num_outstanding"] == 0 for r in report["replicas"])

    # Automatic restart after the back-off: a new actor, serving again.
    back = wait_for(lambda: (h := health(server))["replicas"][1]["state"] == "healthy" and h, 180, "replica 1 restarted",
                    interval=0.5)
    assert back["replicas"][1]["num_restarts"] == 1
    assert back["replicas"][1]["actor_name"] != victim_name
    assert back["status"] == "ok"
    answered = {complete(server, f"again {i}").headers["x-podserve-replica"] for i in range(4)}
    assert answered == {"0", "1"}


def test_admin_endpoint_restarts_a_replica(server):
    old = health(server)["replicas"][0]
    r = httpx.post(server.base_url + "/admin/replicas/0/restart", timeout=30)
    assert r.status_code == 202 and r.json()["state"] == "starting"
    # Meanwhile replica 1 serves everything.
    r = complete(server, "during restart")
    assert r.status_code == 200 and r.headers["x-podserve-replica"] == "1"
    new = wait_for(lambda: (rep := health(server)["replicas"][0])["state"] == "healthy" and rep, 180,
                   "replica 0 restarted", interval=0.5)
    assert new["num_restarts"] == old["num_restarts"] + 1 and new["pid"] != old["pid"]
    with pytest.raises(ValueError):
        ray.get_actor(old["actor_name"], namespace="podserve")  # the old actor is gone
    answered = {complete(server, f"after admin {i}").headers["x-podserve-replica"] for i in range(4)}
    assert answered == {"0", "1"}
    missing = httpx.post(server.base_url + "/admin/replicas/7/restart", timeout=10)
    assert missing.status_code == 404 and "no replica 7" in missing.json()["error"]["message"]
