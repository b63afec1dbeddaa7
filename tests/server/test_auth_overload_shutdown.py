"""A second server with --api-key, --served-model-name and a tiny queue: 401, 404, 503, then SIGTERM."""
from __future__ import annotations

import asyncio
import signal
import threading

import httpx
import pytest

from tests.server.util import ServerProcess

KEY = "sk-test-secret"
NAME = "my-model"


@pytest.fixture(scope="module")
def keyed_server():
    # --max-num-seqs 1 keeps one request running so the second waits and fills the 1-slot queue.
    proc = ServerProcess("--api-key", KEY, "--served-model-name", NAME, "--max-queue-len", "1", "--max-num-seqs", "1")
    yield proc
    proc.stop()


def auth(key=KEY):
    return {"Authorization": f"Bearer {key}"}


def test_missing_or_wrong_key_is_401(keyed_server):
    url = keyed_server.base_url
    body = {"model": NAME, "prompt": "x", "max_tokens": 1}
    for headers in ({}, auth("sk-wrong"), {"Authorization": KEY}):
        resp = httpx.post(url + "/v1/completions", json=body, headers=headers)
        assert resp.status_code == 401, resp.text
        assert resp.json()["error"]["type"] == "authentication_error"
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.post(url + "/tokenize", json={"prompt": "x"}).status_code == 401


def test_right_key_is_served_and_ops_endpoints_are_open(keyed_server):
    url = keyed_server.base_url
    resp = httpx.post(url + "/v1/completions", json={"model": NAME, "prompt": "x", "max_tokens": 2}, headers=auth(),
                      timeout=120)
    assert resp.status_code == 200 and resp.json()["model"] == NAME
    assert [m["id"] for m in httpx.get(url + "/v1/models", headers=auth()).json()["data"]] == [NAME]
    for path in ("/health", "/metrics", "/version"):
        assert httpx.get(url + path).status_code == 200


def test_served_model_name_replaces_the_default(keyed_server):
    resp = httpx.post(keyed_server.base_url + "/v1/completions", headers=auth(),
                      json={"model": "SmolLM2-135M-Instruct", "prompt": "x", "max_tokens": 1})
    assert resp.status_code == 404


def test_overload_is_503_with_retry_after(keyed_server):
    body = {"model": NAME, "prompt": "Write a poem", "max_tokens": 12, "ignore_eos": True}

    async def main():
        async with httpx.AsyncClient(base_url=keyed_server.base_url, headers=auth(), timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(6)))

    results = asyncio.run(main())
    codes = sorted(r.status_code for r in results)
    rejected = [r for r in results if r.status_code == 503]
    assert rejected and codes.count(200) >= 1 and set(codes) <= {200, 503}, codes
    for r in rejected:
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "overloaded"
    for r in results:
        if r.status_code == 200:
            assert r.json()["usage"]["completion_tokens"] == 12


def test_sigterm_finishes_in_flight_stream_and_exits_0(keyed_server):
    """Must run last in this module: it stops the server."""
    received: list[str] = []
    started = threading.Event()

    def stream():
        with httpx.stream("POST", keyed_server.base_url + "/v1/completions", headers=auth(), timeout=120,
                          json={"model": NAME, "prompt": "Once", "max_tokens": 24, "ignore_eos": True,
                                "stream": True}) as resp:
            for line in resp.iter_lines():
                if line:
                    received.append(line)
                    started.set()

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(120)
    keyed_server.proc.send_signal(signal.SIGTERM)
    t.join(120)
    assert keyed_server.proc.wait(60) == 0, keyed_server.log_text()
    assert received[-1] == "data: [DONE]"
    assert sum(1 for line in received if '"text"' in line) >= 1
    assert '"finish_reason": "length"' in received[-2]
    with pytest.raises(httpx.ConnectError):
        httpx.get(keyed_server.base_url + "/health")


def test_sigterm_aborts_streams_that_outlive_the_shutdown_timeout():
    """A stream that cannot finish within --shutdown-timeout is aborted; the exit is still 0."""
    proc = ServerProcess("--shutdown-timeout", "1")
    try:
        started = threading.Event()
        ended = threading.Event()

        def stream():
            try:
                with httpx.stream("POST", proc.base_url + "/v1/completions", timeout=120,
                                  json={"prompt": "Go on", "max_tokens": 4000, "ignore_eos": True, "stream": True}) as resp:
                    for line in resp.iter_lines():
                        started.set()
            except httpx.HTTPError:
                pass  # the server closed the connection mid-stream: expected
            finally:
                ended.set()

        t = threading.Thread(target=stream, daemon=True)
        t.start()
        assert started.wait(120)
        proc.proc.send_signal(signal.SIGINT)
        assert proc.proc.wait(60) == 0, proc.log_text()
        assert ended.wait(10)  # 4000 tokens would take minutes: the stream was cut, not finished
    finally:
        proc.stop()
