"""EngineClient: what the OpenAI front end needs from "an engine".

Two implementations: ``AsyncEngine`` (one engine stepped by a thread in the server process)
and ``podserve.cluster.router.Router`` (engine replicas in Ray actors behind a global
scheduler). The serving handlers only use the members listed here, so ``podserve serve``
without ``--replicas`` runs exactly as before.
"""
from __future__ import annotations

from typing import AsyncIterator, Protocol, runtime_checkable

from podserve.engine.outputs import RequestOutput
from podserve.request import SamplingParams


@runtime_checkable
class OutputStream(Protocol):
    """The outputs of one accepted request, in order; iterate it, then ``close()`` it."""

    finished: bool

    def __aiter__(self) -> AsyncIterator[RequestOutput]: ...

    def close(self) -> None:
        """Abort the request unless it already finished (idempotent, never blocks)."""


@runtime_checkable
class EngineClient(Protocol):
    """An engine the server can submit requests to."""

    @property
    def tokenizer(self):
        """The model's tokenizer (prompts are tokenized by the front end)."""

    @property
    def model_name(self) -> str:
        """The model's own name (the default served name)."""

    @property
    def max_model_len(self) -> int:
        """Longest prompt + generation a request may have."""

    @property
    def vocab_size(self) -> int:
        """Token ids must lie in ``[0, vocab_size)``."""

    @property
    def is_running(self) -> bool:
        """True while requests can be served."""

    def start(self) -> None:
        """Start serving (called from the app's lifespan, inside the event loop)."""

    def shutdown(self) -> None:
        """Stop serving; requests still in flight fail with ``EngineDead``."""

    async def add_request(self, prompt: str | list[int], params: SamplingParams, request_id: str,
                          arrival_time: float | None = None) -> OutputStream:
        """Queue a request; return its stream once it was accepted.

        Raises ``ValueError`` (bad input), ``EngineOverloaded`` or ``EngineDead`` before any
        output, so callers can answer 400/503 before a response starts.
        """
