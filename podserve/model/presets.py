"""Named model shapes with random weights, for benchmarking real sizes without checkpoints.

The model initialises the weights itself (the loader reports ``weights=None``). Every preset
uses the default SmolLM2 tokenizer, so token ids are *shape-only*: text is tokenized with
SmolLM2's vocabulary and ids are folded into the preset's ``vocab_size``. Generated text is
therefore meaningless; the point is realistic tensor shapes and sequence lengths.
"""
from __future__ import annotations

import copy

from podserve.model.config import LlamaConfig
from podserve.model.tokenizer import Tokenizer

_LLAMA3_ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

# Shapes copied from each model's published config.json. bos/eos are those of the shared
# SmolLM2 tokenizer (1, 2) because that is the tokenizer presets run with.
_SPECS: dict[str, dict] = {
    "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
                       max_position_embeddings=8192),
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
                         rope_scaling=_LLAMA3_ROPE_SCALING, max_position_embeddings=131072),
    "llama-3-70b": dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, rope_theta=500000.0,
                        max_position_embeddings=8192),
    "llama-2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, rope_theta=10000.0,
                       max_position_embeddings=4096),
    # Mistral-7B-Instruct-v0.2: no sliding window (v0.1's 4096-token window is not modelled).
    "mistral-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, rope_theta=1000000.0,
                       max_position_embeddings=32768),
    "qwen2-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=1000000.0,
                     max_position_embeddings=32768, attention_bias=True),
    "yi-6b": dict(vocab_size=64000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=4, rope_theta=5000000.0,
                  max_position_embeddings=4096),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0,
                         max_position_embeddings=8192, tie_word_embeddings=True),
    # For tests: every code path (GQA, untied head) at a size that runs in milliseconds.
    "tiny-llama": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                       max_position_embeddings=2048),
}

PRESET_NAMES: tuple[str, ...] = tuple(_SPECS)


def preset_config(name: str) -> LlamaConfig:
    """LlamaConfig of preset ``name`` (KeyError if unknown; see PRESET_NAMES)."""
    # deepcopy: callers must not be able to mutate the shared rope_scaling dict
    return LlamaConfig(**copy.deepcopy(_SPECS[name]), bos_token_id=1, eos_token_id=2)


class PresetTokenizer(Tokenizer):
    """A real tokenizer whose ids are folded into a preset's vocabulary (shape-only ids).

    ``encode`` maps id -> id % vocab_size so every id is a valid embedding row; ``decode`` maps
    ids beyond the tokenizer's vocabulary back into it, so any sampled id decodes to something.
    """

    def __init__(self, base: Tokenizer, model_vocab_size: int):
        self.__dict__.update(base.__dict__)
        self.model_vocab_size = model_vocab_size
        self.eos_token_ids = [i for i in base.eos_token_ids if i < model_vocab_size]
        self._backend_vocab = self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """The preset's vocabulary size (ids the model can emit)."""
        return self.model_vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """SmolLM2 ids of ``text`` folded into ``[0, model_vocab_size)``."""
        return [i % self.model_vocab_size for i in super().encode(text, add_special_tokens)]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` with out-of-vocabulary ids folded into the tokenizer's vocabulary."""
        return super().decode([i % self._backend_vocab for i in ids], skip_special_tokens)

    def _fold(self, token_id: int) -> int:
        return token_id % self._backend_vocab

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        n = self.backend.get_vocab_size(with_added_tokens=True)
        return super().convert_ids_to_tokens([i % n for i in ids])
