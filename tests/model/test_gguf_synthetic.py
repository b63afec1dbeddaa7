"""Tiny GGUF files written here with gguf.GGUFWriter, checked against transformers' GGUF readers.

They cover what the SmolLM2 file does not: the qwen2 architecture (q/k/v biases, no Q/K
permutation), F16/BF16/Q8_0/Q4_0 tensors, a SentencePiece ("llama") vocabulary and the Llama-3
("llama-bpe") pre-tokenizer.
"""
import warnings

import gguf
import numpy as np
import pytest
import torch

from podserve.model.gguf_loader import _llama3_rope_divisors, gguf_config, iter_gguf_weights
from podserve.model.loader import resolve_model
from podserve.model.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
Q = gguf.GGMLQuantizationType

HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 64, 96, 4, 2, 300


def _add_tensor(writer, name, array, qtype):
    array = np.ascontiguousarray(array, dtype=np.float32)
    if qtype == Q.F32:
        writer.add_tensor(name, array)
    elif qtype == Q.F16:
        writer.add_tensor(name, array.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)


def _write_gguf(path, arch, tokenizer_meta, extra_tensors=()):
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(2)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    tokenizer_meta(w)
    _add_tensor(w, "token_embd.weight", rng.standard_normal((VOCAB, HIDDEN)), Q.Q8_0)
    _add_tensor(w, "output.weight", rng.standard_normal((VOCAB, HIDDEN)), Q.BF16)
    _add_tensor(w, "output_norm.weight", rng.standard_normal(HIDDEN), Q.F32)
    for name, array in extra_tensors:
        _add_tensor(w, name, array, Q.F32)
    head_dim = HIDDEN // HEADS
    for i in range(2):
        shapes = {"attn_q": HIDDEN, "attn_k": KV_HEADS * head_dim, "attn_v": KV_HEADS * head_dim}
        for part, rows in shapes.items():
            _add_tensor(w, f"blk.{i}.{part}.weight", rng.standard_normal((rows, HIDDEN)), Q.Q4_0)
            _add_tensor(w, f"blk.{i}.{part}.bias", rng.standard_normal(rows), Q.F32)
        _add_tensor(w, f"blk.{i}.attn_output.weight", rng.standard_normal((HIDDEN, HIDDEN)), Q.F16)
        _add_tensor(w, f"blk.{i}.ffn_gate.weight", rng.standard_normal((FFN, HIDDEN)), Q.Q4_1)
        _add_tensor(w, f"blk.{i}.ffn_up.weight", rng.standard_normal((FFN, HIDDEN)), Q.Q8_0)
        _add_tensor(w, f"blk.{i}.ffn_down.weight", rng.standard_normal((HIDDEN, FFN)), Q.F16)
        _add_tensor(w, f"blk.{i}.attn_norm.weight", rng.standard_normal(HIDDEN), Q.F32)
        _add_tensor(w, f"blk.{i}.ffn_norm.weight", rng.standard_normal(HIDDEN), Q.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _byte_level_meta(gguf_reader, pre):
    """SmolLM2's vocabulary and merges, cut to VOCAB tokens, under another pre-tokenizer name."""
    tokens = gguf_reader.fields["tokenizer.ggml.tokens"].contents()[:VOCAB]
    kept = set(tokens)
    merges = [m for m in gguf_reader.fields["tokenizer.ggml.merges"].contents()
              if "".join(m.split(" ")) in kept and all(p in kept for p in m.split(" "))]

    def meta(w):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types([3 if t.startswith("<") and t.endswith(">") else 1 for t in tokens])
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(True)
        w.add_chat_template("{% for m in messages %}{{ bos_token + m['content'] + eos_token }}{% endfor %}")
    return meta


def _sentencepiece_meta(w):
    pieces = ["▁", "a", "b", "c", "t", "h", "e", "▁t", "th", "▁th", "▁the", "he", "ab", "▁a", "▁ab", "ca"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    tokens += [f"▁pad{i}" for i in range(VOCAB - len(tokens))]
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)


def _hf_tokenizer(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def qwen2_gguf(tmp_path_factory, gguf_reader):
    path = tmp_path_factory.mktemp("qwen2") / "tiny-qwen2.gguf"
    return _write_gguf(path, "qwen2", _byte_level_meta(gguf_reader, "qwen2"))


def test_qwen2_weights_equal_transformers(qwen2_gguf):
    reader = gguf.GGUFReader(qwen2_gguf)
    config = gguf_config(reader)
    assert config.attention_bias and not config.tie_word_embeddings
    assert (config.num_key_value_heads, config.rope_theta, config.vocab_size) == (KV_HEADS, 1000000.0, VOCAB)
    ours = dict(iter_gguf_weights(reader, config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = transformers.AutoModelForCausalLM.from_pretrained(
            str(qwen2_gguf.parent), gguf_file=qwen2_gguf.name, dtype=torch.float32).state_dict()
    assert set(ours) == set(ref)
    for name, tensor in ref.items():
        assert torch.equal(ours[name], tensor), name


def test_gguf_file_by_path(qwen2_gguf):
    src = resolve_model(str(qwen2_gguf))
    assert (src.kind, src.name, src.path) == ("gguf", "tiny-qwen2", qwen2_gguf)
    assert src.config.attention_bias and src.tokenizer.add_bos_token
    names = [name for name, _ in src.weights()]
    assert "model.layers.1.self_attn.k_proj.bias" in names and "lm_head.weight" in names


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "gpt2"])
def test_byte_level_pre_tokenizers_match_transformers(tmp_path, gguf_reader, pre):
    path = _write_gguf(tmp_path / f"{pre}.gguf", "llama", _byte_level_meta(gguf_reader, pre))
    tok, ref = Tokenizer.from_gguf(gguf.GGUFReader(path)), _hf_tokenizer(path)
    assert tok.add_bos_token
    for text in ["Hello world 12345 6789", "it's   spaced\n\n  out\r\n", "abc<|im_start|>def", "東京 🤗"]:
        assert tok.encode(text) == ref(text).input_ids, text
        assert tok.decode(tok.encode(text)) == ref.decode(ref(text).input_ids, skip_special_tokens=True)


def test_sentencepiece_vocab_matches_transformers(tmp_path):
    path = _write_gguf(tmp_path / "sp.gguf", "llama", _sentencepiece_meta)
    tok, ref = Tokenizer.from_gguf(gguf.GGUFReader(path)), _hf_tokenizer(path)
    assert tok.add_bos_token  # SentencePiece GGUFs default to adding BOS
    for text in ["the cat", " the  abc", "a\nb", "héllo", "the</s>ab"]:
        ids = tok.encode(text)
        assert ids == ref(text).input_ids, text
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True), text


def test_llama3_rope_freqs_become_rope_scaling(tmp_path, gguf_reader):
    # Llama-3.1 GGUFs carry precomputed RoPE divisors (rope_freqs.weight) instead of rope_scaling.
    params = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
    divisors = _llama3_rope_divisors(params, HIDDEN // HEADS, 1000000.0)
    assert divisors.min() == 1.0 and divisors.max() == 8.0
    path = _write_gguf(tmp_path / "l31.gguf", "llama", _byte_level_meta(gguf_reader, "llama-bpe"),
                       extra_tensors=[("rope_freqs.weight", divisors)])
    reader = gguf.GGUFReader(path)
    config = gguf_config(reader)
    assert config.rope_scaling == params
    assert "rope_freqs.weight" not in {name for name, _ in iter_gguf_weights(reader, config)}
