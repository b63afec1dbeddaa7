"""The server driven by the official ``openai`` package: sync and async, streaming and not."""
from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

import podserve

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture()
def aclient(server):
    return openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]


def test_completion_non_streaming(client, server):
    resp = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6,
                                     temperature=0, extra_body={"ignore_eos": True})
    choice = resp.choices[0]
    assert resp.object == "text_completion" and resp.model == MODEL
    assert choice.finish_reason == "length" and choice.text
    assert resp.usage.completion_tokens == 6
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 6
    tokens = httpx.post(server.base_url + "/tokenize", json={"prompt": "The capital of France is"}).json()["tokens"]
    assert resp.usage.prompt_tokens == len(tokens)


@pytest.mark.slow  # loads a second copy of the model in the test process: ~40 s on 2 busy cores
def test_completion_greedy_matches_offline_llm(client, server):
    """Same text as the engine run in-process with the same greedy params."""
    resp = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0)
    from podserve.engine.llm import LLM
    from podserve.request import SamplingParams

    offline = LLM().generate(["Once upon a time"], SamplingParams(max_tokens=8, temperature=0), use_tqdm=False)
    assert resp.choices[0].text == offline[0].outputs[0].text


def test_completion_streaming_concatenates_to_non_streaming(client):
    kwargs = dict(model=MODEL, prompt="List three colors:", max_tokens=8, temperature=0)
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_chat_non_streaming_uses_chat_template(client, server):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    resp = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=5, temperature=0)
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant" and resp.choices[0].message.content
    templated = httpx.post(server.base_url + "/tokenize", json={"messages": messages}).json()
    assert resp.usage.prompt_tokens == templated["count"]
    assert resp.usage.prompt_tokens > len(httpx.post(server.base_url + "/tokenize", json={"prompt": "What is 2+2?"}).json()["tokens"])


def test_chat_streaming_with_usage(client):
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6,
                                            temperature=0, stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-1].choices == []


def test_stop_string_ends_generation_and_is_not_returned(client):
    base = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0).choices[0].text
    stop = base.strip()[:1] if base.strip() else "5"
    resp = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[stop])
    assert stop not in resp.choices[0].text
    assert resp.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_reproducible(client):
    kwargs = dict(model=MODEL, prompt="My favourite animal is", max_tokens=8, temperature=1.0, top_p=0.9)
    a = client.completions.create(seed=1234, **kwargs).choices[0].text
    b = client.completions.create(seed=1234, **kwargs).choices[0].text
    assert a == b


def test_token_id_prompt(client, server):
    ids = httpx.post(server.base_url + "/tokenize", json={"prompt": "Hello there"}).json()["tokens"]
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0)
    by_text = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)


def test_async_client_concurrent_streams(aclient):
    async def one(i: int) -> tuple[str, int]:
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count to {i}"}], max_tokens=5, temperature=0,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        return text, usage

    async def main():
        results = await asyncio.gather(*(one(i) for i in range(6)))
        await aclient.close()
        return results

    for text, usage in asyncio.run(main()):
        assert usage == 5


def test_async_client_non_streaming(aclient):
    async def main():
        resp = await aclient.completions.create(model=MODEL, prompt="Hello", max_tokens=3, temperature=0,
                                                extra_body={"ignore_eos": True})
        await aclient.close()
        return resp

    assert asyncio.run(main()).usage.completion_tokens == 3


def test_tokenize_detokenize_round_trip(server):
    tok = httpx.post(server.base_url + "/tokenize", json={"prompt": "podserve serves tokens"}).json()
    assert tok["count"] == len(tok["tokens"]) > 0 and tok["max_model_len"] == 8192
    text = httpx.post(server.base_url + "/detokenize", json={"tokens": tok["tokens"]}).json()["prompt"]
    assert text == "podserve serves tokens"


def test_version_and_health(server):
    assert httpx.get(server.base_url + "/version").json() == {"version": podserve.__version__}
    assert httpx.get(server.base_url + "/health").status_code == 200
