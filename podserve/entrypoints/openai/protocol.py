"""Pydantic models of the OpenAI API subset podserve serves (OpenAI's field names).

Requests ignore unknown fields, as OpenAI and vLLM do, so clients written for either work
unchanged; fields podserve accepts but cannot honour are rejected by serving.py, not here.
"""
from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

TokenId = Annotated[StrictInt, Field(ge=0)]
FloatOrNone = Optional[Annotated[float, Field(allow_inf_nan=False)]]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: Optional[StrictBool] = False


class _SamplingFields(_Request):
    """Fields shared by completions and chat completions."""

    model: Optional[StrictStr] = None
    max_tokens: Optional[StrictInt] = None
    temperature: FloatOrNone = None
    top_p: FloatOrNone = None
    n: Optional[StrictInt] = 1
    stream: Optional[StrictBool] = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[StrictStr, list[StrictStr], None] = None
    seed: Optional[StrictInt] = None
    presence_penalty: FloatOrNone = None
    frequency_penalty: FloatOrNone = None
    logprobs: Any = None
    user: Optional[StrictStr] = None
    # vLLM extensions (sent by clients through ``extra_body``)
    top_k: Optional[StrictInt] = None
    min_p: FloatOrNone = None
    min_tokens: Optional[StrictInt] = None
    stop_token_ids: Optional[list[TokenId]] = None
    ignore_eos: Optional[StrictBool] = False


class CompletionRequest(_SamplingFields):
    """POST /v1/completions. ``prompt``: text, token ids, or a one-element list of either."""

    prompt: Union[StrictStr, list[TokenId], list[StrictStr], list[list[TokenId]]]
    echo: Optional[StrictBool] = False
    suffix: Optional[StrictStr] = None


class ContentPart(_Request):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[StrictStr, list[ContentPart], None] = None
    name: Optional[StrictStr] = None

    def text(self) -> str:
        """The message's content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Optional[StrictInt] = None


class TokenizeRequest(_Request):
    """POST /tokenize: either ``prompt`` or ``messages`` (rendered with the chat template)."""

    model: Optional[StrictStr] = None
    prompt: Optional[StrictStr] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: Optional[StrictBool] = True


class DetokenizeRequest(_Request):
    """POST /detokenize."""

    model: Optional[StrictStr] = None
    tokens: list[TokenId]


# --- responses ---------------------------------------------------------------------------------
class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Optional[str] = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Optional[UsageInfo] = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: Optional[str] = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: Optional[str] = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Optional[UsageInfo] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "podserve"
    max_model_len: int
    vocab_size: int
    """Not an OpenAI field (like vLLM's max_model_len): lets benchmark clients send valid token ids."""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(BaseModel):
    prompt: str


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[Union[str, int]] = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
