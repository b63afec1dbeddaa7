"""Parallel wrappers around the stock Llama modules, and ``parallelize`` that installs them.

A rank builds the ordinary ``LlamaForCausalLM`` at its own shapes (``Partition.shard_config``:
its heads, MLP slice, vocabulary slice and stage layers), loads its weight slices, then
``parallelize`` swaps in:

- ``RowParallel`` around ``o_proj`` and ``down_proj``: the partial sums of every rank are
  all-reduced -- one all-reduce after attention and one after the MLP, per layer;
- ``VocabParallelEmbedding``: each rank looks up the ids in its vocabulary slice, zeros
  the rest, and an all-reduce assembles the rows;
- ``VocabParallelHead``: each rank's logits slice is all-gathered and the padding cut off;
- ``PipelineRecv`` in place of the embedding on stages after the first (activations arrive
  from the previous stage) and ``PipelineSend`` in place of the final norm on stages
  before the last (activations leave for the next stage).

The column-parallel projections (qkv, gate_up) need no wrapper: a rank's slice of them is
an ordinary smaller Linear. The ModelRunner drives the result unchanged.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import nn


class RowParallel(nn.Module):
    """A Linear over this rank's slice of the inputs; the outputs are summed over ranks."""

    def __init__(self, linear: nn.Linear, group):
        super().__init__()
        self.linear = linear
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [num_tokens, in / tp] -> [num_tokens, out]
        out = self.linear(x)
        dist.all_reduce(out, group=self.group)
        return out


class VocabParallelEmbedding(nn.Module):
    """Embedding rows ``[start, start + rows)`` on this rank; an all-reduce fills in the rest."""

    def __init__(self, embedding: nn.Embedding, start: int, group):
        super().__init__()
        self.embedding = embedding
        self.start = start
        self.group = group

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [num_tokens] -> [num_tokens, hidden]
        local = input_ids - self.start
        outside = (local < 0) | (local >= self.embedding.num_embeddings)
        out = self.embedding(local.masked_fill(outside, 0))
        out.masked_fill_(outside[:, None], 0.0)
        dist.all_reduce(out, group=self.group)
        return out


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

    The send is asynchronous; the previous one is waited for first, so at most one
    micro-batch's activations are on the wire per stage.
    """

    def __init__(self, dst: int):
        super().__init__()
        self.dst = dst
        self._pending = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [num_tokens, hidden]
        self.wait()
        x = x.contiguous()
        self._pending = (dist.isend(x, dst=self.dst), x)
        return x

    def wait(self) -> None:
        """Block until the last send has completed."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None


def parallelize(model: nn.Module, ctx, vocab_size: int) -> None:
    """Install the wrappers of this rank (``ctx``: a ``RankContext``) into ``model`` in place."""
    tp, group = ctx.tp, ctx.tp_group
    if tp > 1:
        for layer in model.layers:
            layer.self_attn.o_proj = RowParallel(layer.self_attn.o_proj, group)
            layer.mlp.down_proj = RowParallel(layer.mlp.down_proj, group)
    hidden = model.config.hidden_size
    dtype = model.norm.weight.dtype
    if ctx.is_first_stage:
        if tp > 1:
            start = ctx.partition.vocab(ctx.tp_rank)[0]
            model.embed_tokens = VocabParallelEmbedding(model.embed_tokens, start, group)
    else:
        model.embed_tokens = PipelineRecv(hidden, dtype, model.norm.weight.device, ctx.prev_rank)
    if ctx.is_last_stage:
        if tp > 1:
            model.lm_head = VocabParallelHead(model.lm_head, vocab_size, tp, group)
    else:
        model.norm = PipelineSend(ctx.next_rank)
        model.lm_head = nn.Identity()  # never used: earlier stages sample nothing
