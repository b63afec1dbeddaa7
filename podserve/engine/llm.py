"""The offline API, shaped like vLLM's: ``LLM(...).generate(prompts, sampling_params)``."""
from __future__ import annotations

from typing import Sequence

from podserve.config import CacheConfig, EngineConfig, ParallelConfig, SchedulerConfig
from podserve.engine.engine import Engine
from podserve.engine.outputs import RequestOutput
from podserve.request import SamplingParams

Prompt = str | list[int]
Message = dict[str, str]


class LLM:
    """Batch generation over one engine.

    Args:
        model: HF directory, ``.gguf`` file, preset name, or None for SmolLM2-135M-Instruct.
        device, dtype: where and in what precision to run ("auto": float32 CPU, bf16 CUDA).
        scheduler: batching policy ("sarathi", ...). chunk_size: Sarathi token budget.
        max_num_seqs: most concurrent requests. kv_cache_memory: bytes for the KV pool.
        block_size: tokens per KV block. max_model_len: context cap. attention: backend.
        kv_layout: "paged" or "virtual" (contiguous KV per request, pages mapped on demand).
        decode_maximal: original Sarathi (one prefill chunk per iteration).
        gpu_memory_utilization: fraction of GPU memory for weights, activations and KV.
        enforce_eager: no CUDA graphs (on by default on CUDA: whole decode steps, and the
        layers of steps with prefill tokens up to ``cuda_graph_max_tokens`` tokens).
        tensor_parallel_size, pipeline_parallel_size: ranks per layer and pipeline stages;
        above 1 the model runs in worker processes (``close()`` or ``with LLM(...)`` stops them).
        pipeline_microbatches: micro-batches in flight with pipeline stages (None: the default,
        ``ParallelConfig.pipeline_microbatches``).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        scheduler: str = "sarathi",
        chunk_size: int = 512,
        max_num_seqs: int = 128,
        max_num_batched_tokens: int | None = None,
        kv_cache_memory: int | None = None,
        num_kv_blocks: int | None = None,
        block_size: int = 16,
        max_model_len: int | None = None,
        attention: str = "torch",
        decode_maximal: bool = False,
        seed: int = 0,
        kv_layout: str = "paged",
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        cuda_graph_max_tokens: int = 1024,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        pipeline_microbatches: int | None = None,
    ):
        config = EngineConfig(
            model=model,
            device=device,
            dtype=dtype,
            attention=attention,
            seed=seed,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            cuda_graph_max_tokens=cuda_graph_max_tokens,
            scheduler=SchedulerConfig(
                policy=scheduler,
                chunk_size=chunk_size,
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens,
                decode_maximal=decode_maximal,
            ),
            cache=CacheConfig(block_size=block_size, kv_cache_memory=kv_cache_memory, num_blocks=num_kv_blocks,
                              kv_layout=kv_layout, gpu_memory_utilization=gpu_memory_utilization),
            parallel=ParallelConfig(tensor_parallel_size=tensor_parallel_size, pipeline_parallel_size=pipeline_parallel_size,
                                    pipeline_microbatches=pipeline_microbatches),
        )
        self.engine = Engine(config)

    @classmethod
    def from_config(cls, config: EngineConfig) -> "LLM":
        """Build over a full EngineConfig (what the CLI does)."""
        llm = cls.__new__(cls)
        llm.engine = Engine(config)
        return llm

    def close(self) -> None:
        """Stop the engine's worker processes, if any (idempotent)."""
        self.engine.close()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start_profile(self) -> None:
        """Profile the kernels of the ``generate`` calls that follow (every rank's)."""
        self.engine.start_profile()

    def stop_profile(self) -> list[dict]:
        """Stop profiling; per rank, device time per step by kernel family and top kernels."""
        return self.engine.stop_profile()

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for every prompt (text or token ids); results come back in input order."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params or SamplingParams()] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"got {len(params)} sampling_params for {len(prompts)} prompts")
        engine = self.engine
        ids = []
        try:
            for prompt, p in zip(prompts, params):
                ids.append(engine.add_request(prompt, p).request_id)
        except Exception:
            for rid in ids:  # leave the engine clean for the next call
                engine.abort_request(rid)
            raise
        return self._run(ids, use_tqdm)

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation or a list of them, then generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.engine.tokenizer.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
        # The template already carries BOS where the model wants one.
        token_ids = [self.engine.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        return self.generate(token_ids, sampling_params, use_tqdm)

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        wanted = set(ids)
        results: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm and len(ids) > 1:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), desc="generate", unit="req", dynamic_ncols=True)
        # Only finished outputs are kept: the engine skips building the others (128 of them
        # a step cost ~0.7 ms of host time on CPU), while still detokenizing as it goes.
        emit, self.engine.emit_unfinished = self.engine.emit_unfinished, False
        try:
            while len(results) < len(ids):
                for out in self.engine.step():
                    if out.finished and out.request_id in wanted:
                        results[out.request_id] = out
                        if bar is not None:
                            bar.update(1)
            self.engine.drain()
        except BaseException:
            for rid in ids:
                if rid not in results:
                    self.engine.abort_request(rid)
            raise
        finally:
            self.engine.emit_unfinished = emit
            if bar is not None:
                bar.close()
        return [results[rid] for rid in ids]
