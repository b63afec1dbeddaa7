"""Engine configuration: frozen dataclasses, one per concern, gathered in EngineConfig."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SchedulerConfig:
    """Batching policy and its limits."""

    policy: str = "sarathi"
    """Scheduling policy name (see ``podserve.core.scheduler.SCHEDULERS``)."""
    chunk_size: int = 512
    """Sarathi token budget per iteration (decodes count one token each)."""
    max_num_seqs: int = 128
    """Most requests running at once."""
    max_num_batched_tokens: int | None = None
    """Token cap for policies that batch whole prompts (vllm, orca, ...); None = max_model_len."""
    max_model_len: int = 2048
    """Longest prompt plus generation a request may reach."""
    decode_maximal: bool = False
    """Original Sarathi: at most one prefill chunk per iteration."""
    tbt_slo: float | None = None
    """Sarathi: size each iteration's token budget so that its predicted time stays under
    this many seconds (Sarathi-Serve's SLO-aware budget); ``chunk_size`` is then the cap.
    Predictions come from a cost model: ``EngineConfig.profile`` in the engine, the
    simulator's own in the simulator. None keeps the fixed ``chunk_size``."""

    def __post_init__(self):
        for name in ("chunk_size", "max_num_seqs", "max_model_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SchedulerConfig.{name}={value!r} is invalid: expected an integer >= 1")
        if self.tbt_slo is not None and not (isinstance(self.tbt_slo, (int, float)) and self.tbt_slo > 0):
            raise ValueError(f"SchedulerConfig.tbt_slo={self.tbt_slo!r} is invalid: expected seconds > 0 or None")

    @property
    def token_cap(self) -> int:
        return self.max_num_batched_tokens or max(self.max_model_len, self.chunk_size)


@dataclass(frozen=True)
class CacheConfig:
    """KV cache geometry and memory budget."""

    block_size: int = 16
    """Tokens per paged KV block."""
    kv_cache_memory: int | None = None
    """Bytes for the KV pool; None = a fraction of free device memory (CPU: 1 GiB)."""
    gpu_memory_utilization: float = 0.9
    """Fraction of GPU memory the engine may use in total when kv_cache_memory is None."""
    watermark: float = 0.01
    """Fraction of blocks kept free when admitting new requests."""
    num_blocks: int | None = None
    """Force a block count (tests, simulator); overrides the memory budget. With
    ``kv_layout="virtual"`` it forces the physical page count instead."""
    kv_layout: str = "paged"
    """"paged" (block tables) or "virtual" (vAttention: a contiguous slot per request,
    physical pages mapped on demand)."""
    page_size: int | None = None
    """Virtual KV: bytes of one physical page per layer K or V; None = 2 MiB-granular
    on CUDA, about 64 KiB on CPU (rounded to whole tokens and granules)."""
    kv_background_map: bool = True
    """Virtual KV: map pages for coming decode steps on a background thread while the
    iteration computes; False maps synchronously, on demand (for comparison)."""
    kv_lookahead: int = 8
    """Virtual KV with background mapping: tokens of growth mapped ahead of need."""
    kv_map_thread: bool = False
    """Virtual KV with background mapping: map ahead on a dedicated thread instead of on the
    engine thread right after the step's kernels are enqueued (while the device computes and
    the engine would wait for the sampled tokens). On CUDA the thread's Python code competes
    for the GIL with the engine thread launching kernels, which slowed eager steps."""

    def __post_init__(self):
        if self.kv_layout not in ("paged", "virtual"):
            raise ValueError(f"CacheConfig.kv_layout={self.kv_layout!r} is invalid: choose paged or virtual (--kv)")
        if not isinstance(self.kv_lookahead, int) or self.kv_lookahead < 0:
            raise ValueError(f"CacheConfig.kv_lookahead={self.kv_lookahead!r} is invalid: expected an integer >= 0")


@dataclass(frozen=True)
class ParallelConfig:
    """Tensor and pipeline parallelism: ``tensor_parallel_size x pipeline_parallel_size``
    worker processes (one per rank) that the engine starts; the scheduler runs once, in the
    engine's process. See docs/parallel.md."""

    tensor_parallel_size: int = 1
    """Ranks each layer is split over (column/row-parallel linears, vocab-parallel
    embedding and head, KV heads split or replicated); must divide the attention heads."""
    pipeline_parallel_size: int = 1
    """Stages the layers are split over; ``pipeline_microbatches`` micro-batches are in flight."""
    pipeline_microbatches: int | None = None
    """Micro-batches in flight under pipeline parallelism; each sees at most ``1/this`` of the
    running requests (core/inflight.py). One more than the stages keeps stage 0 busy with a
    queued micro-batch while the engine applies a returned one and schedules the next (the
    host gap), at the price of smaller micro-batches. None = the default, as many as the
    stages (``pipeline_depth`` says why); when set, at least ``pipeline_parallel_size``.
    Unused without pipeline stages."""
    distributed_backend: str = "auto"
    """torch.distributed backend: "gloo", "nccl", or "auto" (nccl on CUDA, gloo on CPU)."""
    worker_timeout_s: float = 300.0
    """Seconds a worker may take to answer one step before the engine gives up and reports it."""
    worker_start_timeout_s: float = 900.0
    """Seconds a worker may take to start (import, rendezvous, load its weights). The
    workers' collectives time out after the larger of the two."""
    worker_threads: int | None = None
    """CPU threads per worker (torch intra-op); None = the machine's cores shared evenly."""
    async_scheduling: bool | None = None
    """Schedule and submit step N+1 while step N runs (its decodes' input tokens are filled
    in on the device from step N's samples), so the host's work overlaps the GPUs'. See
    core/inflight.py. None (default) = on for tensor parallelism and for one CUDA device with
    paged KV; True = also on CPU; False = off. Never with pipeline stages (they pipeline
    micro-batches instead) or virtual KV (a finished request's pages are unmapped while the
    step in flight may still touch them)."""
    custom_all_reduce: bool = True
    """Tensor-parallel all-reduces of CUDA messages up to 4 MB run one-shot over symmetric
    memory (every rank reads its peers' buffers over NVLink: distributed/allreduce.py) instead
    of through NCCL; False = NCCL for all. Falls back to NCCL, with a start-up note, where
    symmetric memory is unavailable."""

    def __post_init__(self):
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ParallelConfig.{name}={value!r} is invalid: expected an integer >= 1")
        if self.distributed_backend not in ("auto", "gloo", "nccl"):
            raise ValueError(f"ParallelConfig.distributed_backend={self.distributed_backend!r} is invalid: choose auto, gloo or nccl")
        for name in ("worker_timeout_s", "worker_start_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ParallelConfig.{name}={getattr(self, name)!r} is invalid: expected seconds > 0")
        check_pipeline_microbatches(self.pipeline_microbatches, self.pipeline_parallel_size,
                                    "ParallelConfig.pipeline_microbatches")

    @property
    def world_size(self) -> int:
        """Worker processes in all: tp x pp."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def is_distributed(self) -> bool:
        """More than one rank: the model runs in worker processes."""
        return self.world_size > 1


@dataclass(frozen=True)
class EngineConfig:
    """Everything needed to build an Engine."""

    model: str | None = None
    """HF directory, .gguf file, preset name, or None for the default SmolLM2."""
    device: str = "cpu"
    """torch device: "cpu" or "cuda[:N]"."""
    dtype: str = "auto"
    """"float32", "bfloat16", "float16", or "auto" (float32 on CPU, bfloat16 on CUDA)."""
    attention: str = "torch"
    """Attention backend: torch (reference), triton, pod."""
    seed: int = 0
    """Seed for random-weight presets and unseeded sampling."""
    max_model_len: int | None = None
    """Context cap; None = the model's own (clipped to 8192 on CPU)."""
    enforce_eager: bool = False
    """Never use CUDA graphs (captured by default on CUDA with the triton, pod and sdpa
    backends: whole decode-only steps, and piecewise the layers of steps with prefill
    tokens); vLLM's flag name."""
    cuda_graph_max_tokens: int = 1024
    """Iterations with prefill tokens and at most this many tokens run their layers as
    piecewise CUDA graphs (attention eager between pieces); larger ones run eagerly, where
    the device time exceeds the launch time anyway. 0 turns piecewise graphs off."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    profile: str | None = None
    """Profile directory (``podserve profile``) of this model on this device: the cost model
    that ``scheduler.tbt_slo`` predicts iteration times with. Unused without a TBT SLO."""

    def __post_init__(self):
        if self.cuda_graph_max_tokens < 0:
            raise ValueError(f"cuda_graph_max_tokens must be >= 0 (0 turns piecewise graphs off), "
                             f"got {self.cuda_graph_max_tokens}")


ONE_SHOT_MAX_BYTES = 4 << 20
"""Largest tensor-parallel all-reduce (bytes) sent one-shot over symmetric memory
(``ParallelConfig.custom_all_reduce``): each rank reads (tp - 1) times the message over
NVLink, so beyond a few MB a bandwidth-optimal NCCL ring catches up. Measured at TP=2 on
H200s in CUDA graphs (benchmarks/allreduce.py): one-shot faster at 4 MB (35 vs 42 us), NCCL
at 8 MB (55 vs 62 us). The simulator's ``--add-all-reduce`` import follows the same cap."""


def check_pipeline_microbatches(value: int | None, pp: int, name: str) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is None or an integer >= ``pp``
    (fewer micro-batches than stages would leave a stage idle for good)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < pp):
        raise ValueError(f"{name}={value!r} is invalid: expected None (the default) or an integer "
                         f">= the pipeline-parallel size ({pp}): every stage needs a micro-batch")


def pipeline_depth(pp: int, microbatches: int | None = None) -> int:
    """Micro-batches in flight in a ``pp``-stage pipeline (``ParallelConfig.pipeline_microbatches``),
    decided here for the engine and the simulator alike: ``microbatches`` when set, else
    ``pp``; 1 without pipeline stages. The default stays ``pp``: in simulation ``pp + 1``
    hides the host gap (sarathi's bubbles 21% -> 6%) but its smaller micro-batches read the
    weights more often, so median TBT rises 27-50% and throughput with every request at
    t=0 falls 4-13% (docs/parallel.md, benchmarks/sim_pipeline_bubbles.py)."""
    if pp == 1:
        return 1
    return microbatches if microbatches is not None else pp


def microbatches_of(spec: str, pp: int) -> int | None:
    """A ``--pipeline-microbatches`` list item: ``default`` -> None (``pipeline_depth``'s
    default), ``pp`` or ``pp+K`` -> pp + K, else an integer."""
    spec = spec.strip().replace(" ", "")
    if spec == "default":
        return None
    try:
        return pp + int(spec[2:] or 0) if spec.startswith("pp") else int(spec)
    except ValueError:
        raise ValueError(f"micro-batches {spec!r} is invalid: expected default, pp, pp+K or an integer") from None


def async_scheduling_enabled(config: EngineConfig) -> bool:
    """Whether two steps are kept in flight (``ParallelConfig.async_scheduling``): decided
    once here for the engine and for each tensor-parallel worker."""
    parallel, wanted = config.parallel, config.parallel.async_scheduling
    if wanted is False or parallel.pipeline_parallel_size > 1:
        return False
    if parallel.is_distributed:
        return True
    if config.cache.kv_layout != "paged":
        if wanted:
            raise ValueError("async_scheduling needs paged KV: with --kv virtual a finished request's pages "
                             "are unmapped while the step in flight may still touch them")
        return False
    return bool(wanted) or config.device.startswith("cuda")
