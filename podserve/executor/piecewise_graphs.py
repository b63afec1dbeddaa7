"""Piecewise CUDA graphs for iterations with prefill tokens (hybrid and prefill-only).

An eager step of an 8B model launches ~45 kernels per layer from Python (norms in float32,
RoPE, projections, SwiGLU, residuals): ~20 ms of host time, more than the device needs for
a 512-token Sarathi batch. Decode-only steps replay whole-model graphs (``cuda_graphs.py``),
but a hybrid batch's attention depends on its shape (how many chunks, how long, how much
context), which a graph cannot vary. Everything else in a layer is row-wise and depends only
on the number of tokens, so — as vLLM's piecewise graphs do — it is captured per token
bucket ``T`` and attention runs eagerly between the pieces:

- piece 0: embedding, then layer 0 up to its q, k, v;
- piece i (1 .. L-1): layer i-1 after attention (o_proj, residual, MLP, residual), then
  layer i up to its q, k, v;
- piece L: the last layer after attention, then the final norm.

The pieces chain through static buffers (token ids, positions, residual stream, q, k, v,
attention output, final hidden states) shared by every bucket, so one bucket's replay
reads what the previous piece wrote wherever the batch came from. A batch of ``n`` real
tokens runs in the smallest bucket ``T >= n``: rows ``n..T`` hold stale but finite values
from earlier steps and are never read by a real row (every captured op is row-wise;
attention sees only the first ``n`` rows). Sampling and the LM head run eagerly on the
sampled rows afterwards.

On CPU (tests) and before capture the pieces run eagerly through the same buffers, which
is how the CPU tests check this path against the ordinary forward.
"""
from __future__ import annotations

import time

import torch

from podserve.core.batch import ScheduledBatch
from podserve.executor.cuda_graphs import smallest_bucket, warm_up_before_capture
from podserve.executor.inputs import ModelInputs


def token_buckets(max_tokens: int, step: int = 64) -> list[int]:
    """Token counts to capture: 16, 32, 64, then multiples of ``step`` from 128, and
    ``max_tokens`` itself (Sarathi fills its token budget, so that bucket is the hot one)."""
    sizes = [b for b in (16, 32, 64) if b < max_tokens]
    sizes += list(range(128, max_tokens, step))
    return sorted(set(sizes + [max_tokens]))


def static_bytes(hidden_size: int, q_size: int, kv_size: int, max_tokens: int, itemsize: int) -> int:
    """Device bytes of the static buffers for ``max_tokens`` tokens (for the KV budget)."""
    per_token = (2 * hidden_size + 2 * q_size + 2 * kv_size) * itemsize + 16  # + ids, positions
    return max_tokens * per_token


class HybridGraphs:
    """Captured layer pieces by token bucket, and the step that chains them with attention."""

    def __init__(self, runner, buckets: list[int], pool=None):
        """``pool``: a graph memory pool to share (the decode graphs'); pieces never replay
        concurrently with them and keep nothing alive in it between replays."""
        self.runner = runner
        self.buckets = sorted(buckets)
        self.max_tokens = self.buckets[-1]
        model = runner.model
        attn = model.layers[0].self_attn
        T, dev, dt = self.max_tokens, runner.device, runner.dtype
        hidden = model.config.hidden_size
        self.ids = torch.zeros(T, dtype=torch.int64, device=dev)  # [T]
        self.pos = torch.zeros(T, dtype=torch.int64, device=dev)  # [T]
        self.x = torch.zeros(T, hidden, dtype=dt, device=dev)  # [T, hidden] the residual stream
        self.q = torch.zeros(T, attn.num_heads, attn.head_dim, dtype=dt, device=dev)  # [T, heads, head_dim]
        self.k = torch.zeros(T, attn.num_kv_heads, attn.head_dim, dtype=dt, device=dev)  # [T, kv_heads, head_dim]
        self.v = torch.zeros_like(self.k)
        self.attn = torch.zeros(T, attn.q_size, dtype=dt, device=dev)  # [T, heads * head_dim]
        self.hidden = torch.zeros(T, hidden, dtype=dt, device=dev)  # [T, hidden] after the final norm
        self._graphs: dict[int, list[torch.cuda.CUDAGraph]] = {}
        self._pool = pool
        self.capture_s = 0.0
        self.num_graphs = 0

    def bucket(self, n: int) -> int | None:
        return smallest_bucket(self.buckets, n)

    def can_run(self, batch: ScheduledBatch) -> bool:
        """Any batch with prefill tokens whose token count fits the largest bucket."""
        return batch.num_prefills > 0 and batch.num_tokens <= self.max_tokens

    @property
    def captured(self) -> bool:
        return bool(self._graphs)

    # --- the pieces -----------------------------------------------------------------------
    def _piece(self, i: int, T: int) -> None:
        """Piece ``i`` over the first ``T`` rows of the static buffers (see the module doc)."""
        model = self.runner.model
        layers = model.layers
        residual = self.x[:T]  # updated in place by each residual add (inside the norms)
        if i == 0:
            residual.copy_(model.embed_tokens(self.ids[:T]))
            h = layers[0].input_layernorm(residual)
        else:
            prev = layers[i - 1]
            h, _ = prev.post_attention_layernorm(prev.self_attn.o_proj(self.attn[:T]), residual)
            mlp_out = prev.mlp(h)
            if i == len(layers):
                self.hidden[:T].copy_(model.norm(mlp_out, residual)[0])
                return
            h, _ = layers[i].input_layernorm(mlp_out, residual)
        q, k, v = layers[i].self_attn.project_qkv(self.pos[:T], h)
        self.q[:T].copy_(q)
        self.k[:T].copy_(k)
        self.v[:T].copy_(v)

    def _run_pieces(self, T: int) -> None:
        """Every piece once, eagerly, attention left out (the warm-up before a capture)."""
        for i in range(len(self.runner.model.layers) + 1):
            self._piece(i, T)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket's pieces, largest bucket first (its scratch memory is the
        pool's high-water mark; smaller pieces reuse it)."""
        t0 = time.perf_counter()
        device = self.runner.device
        num_pieces = len(self.runner.model.layers) + 1
        self._graphs.clear()
        for T in sorted(self.buckets, reverse=True):
            warm_up_before_capture(device, lambda: self._run_pieces(T))
            graphs = []
            for i in range(num_pieces):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                    self._piece(i, T)
                if self._pool is None:
                    self._pool = graph.pool()
                graphs.append(graph)
            self._graphs[T] = graphs
        torch.cuda.synchronize(device)
        self.num_graphs = sum(len(g) for g in self._graphs.values())
        self.capture_s = time.perf_counter() - t0

    # --- one step -------------------------------------------------------------------------
    def run(self, inputs: ModelInputs) -> torch.Tensor:  # [num_tokens, hidden]
        """The model's forward over ``inputs`` (unpadded): captured pieces, eager attention."""
        runner = self.runner
        backend, caches = runner.backend, runner.kv_pool.caches
        meta = inputs.meta
        n = inputs.input_ids.shape[0]
        T = self.bucket(n)
        if T is None:
            raise ValueError(f"a batch of {n} tokens exceeds the largest piecewise-graph bucket {self.max_tokens}")
        self.ids[:n].copy_(inputs.input_ids, non_blocking=True)
        self.pos[:n].copy_(inputs.positions, non_blocking=True)
        backend.prepare(meta)
        graphs = self._graphs.get(T)
        layers = runner.model.layers
        for i, layer in enumerate(layers):
            if graphs is not None:
                graphs[i].replay()
            else:
                self._piece(i, T)
            attn = layer.self_attn
            out = backend.forward(self.q[:n], self.k[:n], self.v[:n], caches[i][0], caches[i][1], meta, attn.scale)
            self.attn[:n].copy_(out.reshape(n, attn.q_size))
        if graphs is not None:
            graphs[-1].replay()
        else:
            self._piece(len(layers), T)
        return self.hidden[:n]
