"""A byte-level tokenizer with no merges: 256 byte tokens plus <s> and </s>.

Used where no real vocabulary is at hand: random-weight presets on a machine without the
default model package (GPU benchmark hosts), and tiny test checkpoints.
"""
from __future__ import annotations

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers

BOS, EOS = "<s>", "</s>"


def byte_level_backend() -> BackendTokenizer:
    """ids 0 and 1 are <s> and </s>; ids 2..257 the 256 byte-level symbols."""
    vocab = {BOS: 0, EOS: 1}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    backend = BackendTokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([BOS, EOS])
    return backend
