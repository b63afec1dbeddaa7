"""GGUF weights and config against transformers' own GGUF loader (which also un-permutes Q/K)."""
import os
import warnings

import pytest
import torch

from podserve.model.gguf_loader import gguf_config, hf_tensor_name, iter_gguf_weights, unpermute_rotary


@pytest.fixture(scope="module")
def hf_gguf_model(gguf_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers requires it to load GGUF
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoModelForCausalLM.from_pretrained(
            os.fspath(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )


@pytest.fixture(scope="module")
def ours(gguf_reader):
    config = gguf_config(gguf_reader)
    return config, dict(iter_gguf_weights(gguf_reader, config))


def test_config_matches_transformers(ours, hf_gguf_model):
    config, _ = ours
    ref = hf_gguf_model.config
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings",
                  "bos_token_id", "eos_token_id"):
        assert getattr(config, field) == getattr(ref, field), field
    assert config.rms_norm_eps == pytest.approx(ref.rms_norm_eps)
    assert config.rope_theta == ref.rope_parameters["rope_theta"]
    assert config.rope_scaling is None


def test_weights_equal_transformers(ours, hf_gguf_model):
    config, weights = ours
    ref = hf_gguf_model.state_dict()
    # SmolLM2 ties the LM head to the embedding: no lm_head.weight is yielded.
    assert config.tie_word_embeddings and "lm_head.weight" not in weights
    assert set(weights) == set(ref) - {"lm_head.weight"}
    for name in ["model.embed_tokens.weight", "model.norm.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.0.self_attn.k_proj.weight", "model.layers.29.self_attn.q_proj.weight",
                 "model.layers.7.self_attn.v_proj.weight", "model.layers.7.self_attn.o_proj.weight",
                 "model.layers.3.mlp.down_proj.weight", "model.layers.3.input_layernorm.weight"]:
        assert weights[name].dtype == torch.float32
        assert torch.equal(weights[name], ref[name]), name


def test_unpermute_inverts_llama_cpp_permute():
    # convert_hf_to_gguf.LlamaModel.permute, as llama.cpp writes q_proj/k_proj.
    def permute(w, n_head):
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    for n_head, shape in [(4, (64, 48)), (3, (192, 576)), (2, (16,))]:
        w = torch.randn(shape)
        assert torch.equal(unpermute_rotary(permute(w, n_head), n_head), w)


@pytest.mark.parametrize("gguf_name, hf_name", [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output.weight", "lm_head.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("blk.12.attn_q.weight", "model.layers.12.self_attn.q_proj.weight"),
    ("blk.0.attn_q.bias", "model.layers.0.self_attn.q_proj.bias"),
    ("blk.0.attn_k.bias", "model.layers.0.self_attn.k_proj.bias"),
    ("blk.0.attn_v.bias", "model.layers.0.self_attn.v_proj.bias"),
    ("blk.1.attn_output.weight", "model.layers.1.self_attn.o_proj.weight"),
    ("blk.2.ffn_gate.weight", "model.layers.2.mlp.gate_proj.weight"),
    ("blk.2.ffn_up.weight", "model.layers.2.mlp.up_proj.weight"),
    ("blk.2.ffn_down.weight", "model.layers.2.mlp.down_proj.weight"),
    ("blk.3.attn_norm.weight", "model.layers.3.input_layernorm.weight"),
    ("blk.3.ffn_norm.weight", "model.layers.3.post_attention_layernorm.weight"),
])
def test_tensor_names(gguf_name, hf_name):
    assert hf_tensor_name(gguf_name) == hf_name


def test_unknown_tensor_name_is_an_error():
    with pytest.raises(ValueError, match="blk.0.ffn_gate_exps.weight"):
        hf_tensor_name("blk.0.ffn_gate_exps.weight")
