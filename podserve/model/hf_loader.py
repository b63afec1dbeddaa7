"""Read a local Hugging Face checkpoint directory: config.json, *.safetensors, generation_config.json."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from podserve.model.config import LlamaConfig, normalize_hf_config
from podserve.model.errors import ModelLoadError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
_INDEX_FILE = "model.safetensors.index.json"
_EXPECTED = "expected a Hugging Face directory with config.json, *.safetensors and tokenizer.json"


def read_json(path: Path, what: str) -> dict:
    """Parse a JSON object file, turning any failure into a one-line ModelLoadError."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"model directory {path.parent} has no {path.name}; {_EXPECTED}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{what} {path} is not valid JSON ({e}); {_EXPECTED}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{what} {path} is not a JSON object; {_EXPECTED}")
    return data


def hf_config(path: str | Path) -> LlamaConfig:
    """LlamaConfig of the checkpoint at ``path``, with generation_config.json's EOS ids merged in."""
    path = Path(path)
    d = normalize_hf_config(read_json(path / "config.json", "config"))
    model_type = d.get("model_type", "llama")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(f"config {path / 'config.json'} has model_type {model_type!r}; expected one of {SUPPORTED_MODEL_TYPES}")
    gen = path / "generation_config.json"
    if gen.is_file():
        eos = _as_list(d.get("eos_token_id")) + _as_list(read_json(gen, "generation config").get("eos_token_id"))
        d["eos_token_id"] = list(dict.fromkeys(eos)) or None
    try:
        return LlamaConfig.from_hf_dict(d)
    except KeyError as e:
        raise ModelLoadError(f"config {path / 'config.json'} lacks required key {e.args[0]!r}; {_EXPECTED}") from None
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"config {path / 'config.json'} is invalid ({e}); {_EXPECTED}") from None


def safetensors_files(path: str | Path) -> list[Path]:
    """The weight files of ``path``: the shards named by the index file, else every *.safetensors."""
    path = Path(path)
    index = path / _INDEX_FILE
    if index.is_file():
        weight_map = read_json(index, "safetensors index").get("weight_map", {})
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"model directory {path} lacks shard {missing[0]} named in {_INDEX_FILE}; {_EXPECTED}")
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"model directory {path} has no *.safetensors files; {_EXPECTED}")
    return files


def iter_hf_weights(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, tensor)`` one tensor at a time, in the checkpoint's own dtype (e.g. bf16).

    Tensors are read lazily with safe_open, so peak memory is one tensor, not one shard.
    """
    for file in safetensors_files(path):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if name.endswith("rotary_emb.inv_freq"):  # old checkpoints saved a RoPE buffer; recomputed by the model
                    continue
                yield name, f.get_tensor(name)


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return [x] if isinstance(x, int) else list(x)
