"""ModelRunner: builds the model and the KV pool, and executes ScheduledBatches."""
from __future__ import annotations

import time

import torch

from podserve.attention import make_backend
from podserve.attention.base import AttentionMetadata
from podserve.config import EngineConfig
from podserve.core.batch import ExecutorOutput, ScheduledBatch
from podserve.executor.sampler import Sampler
from podserve.memory.paged_pool import PagedKVPool
from podserve.memory.virtual_pool import VirtualKVPool
from podserve.model.config import LlamaConfig
from podserve.model.llama import LlamaForCausalLM

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto" means float32 on CPU (fast and exact there) and bfloat16 on CUDA."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not supported; choose auto, {', '.join(_DTYPES)}") from None


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
        self.model = model.eval()
        self.backend = make_backend(config.attention)
        if config.cache.kv_layout == "virtual":
            # One contiguous slot per running request: slots = max_num_seqs.
            self.kv_pool = VirtualKVPool.create(model_config, config.cache, self.dtype, self.device, config.scheduler.max_num_seqs, max_model_len)
        else:
            self.kv_pool = PagedKVPool.create(model_config, config.cache, self.dtype, self.device)
        self._virtual = config.cache.kv_layout == "virtual"
        self.sampler = Sampler(self.device, config.seed)

    @property
    def num_blocks(self) -> int:
        return self.kv_pool.num_blocks

    def prepare(self, batch: ScheduledBatch):
        """Flatten the batch into varlen tensors (decodes first, then prefill chunks)."""
        block_size = self.kv_pool.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        cu = [0]
        query_lens, seq_lens, sample_idx = [], [], []
        max_blocks = max((len(s.block_table) for s in batch.seqs), default=1)
        tables = []
        for s in batch.seqs:
            n, start = s.num_tokens, s.start_pos
            input_ids += s.token_ids
            pos = range(start, start + n)
            positions += pos
            table = s.block_table
            slots += [table[p // block_size] * block_size + p % block_size for p in pos]
            cu.append(cu[-1] + n)
            query_lens.append(n)
            seq_lens.append(start + n)
            tables.append(table + [0] * (max_blocks - len(table)))
            if s.do_sample:
                sample_idx.append(cu[-1] - 1)
        dev = self.device
        meta = AttentionMetadata(
            num_decodes=batch.num_decodes,
            num_prefills=batch.num_prefills,
            num_prefill_tokens=cu[-1] - batch.num_decodes,
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            query_lens_cpu=query_lens,
            seq_lens_cpu=seq_lens,
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
        )
        ids = torch.tensor(input_ids, dtype=torch.int64, device=dev)
        pos_t = torch.tensor(positions, dtype=torch.int64, device=dev)
        return ids, pos_t, meta, sample_idx

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> ExecutorOutput:
        """Run one iteration and sample a token for every sequence that asks for one."""
        start = time.perf_counter()
        ids, positions, meta, sample_idx = self.prepare(batch)
        self.backend.prepare(meta)
        if self._virtual:
            self.kv_pool.begin_step()  # map this batch's pages; pages ahead go to the mapping thread
        hidden = self.model(ids, positions, self.kv_pool.caches, meta, self.backend)
        if self._virtual:
            self.kv_pool.end_step()
        sampled: list[int | None] = [None] * batch.num_seqs
        if sample_idx:
            logits = self.model.compute_logits(hidden[sample_idx])  # [num_samples, vocab]
            rows = [i for i, s in enumerate(batch.seqs) if s.do_sample]
            seqs = [batch.seqs[i] for i in rows]
            tokens = self.sampler(logits, [s.sampling_params for s in seqs], [s.num_output_tokens for s in seqs])
            for i, t in zip(rows, tokens):
                sampled[i] = t
        return ExecutorOutput(sampled_token_ids=sampled, duration=time.perf_counter() - start)
