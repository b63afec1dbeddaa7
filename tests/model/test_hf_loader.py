"""Round trip through a Hugging Face directory written to tmp_path by transformers itself."""
import json

import pytest
import torch

from podserve.model.loader import resolve_model
from podserve.model.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            bos_token_id=1, eos_token_id=2)


def _write_dir(path, model, hf_gguf_tokenizer, **save_kwargs):
    model.save_pretrained(path, safe_serialization=True, **save_kwargs)
    hf_gguf_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, hf_gguf_tokenizer):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        **TINY, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64},
    )
    model = transformers.LlamaForCausalLM(config)
    path = _write_dir(tmp_path_factory.mktemp("llama"), model, hf_gguf_tokenizer, max_shard_size="500KB")
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    return path, model.state_dict()


def test_hf_dir_round_trip(llama_dir, hf_gguf_tokenizer):
    path, ref = llama_dir
    assert (path / "model.safetensors.index.json").is_file()  # sharded checkpoint with an index
    src = resolve_model(str(path))
    assert src.kind == "hf" and src.path == path
    c = src.config
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_key_value_heads, c.head_dim) == (49152, 32, 2, 2, 8)
    assert c.rope_theta == 500000.0  # transformers 5 writes it inside rope_parameters
    assert c.rope_scaling["rope_type"] == "llama3" and c.rope_scaling["factor"] == 8.0
    assert not c.tie_word_embeddings and not c.attention_bias
    weights = dict(src.weights())
    assert set(weights) == set(ref)
    for name, tensor in ref.items():
        assert torch.equal(weights[name], tensor), name
    # EOS from config.json, generation_config.json and the chat template's <|im_end|>, deduplicated.
    assert src.tokenizer.eos_token_ids[:2] == [2, 0]


def test_hf_tokenizer_matches_transformers(llama_dir, hf_gguf_tokenizer):
    path, _ = llama_dir
    tok = Tokenizer.from_hf_dir(path)
    ref = transformers.AutoTokenizer.from_pretrained(path)
    messages = [{"role": "user", "content": "Hi <b>there</b>, 42 × 7?"}]
    text = tok.apply_chat_template(messages)
    assert text == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    for s in [text, "plain text with  spaces\nand 123", "東京 🤗"]:
        assert tok.encode(s) == ref(s).input_ids
        assert tok.decode(tok.encode(s)) == ref.decode(ref(s).input_ids, skip_special_tokens=True)
    assert tok.bos_token_id == 1 and tok.add_bos_token is False


def test_qwen2_bias_names(tmp_path, hf_gguf_tokenizer):
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TINY, tie_word_embeddings=True))
    src = resolve_model(str(_write_dir(tmp_path, model, hf_gguf_tokenizer)))
    assert src.config.attention_bias and src.config.tie_word_embeddings
    weights = dict(src.weights())
    for proj in ("q_proj", "k_proj", "v_proj"):
        name = f"model.layers.1.self_attn.{proj}.bias"
        assert torch.equal(weights[name], model.state_dict()[name])
    assert "model.layers.0.self_attn.o_proj.bias" not in weights
