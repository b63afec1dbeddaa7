"""Completion and chat-completion logic: request -> SamplingParams -> engine -> JSON or SSE."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from podserve.engine.async_engine import EngineDead, EngineOverloaded, RequestFailed
from podserve.engine.client import EngineClient, OutputStream
from podserve.entrypoints.openai.errors import OpenAIError, bad_request_from_value_error, error_body
from podserve.entrypoints.openai.protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageOut,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    UsageInfo,
)
from podserve.request import SamplingParams

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
def sse(payload: dict | str) -> str:
    """One server-sent event: ``data: {...}\\n\\n``."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


class OpenAIServing:
    """Turns OpenAI requests into engine requests and engine outputs into OpenAI responses."""

    def __init__(self, engine_client: EngineClient, served_model_names: list[str]):
        self.engine_client = engine_client
        self.tokenizer = engine_client.tokenizer
        self.max_model_len = engine_client.max_model_len
        self.vocab_size = engine_client.vocab_size
        self.served_model_names = served_model_names

    @property
    def model_name(self) -> str:
        return self.served_model_names[0]

    def check_model(self, name: str | None) -> None:
        """404 for a model this server does not serve (absent = the default one)."""
        if name is not None and name not in self.served_model_names:
            raise OpenAIError(404, f"The model `{name}` does not exist. Served: {', '.join(self.served_model_names)}",
                              param="model", code="model_not_found")

    # --- prompts -------------------------------------------------------------------------------
    def completion_prompt_ids(self, req: CompletionRequest) -> list[int]:
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise OpenAIError(400, f"only one prompt per request is supported, got {len(prompt)}", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        self.check_token_ids(prompt, "prompt")
        return list(prompt)

    def chat_prompt_ids(self, messages) -> list[int]:
        conversation = [{"role": m.role, "content": m.text()} for m in messages]
        try:
            text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True)
        except Exception as e:  # a template that rejects the conversation (e.g. role order)
            raise OpenAIError(400, f"the chat template rejected the messages: {e}", param="messages") from e
        # The template already carries BOS where the model wants one.
        return self.tokenizer.encode(text, add_special_tokens=False)

    def check_token_ids(self, ids: list[int], param: str) -> None:
        bad = [t for t in ids if t >= self.vocab_size]
        if bad:
            raise OpenAIError(400, f"token id {bad[0]} is out of the vocabulary [0, {self.vocab_size})", param=param)

    # --- sampling ------------------------------------------------------------------------------
    def sampling_params(self, req, num_prompt_tokens: int, max_tokens: int | None, default_max_tokens: int | None) -> SamplingParams:
        """Validate the OpenAI fields and build SamplingParams; 400 on anything unsupported."""
        if req.n not in (None, 1):
            raise OpenAIError(400, f"n={req.n} is not supported: only n=1", param="n")
        if req.logprobs not in (None, False):
            raise OpenAIError(400, "logprobs are not supported", param="logprobs")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(req, name) not in (None, 0, 0.0):
                raise OpenAIError(400, f"{name} is not supported (only 0)", param=name)
        if getattr(req, "echo", False):
            raise OpenAIError(400, "echo is not supported", param="echo")
        if getattr(req, "suffix", None):
            raise OpenAIError(400, "suffix is not supported", param="suffix")
        limit = self.max_model_len
        if num_prompt_tokens >= limit:
            raise OpenAIError(400, f"This model's maximum context length is {limit} tokens, but the prompt has "
                                   f"{num_prompt_tokens} tokens; at most {limit - 1} prompt tokens fit.", param="prompt")
        if max_tokens is None:
            room = limit - num_prompt_tokens
            max_tokens = room if default_max_tokens is None else min(default_max_tokens, room)
        elif max_tokens >= 1 and num_prompt_tokens + max_tokens > limit:
            raise OpenAIError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                                   f"{num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} in the prompt, "
                                   f"{max_tokens} in max_tokens). Reduce the prompt or max_tokens.", param="max_tokens")
        if req.stop_token_ids:
            self.check_token_ids(req.stop_token_ids, "stop_token_ids")
        temperature = 1.0 if req.temperature is None else req.temperature
        # Vanishing temperatures sample greedily: SamplingParams.greedy handles them.
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                top_k=-1 if req.top_k is None else req.top_k,
                min_p=0.0 if req.min_p is None else req.min_p,
                seed=req.seed,
                stop=req.stop,
                stop_token_ids=req.stop_token_ids,
                ignore_eos=bool(req.ignore_eos),
                min_tokens=req.min_tokens or 0,
            )
        except ValueError as e:
            raise bad_request_from_value_error(e) from e

    # --- engine --------------------------------------------------------------------------------
    async def _submit(self, prompt_ids: list[int], params: SamplingParams, request_id: str, arrival: float) -> OutputStream:
        try:
            return await self.engine_client.add_request(prompt_ids, params, request_id, arrival)
        except EngineOverloaded as e:
            raise OpenAIError(503, str(e), code="overloaded", headers={"Retry-After": str(e.retry_after_s)}) from e
        except EngineDead as e:
            raise OpenAIError(503, str(e), code="engine_dead") from e
        except ValueError as e:
            raise bad_request_from_value_error(e) from e

    async def completion(self, req: CompletionRequest, raw: Request):
        """POST /v1/completions."""
        arrival = time.perf_counter()
        self.check_model(req.model)
        prompt_ids = self.completion_prompt_ids(req)
        params = self.sampling_params(req, len(prompt_ids), req.max_tokens, DEFAULT_COMPLETION_MAX_TOKENS)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        stream = await self._submit(prompt_ids, params, request_id, arrival)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _SSEResponse(self._completion_chunks(stream, request_id, len(prompt_ids), include_usage), stream)
        out = await _collect(stream, raw)
        choice = out.outputs[0]
        return JSONResponse(CompletionResponse(
            id=request_id, model=self.model_name,
            choices=[CompletionChoice(text=choice.text, finish_reason=choice.finish_reason)],
            usage=_usage(len(prompt_ids), len(choice.token_ids)),
        ).model_dump(), headers=_replica_header(stream))

    async def chat(self, req: ChatCompletionRequest, raw: Request):
        """POST /v1/chat/completions."""
        arrival = time.perf_counter()
        self.check_model(req.model)
        prompt_ids = self.chat_prompt_ids(req.messages)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        params = self.sampling_params(req, len(prompt_ids), max_tokens, None)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        stream = await self._submit(prompt_ids, params, request_id, arrival)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _SSEResponse(self._chat_chunks(stream, request_id, len(prompt_ids), include_usage), stream)
        out = await _collect(stream, raw)
        choice = out.outputs[0]
        return JSONResponse(ChatCompletionResponse(
            id=request_id, model=self.model_name,
            choices=[ChatChoice(message=ChatMessageOut(content=choice.text), finish_reason=choice.finish_reason)],
            usage=_usage(len(prompt_ids), len(choice.token_ids)),
        ).model_dump(), headers=_replica_header(stream))

    # --- streaming -----------------------------------------------------------------------------
    async def _completion_chunks(self, stream: OutputStream, request_id: str, num_prompt: int, include_usage: bool):
        created = int(time.time())

        def chunk(text: str, finish_reason: str | None) -> dict:
            return {"id": request_id, "object": "text_completion", "created": created, "model": self.model_name,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}

        num_generated = 0
        try:
            async for out in stream:
                num_generated = len(out.outputs[0].token_ids)
                if out.delta_text or out.finished:
                    yield sse(chunk(out.delta_text, out.outputs[0].finish_reason if out.finished else None))
        finally:
            stream.close()  # a no-op once finished; otherwise the client left: abort now
        if include_usage:
            yield sse({"id": request_id, "object": "text_completion", "created": created, "model": self.model_name,
                       "choices": [], "usage": _usage(num_prompt, num_generated).model_dump()})

    async def _chat_chunks(self, stream: OutputStream, request_id: str, num_prompt: int, include_usage: bool):
        created = int(time.time())

        def chunk(delta: dict, finish_reason: str | None) -> dict:
            return {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

        yield sse(chunk({"role": "assistant", "content": ""}, None))
        num_generated = 0
        try:
            async for out in stream:
                num_generated = len(out.outputs[0].token_ids)
                if out.delta_text:
                    yield sse(chunk({"content": out.delta_text}, None))
                if out.finished:
                    yield sse(chunk({}, out.outputs[0].finish_reason))
        finally:
            stream.close()
        if include_usage:
            yield sse({"id": request_id, "object": "chat.completion.chunk", "created": created,
                       "model": self.model_name, "choices": [], "usage": _usage(num_prompt, num_generated).model_dump()})


def _replica_header(stream: OutputStream) -> dict[str, str] | None:
    """``X-Podserve-Replica: <id>`` when replicas serve (which one answered: debugging, tests)."""
    replica = getattr(stream, "replica", None)
    return None if replica is None else {"X-Podserve-Replica": str(replica.replica_id)}


def _usage(num_prompt: int, num_generated: int) -> UsageInfo:
    return UsageInfo(prompt_tokens=num_prompt, completion_tokens=num_generated, total_tokens=num_prompt + num_generated)


class _SSEResponse(StreamingResponse):
    """A StreamingResponse that aborts its request however the response ends.

    On a disconnect Starlette cancels the task; if that happens while it is inside
    ``send()`` rather than inside our generator, the generator would only be closed (and the
    request aborted) when garbage-collected. Closing the stream here makes it immediate.
    """

    def __init__(self, chunks: AsyncIterator[str], stream: OutputStream):
        super().__init__(_framed(chunks), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(_replica_header(stream) or {})})
        self.request_stream = stream

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.request_stream.close()  # no-op if it finished; else abort before the next step
            await self.body_iterator.aclose()


async def _framed(chunks):
    """Wrap a chunk generator: close (abort) on disconnect, report failures in-band, end with [DONE].

    Once the 200 header is out a failure can only be told inside the stream, as an
    ``error`` event (what OpenAI and vLLM do); the stream still ends with ``[DONE]``.
    """
    try:
        async for text in chunks:
            yield text
    except (RequestFailed, EngineDead) as e:
        yield sse(error_body(500 if isinstance(e, RequestFailed) else 503, str(e)))
    except Exception as e:  # a fault in this request's own processing: only it fails
        yield sse(error_body(500, f"internal error: {e!r}"))
    finally:
        await chunks.aclose()  # runs the chunk generator's finally: abort if unfinished
    yield sse("[DONE]")


async def _collect(stream: OutputStream, raw: Request):
    """Wait for the final output; abort if the client disconnects first."""

    async def last_output():
        final = None
        async for out in stream:
            final = out
        return final

    async def disconnected():
        while True:
            message = await raw.receive()
            if message["type"] == "http.disconnect":
                return

    result = asyncio.ensure_future(last_output())
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({result, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not result.done():
            result.cancel()
            stream.close()  # the client left (or we were cancelled): free the KV now
    try:
        return result.result()
    except (RequestFailed, EngineDead) as e:
        raise OpenAIError(500 if isinstance(e, RequestFailed) else 503, str(e)) from e
    except asyncio.CancelledError:
        # Nobody will read this answer; raising (not returning) keeps the handler's contract.
        raise OpenAIError(499, "client disconnected", code="client_disconnected") from None
