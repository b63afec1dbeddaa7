"""ModelRunner: builds the model and the KV pool, and executes ScheduledBatches.

One step on CUDA: stage the batch's integers into pinned memory and copy them to
persistent device buffers (``inputs.py``), replay a captured decode graph, the piecewise
graphs of a step with prefill tokens, or the eager forward, sample on the device, and queue
the sampled tokens' copy into pinned memory behind an event (``submit``); ``collect`` waits
for that event only — the step's one host-device sync, which a later submitted step does
not delay. CUDA events around the step measure its device time; the host time until
everything is enqueued is reported beside it.

Memory on CUDA: weights first, then a profiling forward pass of the largest batch the
scheduler can form measures the activation peak, and the KV pool gets what
``gpu_memory_utilization`` leaves after weights, that peak, the sampler's logits and the
CUDA graphs' pool.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import numpy as np
import torch

from podserve.attention import make_backend
from podserve.config import EngineConfig
from podserve.core.batch import PENDING_TOKEN, ExecutorOutput, IterationTiming, ScheduledBatch, ScheduledSeq
from podserve.executor.inputs import InputBuffers, ModelInputs
from podserve.executor.profiler import StepProfiler
from podserve.executor.sampler import Sampler
from podserve.kernels import cpu_linear
from podserve.memory.paged_pool import PagedKVPool
from podserve.memory.virtual_pool import VirtualKVPool
from podserve.model.config import LlamaConfig
from podserve.model.llama import LlamaForCausalLM
from podserve.request import SamplingParams

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

GRAPH_POOL_RESERVE = 512 << 20
"""Bytes kept out of the KV budget for the CUDA graphs' private memory pool."""
SAMPLER_BYTES_PER_LOGIT = 24
"""Sampler working set per logit (float32 logits, probabilities, sorted copy, int64 order)."""


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto" means float32 on CPU (fast and exact there) and bfloat16 on CUDA."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not supported; choose auto, {', '.join(_DTYPES)}") from None


@dataclass
class StepHandle:
    """A submitted step: where its tokens will be, and what ``collect`` needs."""

    num_seqs: int
    sample_rows: list[int]
    tokens: torch.Tensor | None
    """Pinned host copy of the sampled ids (filled by a queued copy), or None."""
    done: object
    """CUDA event after that copy (None on CPU: the copy is done)."""
    timing: IterationTiming
    start: float


class ModelRunner:
    """Owns the model weights, the physical KV pool, the attention backend and the sampler."""

    def __init__(self, config: EngineConfig, model_config: LlamaConfig, weights, max_model_len: int,
                 model_hook=None):
        """``model_hook(model)``, if given, runs once the weights are loaded and before anything
        else uses the model: tensor/pipeline-parallel workers install their wrappers there."""
        self.config = config
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but torch sees no CUDA device; use --device cpu")
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.model_config = model_config
        self.max_model_len = max_model_len
        self._cuda = self.device.type == "cuda"
        torch.manual_seed(config.seed)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)  # build in the target dtype: no float32 copy of 8B weights
        try:
            with torch.device(self.device):
                model = LlamaForCausalLM(model_config, max_positions=max_model_len)
        finally:
            torch.set_default_dtype(previous)
        if weights is None:
            model.init_random(config.seed)
        else:
            model.load_weights(weights())
        if model_hook is not None:
            model_hook(model)
        self.packed_linears = cpu_linear.pack_linears(model) if self.device.type == "cpu" else 0
        """CPU: linear layers whose weights were packed for oneDNN at load (kernels/cpu_linear.py)."""
        self.model = model.eval()
        self._sharded = model_hook is not None
        """A tensor/pipeline-parallel rank: its forward runs collectives with the other ranks,
        so no forward may run at start-up (activation profile, kernel warm-up, graph capture)
        unless every rank runs the same one, and graphs would capture those collectives."""
        self.backend = make_backend(config.attention)
        sched = config.scheduler
        self.max_num_tokens = max(sched.token_cap, sched.max_num_seqs)
        """Most tokens one iteration can hold (the input buffers' initial size)."""
        self.startup_errors: list[str] = []
        """What failed at start-up and was worked around (a fallback was taken), if anything."""
        self.activation_bytes = None
        if self._cuda and not self._sharded:
            self.activation_bytes = self._try(self.profile_activation_peak, "activation profile")
        reserve = None
        if self.activation_bytes is not None:
            logits = sched.max_num_seqs * model_config.vocab_size * SAMPLER_BYTES_PER_LOGIT
            reserve = self.activation_bytes + logits + GRAPH_POOL_RESERVE + self._piecewise_static_bytes()
        if config.cache.kv_layout == "virtual":
            # One contiguous slot per running request: slots = max_num_seqs.
            self.kv_pool = VirtualKVPool.create(model_config, config.cache, self.dtype, self.device, sched.max_num_seqs,
                                                max_model_len, reserve_bytes=reserve)
        else:
            self.kv_pool = PagedKVPool.create(model_config, config.cache, self.dtype, self.device, reserve_bytes=reserve)
        self._virtual = config.cache.kv_layout == "virtual"
        block_size = self.kv_pool.block_size
        self.max_blocks_per_seq = -(-max_model_len // block_size)
        self.inputs = InputBuffers(self.device, self.max_num_tokens, sched.max_num_seqs, self.max_blocks_per_seq)
        self.sampler = Sampler(self.device, config.seed)
        self.profiler = StepProfiler(self.device)
        """Kernel profile of the steps between ``profiler.start()`` and ``stop()`` (Engine.start_profile)."""
        self._pending: list[tuple[IterationTiming, torch.cuda.Event, torch.cuda.Event]] = []
        self._prev_sampled: tuple[torch.Tensor, list, list[int]] | None = None
        """The last submitted step's device tokens, its sequences and the rows that sampled:
        the input of decodes scheduled before that step returned (asynchronous scheduling)."""
        self.graphs = None
        self.hybrid_graphs = None
        if self.use_cuda_graphs:
            from podserve.executor.cuda_graphs import DecodeGraphs, graph_buckets
            from podserve.executor.piecewise_graphs import HybridGraphs, token_buckets

            self._try(self.warmup_kernels, "kernel warm-up")
            graphs = DecodeGraphs(self, graph_buckets(sched.max_num_seqs))
            if self._try(graphs.capture, "CUDA graph capture", failed=False) is not False:
                self.graphs = graphs
            max_tokens = self.piecewise_max_tokens
            if max_tokens:
                hybrid = HybridGraphs(self, token_buckets(max_tokens), pool=self.graphs and self.graphs._pool)
                if self._try(hybrid.capture, "piecewise CUDA graph capture", failed=False) is not False:
                    self.hybrid_graphs = hybrid

    def _try(self, fn, what: str, failed=None):
        """Run a start-up optimisation; on failure warn, record it and return ``failed`` (the
        engine then runs without it: the KV budget's default margin, eager decodes)."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - an optional speed-up must not stop serving
            import warnings

            message = f"{what} failed ({type(e).__name__}: {e}); continuing without it"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            self.startup_errors.append(message)
            if self._cuda:
                try:
                    torch.cuda.synchronize(self.device)
                except Exception:  # noqa: BLE001 - a sticky CUDA error: the next real op reports it
                    pass
            return failed

    @property
    def num_blocks(self) -> int:
        return self.kv_pool.num_blocks

    @property
    def use_cuda_graphs(self) -> bool:
        """On by default on CUDA with a Triton backend; ``enforce_eager`` turns them off.

        Tensor-parallel ranks capture too: every rank receives the same batches and captures
        the same buckets in the same order, so the all-reduces inside the graphs pair up (NCCL
        collectives are capturable). Pipeline stages do not: ``PipelineRecv`` waits on the host
        for the previous stage's activations, which a graph cannot do."""
        from podserve.executor.cuda_graphs import CAPTURABLE_BACKENDS

        sharded_ok = not self._sharded or self.config.parallel.pipeline_parallel_size == 1
        return (self._cuda and sharded_ok and not self.config.enforce_eager
                and self.config.attention in CAPTURABLE_BACKENDS)

    @property
    def piecewise_max_tokens(self) -> int:
        """Largest piecewise-graph bucket: ``cuda_graph_max_tokens`` capped by the token budget."""
        return min(self.config.cuda_graph_max_tokens, self.max_num_tokens)

    def _piecewise_static_bytes(self) -> int:
        if not self.use_cuda_graphs or not self.piecewise_max_tokens:
            return 0
        from podserve.executor.piecewise_graphs import static_bytes

        c = self.model_config
        return static_bytes(c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim,
                            self.piecewise_max_tokens, torch.finfo(self.dtype).bits // 8)

    # --- one step ------------------------------------------------------------------------
    def prepare(self, batch: ScheduledBatch):
        """Flatten the batch into varlen device tensors (decodes first, then prefill chunks).

        Returns ``(input_ids, positions, meta, sample_idx)``; ``sample_idx`` (int64, device)
        are the rows of the hidden states to sample. The tensors are views of persistent
        buffers, valid until the next call.
        """
        inputs = self.inputs.prepare(batch, self.kv_pool.block_size)
        return inputs.input_ids, inputs.positions, inputs.meta, inputs.sample_idx

    def _forward_logits(self, inputs: ModelInputs, all_rows: bool = False) -> torch.Tensor | None:
        """Forward pass and LM head over the sampled rows (or every row): [rows, vocab] float32."""
        self.backend.prepare(inputs.meta)
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_pool.caches, inputs.meta, self.backend)
        if all_rows:
            return self.model.compute_logits(hidden)
        return self._sampled_logits(hidden, inputs)

    def _piecewise_logits(self, inputs: ModelInputs) -> torch.Tensor | None:
        """Like ``_forward_logits`` over the piecewise graphs (``piecewise_graphs.py``)."""
        return self._sampled_logits(self.hybrid_graphs.run(inputs), inputs)

    def _sampled_logits(self, hidden: torch.Tensor, inputs: ModelInputs) -> torch.Tensor | None:
        """LM head over the rows that sample (hidden [num_tokens, hidden]): [rows, vocab] float32."""
        if not inputs.sample_rows:
            return None
        return self.model.compute_logits(hidden.index_select(0, inputs.sample_idx))

    def execute(self, batch: ScheduledBatch) -> ExecutorOutput:
        """Run one iteration and sample a token for every sequence that asks for one."""
        return self.collect(self.submit(batch))

    @torch.inference_mode()
    def submit(self, batch: ScheduledBatch) -> "StepHandle":
        """Enqueue one iteration (inputs, forward, sampling, the tokens' copy to pinned host
        memory) without waiting for the device; ``collect`` returns its tokens.

        Decodes fed ``PENDING_TOKEN`` (asynchronous scheduling) get the token sampled for
        their request by the previously submitted step, gathered on the device: the two
        steps run in stream order, so nothing waits on the host."""
        start = time.perf_counter()
        self.profiler.on_step()
        timing = IterationTiming()
        events = None
        if self._cuda:
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        if self._virtual:
            self.kv_pool.begin_step(batch)  # map this batch's pages; later ones go to the mapping thread
        graphed = self.graphs is not None and self.graphs.can_run(batch)
        if graphed:
            inputs, bucket = self.graphs.stage(batch)
        else:
            inputs = self.inputs.prepare(batch, self.kv_pool.block_size)
        self._fill_pending_tokens(batch, inputs)
        if events is not None:
            events[0].record()  # after the input copy: device time = forward + sampling
        if graphed:
            logits = self.graphs.replay(bucket, batch.num_seqs)
        elif self.hybrid_graphs is not None and self.hybrid_graphs.can_run(batch):
            logits = self._piecewise_logits(inputs)
        else:
            logits = self._forward_logits(inputs)
        if self._virtual:
            self.kv_pool.end_step()
        tokens = host = done = None
        seqs = batch.seqs
        if logits is not None:
            sampling = [seqs[i] for i in inputs.sample_rows]
            tokens = self.sampler(logits, [s.sampling_params for s in sampling], [s.num_output_tokens for s in sampling])
            host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=self._cuda)
            host.copy_(tokens, non_blocking=self._cuda)
            if self._cuda:
                done = torch.cuda.Event()
                done.record()
        self._prev_sampled = (tokens, seqs, inputs.sample_rows) if tokens is not None else None
        if events is not None:
            events[1].record()
            self._pending.append((timing, *events))
        timing.enqueue_s = time.perf_counter() - start
        if self._virtual:
            self.kv_pool.after_enqueue()  # map pages for later steps while the device computes
        return StepHandle(batch.num_seqs, inputs.sample_rows, host, done, timing, start)

    def collect(self, handle: "StepHandle") -> ExecutorOutput:
        """Wait for a submitted step's tokens (its copy to the host, nothing later) and return them."""
        sampled: list[int | None] = [None] * handle.num_seqs
        if handle.tokens is not None:
            if handle.done is not None:
                handle.done.synchronize()  # the step's one sync
            for i, t in zip(handle.sample_rows, handle.tokens.tolist()):
                sampled[i] = t
        if self._pending:
            self._resolve_timings()  # those that are done, no waiting
        return ExecutorOutput(sampled_token_ids=sampled, duration=time.perf_counter() - handle.start,
                              timing=handle.timing)

    def is_done(self, handle: "StepHandle") -> bool:
        """Whether a submitted step's tokens have reached the host (no waiting)."""
        return handle.done is None or handle.done.query()

    def _fill_pending_tokens(self, batch: ScheduledBatch, inputs: ModelInputs) -> None:
        """Asynchronous scheduling: a decode scheduled while its token was still being sampled
        feeds ``PENDING_TOKEN``; its input row takes the token sampled for the request by the
        previous step, on the device (every rank of a tensor-parallel group samples the same)."""
        seqs = batch.seqs
        dst = [i for i in range(batch.num_decodes) if seqs[i].token_ids[0] == PENDING_TOKEN]
        if not dst:
            return
        prev_tokens, prev_seqs, prev_rows = self._prev_sampled or (None, [], [])
        rows = {prev_seqs[i].request_id: j for j, i in enumerate(prev_rows)}
        missing = [seqs[i].request_id for i in dst if seqs[i].request_id not in rows]
        if missing:
            raise RuntimeError(f"decodes of {missing[:3]} wait for tokens the previous step did not sample")
        # Decodes come first, one row each: row i of the inputs is decode i. One staged copy
        # carries both index lists: destinations, then sources.
        index = self.sampler.to_device(dst + [rows[seqs[i].request_id] for i in dst], np.int64)
        n = len(dst)
        inputs.input_ids.index_copy_(0, index[:n], prev_tokens.index_select(0, index[n:]))

    def _resolve_timings(self, wait: bool = False) -> None:
        """Fill in the device time of every finished step (all of them after a sync)."""
        keep = []
        for timing, begin, end in self._pending:
            if wait:
                end.synchronize()
            if end.query():
                timing.gpu_s = begin.elapsed_time(end) / 1e3
            else:
                keep.append((timing, begin, end))
        self._pending = keep

    def start_profile(self) -> None:
        """Profile the kernels of the steps submitted from now on (``executor.profiler``)."""
        self.profiler.start()

    def stop_profile(self) -> list[dict]:
        """End the profile: one summary, as the distributed executor returns one per rank."""
        return [self.profiler.stop()]

    def close(self) -> None:
        """Discard a profile never stopped (the model and pool go with the object)."""
        self.profiler.discard()

    def flush_timings(self) -> None:
        """Wait for the device and fill in every outstanding iteration's device time."""
        self._resolve_timings(wait=True)

    # --- start-up ------------------------------------------------------------------------
    @torch.inference_mode()
    def profile_activation_peak(self) -> int:
        """Bytes of activations at the largest batch: a forward pass over ``max_num_tokens``
        prompt tokens (sequences of at most ``max_model_len``) into a throwaway KV pool."""
        from podserve.config import CacheConfig

        block_size = 16
        seqs, left, rid = [], self.max_num_tokens, 0
        while left > 0:
            n = min(left, self.max_model_len)
            first = sum(-(-len(s.token_ids) // block_size) for s in seqs)
            table = list(range(first, first + -(-n // block_size)))
            seqs.append(ScheduledSeq(f"profile-{rid}", [0] * n, 0, True, True, table, SamplingParams(), 0))
            left -= n
            rid += 1
        num_blocks = sum(len(s.block_table) for s in seqs)
        pool = PagedKVPool.create(self.model_config, CacheConfig(block_size=block_size, num_blocks=num_blocks),
                                  self.dtype, self.device)
        buffers = InputBuffers(self.device, self.max_num_tokens, len(seqs), -(-self.max_model_len // block_size))
        batch = ScheduledBatch(iteration=-1, seqs=seqs, num_decodes=0)
        torch.cuda.synchronize(self.device)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        inputs = buffers.prepare(batch, block_size)
        self.backend.prepare(inputs.meta)
        hidden = self.model(inputs.input_ids, inputs.positions, pool.caches, inputs.meta, self.backend)
        self.model.compute_logits(hidden.index_select(0, inputs.sample_idx))
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - base
        del pool, buffers, inputs, hidden
        gc.collect()
        torch.cuda.empty_cache()
        return int(peak)

    @torch.inference_mode()
    def warmup_kernels(self) -> None:
        """Compile every Triton kernel variant serving can need before the first request:
        decodes split and unsplit, a prefill chunk, and (pod) the fused kernel with and
        without decode splits. Paged KV only; the blocks written are all free at start-up."""
        if self._virtual or self.config.attention not in ("triton", "pod", "sdpa"):
            return
        bs = self.kv_pool.block_size
        long_ctx = min(self.max_model_len, self.num_blocks * bs) - 1
        if long_ctx < 2:
            return
        table = list(range(-(-long_ctx // bs)))
        many = min(self.config.scheduler.max_num_seqs, 64)
        p = SamplingParams(temperature=0.0)

        def decode(i: int, ctx: int) -> ScheduledSeq:
            return ScheduledSeq(f"warmup-d{i}", [0], ctx - 1, False, True, table[: -(-ctx // bs)], p, 1)

        chunk = ScheduledSeq("warmup-p", [0] * 16, 0, True, True, [0], p, 0)
        batches = [[decode(0, long_ctx)], [decode(i, 2) for i in range(many)],
                   [decode(0, long_ctx), chunk], [*(decode(i, 2) for i in range(many)), chunk]]
        fuse = getattr(self.backend, "always_fuse", None)
        if fuse is not None:
            self.backend.always_fuse = True
        buffers = InputBuffers(self.device, self.max_num_tokens, self.config.scheduler.max_num_seqs,
                               self.max_blocks_per_seq)
        try:
            for seqs in batches:
                nd = sum(not s.is_prefill for s in seqs)
                inputs = buffers.prepare(ScheduledBatch(iteration=-1, seqs=seqs, num_decodes=nd), bs)
                self._forward_logits(inputs)
            torch.cuda.synchronize(self.device)
        finally:
            if fuse is not None:
                self.backend.always_fuse = fuse
