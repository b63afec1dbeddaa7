"""Raw HTTP: SSE framing byte by byte, and every error in OpenAI's JSON shape."""
from __future__ import annotations

import json

import httpx
import pytest

from tests.server.util import metric_value

MODEL = "SmolLM2-135M-Instruct"


def post(server, path, body=None, **kwargs):
    return httpx.post(server.base_url + path, json=body, timeout=120, **kwargs)


def assert_openai_error(resp: httpx.Response, status: int, param: str | None = "any") -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param != "any":
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 5, "stream": True}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
                              "stream": True, "stream_options": {"include_usage": True}}),
])
def test_sse_framing(server, path, body):
    with httpx.stream("POST", server.base_url + path, json=body, timeout=120) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(resp.iter_bytes()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"  # ends with [DONE] and a blank line
    payloads = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(e.startswith("data: ") and "\n" not in e for e in events[:-1])
    assert len({p["id"] for p in payloads}) == 1
    finished = [p for p in payloads if p["choices"] and p["choices"][0]["finish_reason"]]
    assert len(finished) == 1
    if body.get("stream_options"):
        assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["total_tokens"] > 0
    else:
        assert all("usage" not in p or p["usage"] is None for p in payloads)


def test_malformed_json_is_400(server):
    resp = httpx.post(server.base_url + "/v1/completions", content=b'{"prompt": "x", ',
                      headers={"content-type": "application/json"})
    error = assert_openai_error(resp, 400)
    assert "JSON" in error["message"]


@pytest.mark.parametrize("body,param", [
    ({"model": MODEL}, "prompt"),                                          # missing field
    ({"model": MODEL, "prompt": "x", "max_tokens": "ten"}, "max_tokens"),  # wrong type
    ({"model": MODEL, "prompt": "x", "temperature": -1}, "temperature"),   # out of range (SamplingParams)
    ({"model": MODEL, "prompt": "x", "top_p": 0}, "top_p"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "n": 2}, "n"),
    ({"model": MODEL, "prompt": "x", "stop": [""]}, "stop"),
    ({"model": MODEL, "prompt": [10**9]}, "prompt"),                        # token id out of vocab
    ({"model": MODEL, "prompt": ["a", "b"]}, "prompt"),                     # batches are not supported
    ({"model": MODEL, "prompt": ""}, None),                                  # empty prompt
])
def test_schema_and_value_violations_are_400(server, body, param):
    error = assert_openai_error(post(server, "/v1/completions", body), 400, param)
    assert error["type"] == "invalid_request_error"


def test_chat_schema_violation_is_400(server):
    assert_openai_error(post(server, "/v1/chat/completions", {"model": MODEL, "messages": []}), 400, "messages")
    assert_openai_error(post(server, "/v1/chat/completions",
                             {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}), 400)


def test_prompt_plus_max_tokens_over_context_names_both(server):
    prompt_tokens = len(httpx.post(server.base_url + "/tokenize", json={"prompt": "Hello world"}).json()["tokens"])
    max_tokens = 8192 - prompt_tokens + 1  # one token too many
    error = assert_openai_error(post(server, "/v1/completions", {"model": MODEL, "prompt": "Hello world",
                                                                 "max_tokens": max_tokens}), 400, "max_tokens")
    message = error["message"]
    assert f"{prompt_tokens} in the prompt" in message and f"{max_tokens} in max_tokens" in message and "8192" in message
    # the same through chat, with max_completion_tokens
    error = assert_openai_error(post(server, "/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 9000}), 400)
    assert "9000" in error["message"]


def test_prompt_alone_over_context_is_400(server):
    error = assert_openai_error(post(server, "/v1/completions", {"model": MODEL, "prompt": [1] * 8192}), 400)
    assert "8192" in error["message"]


def test_unknown_model_is_404(server):
    error = assert_openai_error(post(server, "/v1/completions", {"model": "gpt-17", "prompt": "x"}), 404, "model")
    assert error["code"] == "model_not_found"
    assert_openai_error(post(server, "/v1/chat/completions",
                             {"model": "gpt-17", "messages": [{"role": "user", "content": "x"}]}), 404)


def test_unknown_route_is_openai_shaped_404(server):
    assert_openai_error(httpx.get(server.base_url + "/v1/nothing"), 404)


def test_bad_requests_change_nothing(server):
    """After all the rejected requests above, the engine holds no request and no KV."""
    text = httpx.get(server.base_url + "/metrics").text
    assert metric_value(text, "podserve:num_requests_running") == 0
    assert metric_value(text, "podserve:num_requests_waiting") == 0
    assert metric_value(text, "podserve:kv_cache_usage_perc") == 0


def test_tiny_temperature_samples_greedily_instead_of_failing_the_step(server):
    """Found by the fuzz pass: 6e-121 underflowed to 0 in float32, NaN probabilities, a 500 for the batch."""
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 3, "ignore_eos": True}
    tiny = post(server, "/v1/completions", {**body, "temperature": 6e-121})
    greedy = post(server, "/v1/completions", {**body, "temperature": 0})
    assert tiny.status_code == 200, tiny.text
    assert tiny.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]
