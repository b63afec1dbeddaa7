"""Render a model's own Jinja chat template the way Hugging Face transformers does.

Chat templates ship inside checkpoints (tokenizer_config.json, chat_template.jinja, GGUF
metadata), so they are untrusted code: they run in jinja2's immutable sandbox.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The model has no chat template, or its template refused the conversation."""


def _raise_exception(message: str):
    # Templates call raise_exception("Conversation roles must alternate ...") on bad input.
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's built-in tojson HTML-escapes '<' and '&'; HF's does not, and templates rely on that.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a template once; same environment options as transformers (trim/lstrip blocks)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def render_chat_template(
    source: str | None,
    messages: list[dict],
    *,
    add_generation_prompt: bool = True,
    special_tokens: dict[str, str | None] | None = None,
    **kwargs,
) -> str:
    """Render ``messages`` (``[{"role": ..., "content": ...}, ...]``) with template ``source``.

    ``special_tokens`` supplies ``bos_token``/``eos_token``/... as template variables; extra
    ``kwargs`` (e.g. ``tools``) are passed through. Raises ChatTemplateError when there is no
    template or the template raises.
    """
    if not source:
        raise ChatTemplateError(
            "this model has no chat template (none in tokenizer_config.json, chat_template.jinja "
            "or GGUF tokenizer.chat_template); pass a plain prompt instead"
        )
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise ChatTemplateError(f"chat messages must be dicts with a 'role', got {message!r}")
    variables = {k: v for k, v in (special_tokens or {}).items() if v is not None}
    variables.update(kwargs)
    try:
        return compile_chat_template(source).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **variables
        )
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"chat template error: {e}") from e
