"""How a Llama-family model is split over ``tp`` tensor-parallel ranks and ``pp`` pipeline
stages: one set of rules shared by the engine's workers (which shard weights and KV pools
by them) and the simulator (whose cost and memory models use the same per-rank shapes).

Tensor parallelism follows Megatron-LM and vLLM: the fused ``qkv`` and ``gate_up``
projections and the LM head are column-parallel (each rank owns a slice of the outputs),
``o`` and ``down`` are row-parallel (a slice of the inputs; one all-reduce after each), the
embedding is vocab-parallel. Query heads must split evenly; KV heads split evenly when
there are at least ``tp`` of them, and otherwise are replicated, each rank keeping the
one KV head its query heads read (vLLM's rule; 3 KV heads at tp=3 -> 1 each, 2 at tp=4 ->
each replicated on 2 ranks). The MLP width and the vocabulary split into ``ceil(n / tp)``
slices (the last rank's MLP slice may be shorter; the vocabulary is padded).

Pipeline parallelism gives each stage ``num_hidden_layers / pp`` consecutive layers;
stage 0 also holds the embedding, the last stage the final norm and the LM head.

Pure Python: no torch (``podserve.core`` never imports it).
"""
from __future__ import annotations

from dataclasses import dataclass, replace


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Partition:
    """Per-rank shapes of a model under ``tp`` x ``pp`` (the same for every rank of a kind)."""

    tp: int
    pp: int
    num_heads: int
    """Query heads per tensor-parallel rank."""
    num_kv_heads: int
    """KV heads per tensor-parallel rank (1 when KV heads are replicated)."""
    kv_replicas: int
    """Ranks holding each KV head: 1 when KV heads split, ``tp / num_key_value_heads`` otherwise."""
    intermediate_size: int
    """MLP width per rank (the largest slice: ``ceil(intermediate_size / tp)``)."""
    vocab_size: int
    """Vocabulary rows per rank (``ceil(vocab_size / tp)``; the last rank's tail is padding)."""
    num_layers: int
    """Decoder layers per pipeline stage."""

    @classmethod
    def of(cls, config, tp: int = 1, pp: int = 1) -> "Partition":
        """Validate ``tp`` and ``pp`` for ``config`` (a LlamaConfig) and compute the shapes.

        Raises ValueError, naming the offending sizes, when the model cannot be split so.
        """
        for name, value in (("tensor-parallel size", tp), ("pipeline-parallel size", pp)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        heads, kv = config.num_attention_heads, config.num_key_value_heads
        if heads % tp:
            raise ValueError(f"tensor-parallel size {tp} does not divide the model's {heads} attention heads; "
                             f"choose one of {_divisors(heads)}")
        if kv % tp and tp % kv:
            raise ValueError(f"tensor-parallel size {tp} and the model's {kv} KV heads do not divide one another "
                             f"(KV heads are split when tp divides them, replicated when they divide tp)")
        if config.intermediate_size < tp:
            raise ValueError(f"tensor-parallel size {tp} exceeds the MLP width {config.intermediate_size}")
        layers = config.num_hidden_layers
        if layers % pp:
            raise ValueError(f"pp={pp} does not divide the model's {layers} layers; choose one of {_divisors(layers)}")
        return cls(
            tp=tp, pp=pp,
            num_heads=heads // tp,
            num_kv_heads=max(1, kv // tp),
            kv_replicas=max(1, tp // kv),
            intermediate_size=_ceil_div(config.intermediate_size, tp),
            vocab_size=_ceil_div(config.vocab_size, tp),
            num_layers=layers // pp,
        )

    # --- what one rank owns (global indices, [start, end)) -----------------------------------
    def q_heads(self, tp_rank: int) -> tuple[int, int]:
        """Query heads of ``tp_rank``."""
        return tp_rank * self.num_heads, (tp_rank + 1) * self.num_heads

    def kv_heads(self, tp_rank: int) -> tuple[int, int]:
        """KV heads of ``tp_rank``: its own slice, or the one head its query heads share."""
        first = tp_rank // self.kv_replicas * self.num_kv_heads
        return first, first + self.num_kv_heads

    def intermediate(self, tp_rank: int, intermediate_size: int) -> tuple[int, int]:
        """MLP columns of ``tp_rank`` (the last slice may be shorter)."""
        start = tp_rank * self.intermediate_size
        return start, min(start + self.intermediate_size, intermediate_size)

    def vocab(self, tp_rank: int) -> tuple[int, int]:
        """Padded vocabulary rows of ``tp_rank`` (rows past the real vocabulary are padding)."""
        return tp_rank * self.vocab_size, (tp_rank + 1) * self.vocab_size

    def layers(self, pp_rank: int) -> tuple[int, int]:
        """Decoder layers of pipeline stage ``pp_rank``."""
        return pp_rank * self.num_layers, (pp_rank + 1) * self.num_layers

    def shard_config(self, config, tp_rank: int, pp_rank: int):
        """``config`` with the shapes one rank builds: its heads, MLP slice, vocabulary
        slice and layers (``dataclasses.replace``; head_dim is kept explicit)."""
        lo, hi = self.intermediate(tp_rank, config.intermediate_size)
        return replace(
            config,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=config.head_dim,
            intermediate_size=hi - lo,
            vocab_size=self.vocab_size,
            num_hidden_layers=self.num_layers,
        )


def rank_of(tp_rank: int, pp_rank: int, tp: int) -> int:
    """Global rank of a worker: stages are contiguous blocks of ``tp`` ranks."""
    return pp_rank * tp + tp_rank


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
