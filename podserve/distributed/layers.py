"""Parallel wrappers around the stock Llama modules, and ``parallelize`` that installs them.

A rank builds the ordinary ``LlamaForCausalLM`` at its own shapes (``Partition.shard_config``:
its heads, MLP slice, vocabulary slice and stage layers), loads its weight slices, then
``parallelize`` swaps in:

- ``RowParallel`` around ``o_proj`` and ``down_proj``: each rank computes a partial sum
  (written straight into its symmetric-memory buffer where the fused path takes it), and
  ``ReducingNorm`` in place of the norm that consumes it (the next sublayer's, or the final
  norm) all-reduces the partials inside the residual add and RMSNorm -- one reduction after
  attention and one after the MLP, per layer (``allreduce.TPAllReduce.add_rms_norm``: one
  fused kernel over symmetric memory for small CUDA messages, else all-reduce, add, norm);
- ``VocabParallelEmbedding``: each rank looks up the ids in its vocabulary slice, zeros
  the rest, and an all-reduce assembles the rows;
- ``VocabParallelHead``: each rank's logits slice is all-gathered and the padding cut off;
- ``PipelineRecv`` in place of the embedding on stages after the first (activations arrive
  from the previous stage) and ``PipelineSend`` in place of the final norm on stages
  before the last (the last residual add is done, then activations leave for the next stage).

The column-parallel projections (qkv, gate_up) need no wrapper: a rank's slice of them is
an ordinary smaller Linear. The ModelRunner drives the result unchanged.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import nn

from podserve.distributed.allreduce import TPAllReduce
from podserve.model.layers import add_rms_norm


class RowParallel(nn.Module):
    """A Linear over this rank's slice of the inputs: returns this rank's partial sum of the
    outputs, which the ``ReducingNorm`` after it all-reduces (as part of the residual add)."""

    def __init__(self, linear: nn.Linear, all_reduce: TPAllReduce, slot: int):
        super().__init__()
        self.linear = linear
        self.all_reduce = all_reduce
        self.slot = slot
        """Symmetric-buffer slot of the fused path (allreduce.py: 0 attention, 1 MLP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [num_tokens, in / tp] -> [num_tokens, out] partial
        if self.linear.bias is None and x.dim() == 2:
            staged = self.all_reduce.staging((x.shape[0], self.linear.out_features), self.slot)
            if staged is not None and x.dtype == staged.dtype:  # peers read it from there: no copy
                return torch.mm(x, self.linear.weight.t(), out=staged)
        return self.linear(x)


class ReducingNorm(nn.Module):
    """Stands in for the norm after a row-parallel layer: ``(norm(residual + all_reduce(x)),
    residual)`` with the residual updated in place -- one fused kernel where it can."""

    def __init__(self, norm: nn.Module, all_reduce: TPAllReduce, slot: int):
        super().__init__()
        self.norm = norm
        self.all_reduce = all_reduce
        self.slot = slot
        """Slot of the row-parallel layer whose output this norm consumes."""

    @property
    def weight(self) -> nn.Parameter:
        return self.norm.weight

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None:  # x is complete (embeddings, or activations from the previous stage)
            return self.norm(x)
        return self.all_reduce.add_rms_norm(x, residual, self.norm.weight, self.norm.eps, self.slot), residual


class VocabParallelEmbedding(nn.Module):
    """Embedding rows ``[start, start + rows)`` on this rank; an all-reduce fills in the rest."""

    def __init__(self, embedding: nn.Embedding, start: int, all_reduce: TPAllReduce):
        super().__init__()
        self.embedding = embedding
        self.start = start
        self.all_reduce = all_reduce

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [num_tokens] -> [num_tokens, hidden]
        local = input_ids - self.start
        outside = (local < 0) | (local >= self.embedding.num_embeddings)
        out = self.embedding(local.masked_fill(outside, 0))
        out.masked_fill_(outside[:, None], 0.0)
        return self.all_reduce(out)


class VocabParallelHead(nn.Module):
    """LM head over this rank's vocabulary slice; the slices are gathered, padding dropped."""

    def __init__(self, lm_head: nn.Linear, vocab_size: int, tp: int, group):
        super().__init__()
        self.lm_head = lm_head
        self.vocab_size = vocab_size
        self.tp = tp
        self.group = group

    @property
    def weight(self) -> nn.Parameter:
        return self.lm_head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, hidden] -> [n, vocab]
        local = self.lm_head(hidden).contiguous()  # [n, vocab / tp]
        parts = [torch.empty_like(local) for _ in range(self.tp)]
        dist.all_gather(parts, local, group=self.group)
        return torch.cat(parts, dim=-1)[:, :self.vocab_size]


class PipelineRecv(nn.Module):
    """Stands in for the embedding on a later stage: returns the previous stage's activations."""

    def __init__(self, hidden_size: int, dtype: torch.dtype, device: torch.device, src: int):
        super().__init__()
        self.hidden_size, self.dtype, self.device, self.src = hidden_size, dtype, device, src
        self.received_at = 0.0
        """perf_counter when the last activations had arrived (the stage's busy time starts)."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [num_tokens] -> [num_tokens, hidden]
        x = torch.empty(input_ids.shape[0], self.hidden_size, dtype=self.dtype, device=self.device)
        dist.recv(x, src=self.src)
        if x.is_cuda:
            torch.cuda.current_stream().synchronize()  # honest busy time: count from the arrival
        self.received_at = time.perf_counter()
        return x


class PipelineSend(nn.Module):
    """Stands in for the final norm on an earlier stage: ships the activations onward.

    Sends are asynchronous, so the stage moves on to its next micro-batch while the
    activations travel; a send's buffer is kept until it has completed, and at most
    ``max_pending`` sends are outstanding (the oldest is waited for beyond that).
    """

    def __init__(self, dst: int, max_pending: int = 2, all_reduce: TPAllReduce | None = None):
        super().__init__()
        self.dst = dst
        self.max_pending = max_pending
        self.all_reduce = all_reduce
        """Tensor parallelism: the last MLP output is a partial sum to reduce before the add."""
        self._pending: list = []  # (work, tensor) of sends not known to be complete

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """Sends ``residual + x`` (the last layer's MLP output added to the residual stream;
        ``x`` alone without a residual); returns ``(sent, sent)`` given a residual, like a
        norm called with one, else ``sent``."""
        if residual is None:
            return self._send(x)
        if self.all_reduce is not None:
            x = self.all_reduce.add_rms_norm(x, residual, None, 0.0, slot=1)
        else:
            x = add_rms_norm(x, residual, None, 0.0)
        x = self._send(x)
        return x, x

    def _send(self, x: torch.Tensor) -> torch.Tensor:  # [num_tokens, hidden]
        self._pending = [(w, t) for w, t in self._pending if not w.is_completed()]
        while len(self._pending) >= self.max_pending:
            self._pending.pop(0)[0].wait()
        x = x.contiguous()
        self._pending.append((dist.isend(x, dst=self.dst), x))
        return x

    def wait(self) -> None:
        """Block until every send has completed."""
        for work, _ in self._pending:
            work.wait()
        self._pending = []


def parallelize(model: nn.Module, ctx, vocab_size: int, one_shot_all_reduce: bool = True,
                max_pending_sends: int = 2) -> TPAllReduce | None:
    """Install the wrappers of this rank (``ctx``: a ``RankContext``) into ``model`` in place;
    returns the tensor-parallel all-reduce they share (None without tensor parallelism).
    ``one_shot_all_reduce``: small CUDA messages through symmetric memory (``allreduce``);
    ``max_pending_sends``: activations a stage may have in flight to the next (one per
    micro-batch in the pipeline, so a stage never waits inside a send)."""
    tp, group = ctx.tp, ctx.tp_group
    hidden = model.config.hidden_size
    dtype = model.norm.weight.dtype
    all_reduce = None
    if tp > 1:
        all_reduce = TPAllReduce(group, model.norm.weight.device, dtype, enable_one_shot=one_shot_all_reduce)
        for layer in model.layers:
            layer.self_attn.o_proj = RowParallel(layer.self_attn.o_proj, all_reduce, slot=0)
            layer.mlp.down_proj = RowParallel(layer.mlp.down_proj, all_reduce, slot=1)
            layer.post_attention_layernorm = ReducingNorm(layer.post_attention_layernorm, all_reduce, slot=0)
            # The first layer's input norm sees complete embeddings (or received activations).
            layer.input_layernorm = ReducingNorm(layer.input_layernorm, all_reduce, slot=1)
    if ctx.is_first_stage:
        if tp > 1:
            start = ctx.partition.vocab(ctx.tp_rank)[0]
            model.embed_tokens = VocabParallelEmbedding(model.embed_tokens, start, all_reduce)
    else:
        model.embed_tokens = PipelineRecv(hidden, dtype, model.norm.weight.device, ctx.prev_rank)
    if ctx.is_last_stage:
        if tp > 1:
            model.norm = ReducingNorm(model.norm, all_reduce, slot=1)
            model.lm_head = VocabParallelHead(model.lm_head, vocab_size, tp, group)
    else:
        model.norm = PipelineSend(ctx.next_rank, max_pending=max_pending_sends, all_reduce=all_reduce)
        model.lm_head = nn.Identity()  # never used: earlier stages sample nothing
    return all_reduce
