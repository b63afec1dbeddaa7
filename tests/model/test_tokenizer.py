"""Tokenizer parity with transformers on the SmolLM2 GGUF, and chat template rendering."""
import pytest

from podserve.model.chat_template import ChatTemplateError, render_chat_template
from podserve.model.tokenizer import Tokenizer

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces and trailing   ",
    "tabs\tand\nnewlines\n\n\nand\r\nCRLF",
    "digits 1234567890, 3.14159 and 1,000,000",
    "unicode: héllo wörld — naïve café, 東京, Привет, 🤗🚀 emoji",
    "don't I'll we've they're it's",
    "",
    " ",
    "\n",
    "a" * 100,
    "nbsp\u00a0and zero-width\u200bjoiner",
    "def f(x):\n    return x ** 2  # comment\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text<repo_name>x<file_sep>",
    "inline<|im_start|>special",
]

MESSAGES = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi! 👋"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name 3 colours.\nThanks"},
    ],
]


@pytest.fixture(scope="module")
def tok(gguf_reader):
    return Tokenizer.from_gguf(gguf_reader)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_transformers(tok, hf_gguf_tokenizer, text):
    ids = tok.encode(text)
    assert ids == hf_gguf_tokenizer(text).input_ids
    for skip in (True, False):
        assert tok.decode(ids, skip_special_tokens=skip) == hf_gguf_tokenizer.decode(ids, skip_special_tokens=skip)
    assert tok.convert_ids_to_tokens(ids) == hf_gguf_tokenizer.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("messages", MESSAGES)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(tok, hf_gguf_tokenizer, messages, add_generation_prompt):
    ours = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    ref = hf_gguf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours == ref
    assert tok.encode(ours) == hf_gguf_tokenizer(ref).input_ids


def test_special_tokens(tok, hf_gguf_tokenizer):
    assert tok.encode("<|im_start|>") == [tok.token_to_id("<|im_start|>")]
    assert tok.bos_token_id == hf_gguf_tokenizer.bos_token_id == 1
    assert tok.add_bos_token is False  # SmolLM2 GGUF: tokenizer.ggml.add_bos_token = false
    assert tok.eos_token_ids == [hf_gguf_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert tok.vocab_size == len(hf_gguf_tokenizer) == 49152


def test_template_helpers():
    source = (
        "{% if messages[0]['role'] == 'bad' %}{{ raise_exception('roles must alternate') }}{% endif %}"
        "{{ bos_token }}{{ messages | tojson }}{{ strftime_now('%Y') | length }}"
    )
    out = render_chat_template(source, [{"role": "user", "content": "<a & b>"}], special_tokens={"bos_token": "<s>"})
    assert out == '<s>[{"role": "user", "content": "<a & b>"}]4'  # HF tojson: no HTML escaping
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        render_chat_template(source, [{"role": "bad", "content": ""}])


def test_template_is_sandboxed():
    with pytest.raises(ChatTemplateError):
        render_chat_template("{{ messages.__class__.__mro__ }}", [{"role": "user", "content": ""}])


def test_missing_chat_template_is_a_clear_error(tok):
    bare = Tokenizer(tok.backend, bos_token_id=1, eos_token_ids=[2], add_bos_token=False, chat_template=None)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        bare.apply_chat_template([{"role": "user", "content": "hi"}])
