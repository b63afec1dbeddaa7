"""Shape and numerics of a Llama-family decoder (Llama-2/3, Mistral, Qwen2, SmolLM2)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LlamaConfig:
    """Architecture hyper-parameters, named as in Hugging Face ``config.json``."""

    vocab_size: int
    """Rows of the embedding and of the LM head."""
    hidden_size: int
    """Width of the residual stream."""
    intermediate_size: int
    """Width of the SwiGLU MLP."""
    num_hidden_layers: int
    """Number of decoder layers."""
    num_attention_heads: int
    """Query heads."""
    num_key_value_heads: int
    """KV heads (grouped-query attention when fewer than query heads)."""
    head_dim: int = 0
    """Per-head width; 0 means hidden_size // num_attention_heads."""
    rms_norm_eps: float = 1e-5
    """Epsilon of every RMSNorm."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    rope_scaling: dict | None = field(default=None, hash=False, compare=False)
    """HF rope_scaling dict; ``{"rope_type": "llama3", ...}`` is supported."""
    max_position_embeddings: int = 4096
    """Context length the model was trained for (the engine's default max_model_len)."""
    tie_word_embeddings: bool = False
    """LM head shares the embedding matrix."""
    attention_bias: bool = False
    """q/k/v projections carry a bias (Qwen2)."""
    bos_token_id: int | None = None
    """Beginning-of-sequence token id, if any."""
    eos_token_id: int | list[int] | None = None
    """End-of-sequence token id(s)."""

    def __post_init__(self):
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )

    @classmethod
    def from_hf_dict(cls, d: dict) -> "LlamaConfig":
        """Build from a parsed Hugging Face ``config.json`` (llama, mistral, qwen2)."""
        d = normalize_hf_config(d)
        arch = d.get("model_type", "llama")
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            head_dim=d.get("head_dim") or 0,
            rms_norm_eps=d.get("rms_norm_eps", 1e-5),
            rope_theta=d.get("rope_theta", 10000.0),
            rope_scaling=d.get("rope_scaling"),
            max_position_embeddings=d.get("max_position_embeddings", 4096),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            attention_bias=d.get("attention_bias", arch == "qwen2"),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
        )

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    @property
    def kv_elements_per_token(self) -> int:
        """K+V elements per token across all layers (times the dtype size gives bytes)."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim


def normalize_hf_config(d: dict) -> dict:
    """Bring config.json variants to the keys LlamaConfig.from_hf_dict reads.

    transformers >= 5 writes RoPE settings as ``rope_parameters`` (theta inside) instead of
    top-level ``rope_theta`` + ``rope_scaling``; older files may spell ``type`` for ``rope_type``.
    """
    d = dict(d)
    params = d.get("rope_parameters")
    if isinstance(params, dict):
        if "rope_theta" in params:
            d.setdefault("rope_theta", params["rope_theta"])
        if params.get("rope_type", params.get("type", "default")) != "default":
            d.setdefault("rope_scaling", {k: v for k, v in params.items() if k != "rope_theta"})
    scaling = d.get("rope_scaling")
    if isinstance(scaling, dict) and "rope_type" not in scaling and "type" in scaling:
        d["rope_scaling"] = {**scaling, "rope_type": scaling["type"]}
    return d
