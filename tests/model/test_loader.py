"""resolve_model: the default model, presets, and one-line errors for bad specs."""
import json

import pytest
import torch
from safetensors.torch import save_file

from podserve.model.loader import ModelLoadError, resolve_model
from podserve.model.presets import PRESET_NAMES


def _one_line_error(spec, *fragments):
    with pytest.raises(ModelLoadError) as info:
        resolve_model(spec)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(info.value, ValueError)
    return message


def test_default_is_smollm2_gguf():
    src = resolve_model(None)
    assert src.kind == "gguf" and src.path.suffix == ".gguf" and src.name == "SmolLM2-135M-Instruct"
    assert src.config.num_hidden_layers == 30 and src.config.tie_word_embeddings
    name, tensor = next(src.weights())
    assert name == "model.embed_tokens.weight" and tensor.shape == (49152, 576) and tensor.dtype == torch.float32


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_have_real_shapes_and_fold_ids(name):
    src = resolve_model(name)
    assert src.kind == "preset" and src.weights is None and src.path is None
    ids = src.tokenizer.encode("Hello 東京 <|im_start|> world")
    assert ids and all(0 <= i < src.config.vocab_size for i in ids)
    assert isinstance(src.tokenizer.decode([src.config.vocab_size - 1, 5, 7]), str)
    assert all(i < src.config.vocab_size for i in src.tokenizer.eos_token_ids)


def test_preset_shapes():
    c = resolve_model("llama-3.1-8b").config
    assert (c.hidden_size, c.num_key_value_heads, c.max_position_embeddings) == (4096, 8, 131072)
    assert c.rope_scaling["rope_type"] == "llama3"
    assert resolve_model("qwen2-7b").config.attention_bias
    assert resolve_model("llama-2-7b").config.num_key_value_heads == 32
    tiny = resolve_model("tiny-llama").config
    assert (tiny.num_hidden_layers, tiny.hidden_size, tiny.num_attention_heads, tiny.num_key_value_heads,
            tiny.vocab_size) == (2, 64, 4, 2, 512)


def test_missing_path(tmp_path):
    missing = tmp_path / "nope"
    _one_line_error(str(missing), str(missing), "does not exist", "config.json", ".gguf", "llama-3-8b")


def test_unknown_preset():
    _one_line_error("llama-9-1b", "'llama-9-1b'", "preset name", "tiny-llama")


def test_dir_without_config(tmp_path):
    _one_line_error(str(tmp_path), str(tmp_path), "config.json")


def test_corrupt_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    _one_line_error(str(tmp_path), str(tmp_path / "config.json"), "not valid JSON")


def test_config_missing_key(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 8}))
    _one_line_error(str(tmp_path), "hidden_size")


def test_dir_without_safetensors(tmp_path):
    config = dict(model_type="llama", vocab_size=8, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                  num_attention_heads=2)
    (tmp_path / "config.json").write_text(json.dumps(config))
    _one_line_error(str(tmp_path), str(tmp_path), "safetensors")
    save_file({"model.norm.weight": torch.ones(8)}, tmp_path / "model.safetensors")
    _one_line_error(str(tmp_path), "tokenizer.json")


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    _one_line_error(str(tmp_path), "gpt2", "llama")


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"definitely not gguf")
    _one_line_error(str(bad), str(bad), "GGUF")
    txt = tmp_path / "weights.bin"
    txt.write_bytes(b"x")
    _one_line_error(str(txt), str(txt), "not a .gguf")
