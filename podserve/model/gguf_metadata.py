"""Typed access to GGUF key/value metadata (shared by the GGUF tokenizer and weight loader)."""
from __future__ import annotations

from typing import Any

import gguf


def gguf_field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    """Value of metadata ``key`` as a Python scalar/str/list, or ``default`` when absent."""
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def gguf_architecture(reader: gguf.GGUFReader) -> str:
    """``general.architecture`` (e.g. "llama", "qwen2"); metadata keys are prefixed by it."""
    return gguf_field(reader, "general.architecture", "llama")
