"""Build a Hugging Face ``tokenizers.Tokenizer`` from the tokenizer a GGUF file describes.

A GGUF carries no tokenizer.json: it stores the vocabulary (``tokenizer.ggml.tokens``), the
merges, token types and special ids as metadata under llama.cpp's key names. We rebuild the
fast tokenizer those describe, following llama.cpp's pre-tokenizer choice by
``tokenizer.ggml.pre`` (and, where they agree, transformers' GGUF converter).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import gguf
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

from podserve.model.gguf_metadata import gguf_field

# llama.cpp token types (gguf.TokenType): 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte.
_CONTROL = 3
_USER_DEFINED = 4

# Split patterns of llama.cpp's BPE pre-tokenizers (llama-vocab.cpp), by tokenizer.ggml.pre.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_BY_PRE = {
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}
# Pre-tokenizers that are GPT-2's regex with every digit split off (StarCoder/SmolLM family).
_DIGIT_SPLIT_PRES = {"smollm", "starcoder", "refact"}


@dataclass(frozen=True)
class GGUFTokenizerInfo:
    """Everything the Tokenizer wrapper needs besides the backend."""

    backend: BackendTokenizer
    bos_token_id: int | None
    eos_token_id: int | None
    eot_token_id: int | None
    unk_token_id: int | None
    pad_token_id: int | None
    add_bos_token: bool
    add_eos_token: bool
    chat_template: str | None


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters (byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _byte_level_backend(tokens: list[str], merges: list[str], pre: str) -> BackendTokenizer:
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    # Tokens are stored already spelled in the byte alphabet; re-spell the odd one that is not.
    vocab = {
        t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i for i, t in enumerate(tokens)
    }
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    backend = BackendTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    if pre in _SPLIT_BY_PRE:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLIT_BY_PRE[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    elif pre in _DIGIT_SPLIT_PRES:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    else:  # "gpt2", "default" and unknown: GPT-2's own regex
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """SentencePiece GGUFs store no merges: derive them, best-scoring merged piece first."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for piece, score in zip(tokens, scores):
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def _sentencepiece_backend(reader: gguf.GGUFReader, tokens: list[str], unk_id: int | None) -> BackendTokenizer:
    scores = gguf_field(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    unk = tokens[unk_id] if unk_id is not None else None
    backend = BackendTokenizer(
        models.BPE(vocab=vocab, merges=_sentencepiece_merges(tokens, scores), unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    add_prefix = bool(gguf_field(reader, "tokenizer.ggml.add_space_prefix", True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if add_prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    backend.decoder = decoders.Sequence(steps)
    return backend


def build_gguf_tokenizer(reader: gguf.GGUFReader) -> GGUFTokenizerInfo:
    """Rebuild the tokenizer stored in ``reader``'s metadata (byte-level BPE or SentencePiece BPE)."""
    kind = gguf_field(reader, "tokenizer.ggml.model")
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    if kind is None or not tokens:
        raise ValueError("GGUF file has no tokenizer metadata (tokenizer.ggml.model / tokenizer.ggml.tokens)")
    token_types = gguf_field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    ids = {name: gguf_field(reader, f"tokenizer.ggml.{name}_token_id") for name in ("bos", "eos", "eot", "unknown", "padding")}

    if kind == "gpt2":
        pre = gguf_field(reader, "tokenizer.ggml.pre", "default")
        backend = _byte_level_backend(tokens, gguf_field(reader, "tokenizer.ggml.merges") or [], pre)
        alphabet = set(bytes_to_unicode().values())
        # A "control" token spelled outside the byte alphabet is a llama.cpp mislabel, not a real special.
        is_real = lambda t: set(t) <= alphabet  # noqa: E731
        default_add_bos = False
    elif kind == "llama":
        backend = _sentencepiece_backend(reader, tokens, ids["unknown"])
        is_real = lambda t: True  # noqa: E731
        # llama.cpp adds BOS to SentencePiece vocabularies unless the file says otherwise.
        default_add_bos = True
    else:
        raise ValueError(f"unsupported GGUF tokenizer.ggml.model {kind!r}; expected 'gpt2' or 'llama'")

    # Control tokens (and the declared specials) must be matched whole, e.g. "<|im_start|>" -> one id.
    special_ids = {i for i, (t, ty) in enumerate(zip(tokens, token_types)) if ty == _CONTROL and is_real(t)}
    special_ids |= {i for i in ids.values() if i is not None and 0 <= i < len(tokens)}
    backend.add_special_tokens([AddedToken(tokens[i], normalized=False, special=True) for i in sorted(special_ids)])
    user_defined = [AddedToken(t, normalized=False, special=False) for t, ty in zip(tokens, token_types) if ty == _USER_DEFINED]
    if user_defined:
        backend.add_tokens(user_defined)

    return GGUFTokenizerInfo(
        backend=backend,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        eot_token_id=ids["eot"],
        unk_token_id=ids["unknown"],
        pad_token_id=ids["padding"],
        add_bos_token=bool(gguf_field(reader, "tokenizer.ggml.add_bos_token", default_add_bos)),
        add_eos_token=bool(gguf_field(reader, "tokenizer.ggml.add_eos_token", False)),
        chat_template=gguf_field(reader, "tokenizer.chat_template"),
    )
