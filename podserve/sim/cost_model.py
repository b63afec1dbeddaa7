"""CostModel: the duration of one iteration from its ScheduledBatch, in microseconds of Python.

Built from a FittedProfile for a model shape and a parallel layout. Everything that
depends only on the token count (GEMMs, per-token elementwise work, tensor-parallel
all-reduces) is tabulated once with numpy; attention terms are folded into a handful of
scalars. The hot path is then table look-ups and a pass over the decodes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from podserve.core.batch import ScheduledBatch
from podserve.core.partition import Partition
from podserve.sim import features as F
from podserve.sim.predictors import FittedProfile, LinearPredictor
from podserve.sim.roofline import LINEAR_OPS, LayerShapes

# GEMMs a profile may lack (Vidur's mlp.csv has no LM head): borrow a predictor of the
# same kind (column-parallel, wide output) and let the roofline features rescale it.
_FALLBACK = {"lm_head": "gate_up"}
_BUCKETS = 24  # power-of-two buckets: up to 2**23 tokens


@dataclass(frozen=True)
class IterationCost:
    """Predicted time of one iteration, split the way the pipeline needs it (seconds)."""

    host: float
    """CPU work before the GPU starts: scheduling, input preparation (serial with compute)."""
    stage: float
    """One pipeline stage's compute (all of it when pp == 1), collectives included."""
    last_stage_extra: float
    """LM head and sampling, on the last stage only."""

    @property
    def total_pp1(self) -> float:
        return self.host + self.stage + self.last_stage_extra


class CostModel:
    """Predicts iteration times for ``model_config`` sharded ``tp`` x ``pp`` ways."""

    def __init__(self, fitted: FittedProfile, model_config=None, tp: int = 1, pp: int = 1, max_tokens: int = 8192):
        self.fitted = fitted
        self.config = model_config or _config_of(fitted.meta)
        self.tp, self.pp = tp, pp
        Partition.of(self.config, 1, pp)  # pp must divide the layers (checked before the profile's collectives)
        if tp > 1 and tp not in fitted.all_reduce:
            have = ", ".join(map(str, sorted(fitted.all_reduce))) or "none"
            raise ValueError(f"tp={tp} needs an all_reduce profile for {tp} workers (profile has: {have}); "
                             "import a network profile (e.g. Vidur's) into the profile directory")
        if pp > 1 and fitted.send_recv is None:
            raise ValueError(f"pp={pp} needs a send_recv profile; import a network profile into the profile directory")
        self.shapes = LayerShapes.of(self.config, tp)
        self.dtype_bytes = int(fitted.meta["dtype_bytes"])
        self.layers_per_stage = Partition.of(self.config, tp, pp).num_layers
        self._build_scalars()
        self._token_table = np.zeros(0)
        self._lm_table = np.zeros(0)
        self._extend(max_tokens)

    # --- precomputation ------------------------------------------------------------------
    def _linear(self, op: str) -> LinearPredictor:
        lin = self.fitted.linear
        return lin[op] if op in lin else lin[_FALLBACK[op]]

    def _gemm(self, op: str, n: np.ndarray, in_f: int, out_f: int) -> np.ndarray:
        x = F.linear_features(n, in_f, out_f, self.dtype_bytes, self.fitted.peak_flops, self.fitted.peak_bw)
        return self._linear(op).predict(x, F.linear_shape(n, in_f, out_f))

    def _extend(self, max_tokens: int) -> None:
        """Tabulate per-token-count costs for 0..max_tokens (grown on demand)."""
        n = np.arange(max_tokens + 1, dtype=float)
        per_layer = sum(self._gemm(op, n, *self.shapes.linear[op]) for op in LINEAR_OPS)
        misc = self.fitted.elementwise.get("layer_misc")
        if misc is not None:
            per_layer = per_layer + misc.predict(F.elementwise_features(n), n[:, None])
        if self.tp > 1:
            # Two all-reduces per layer (after o and after down) of [num_tokens, hidden] activations.
            size = n * self.shapes.hidden_size * self.dtype_bytes
            per_layer = per_layer + 2 * self.fitted.all_reduce[self.tp].predict(F.collective_features(size), size[:, None])
        stage = self.layers_per_stage * per_layer
        if self.pp > 1:
            size = n * self.shapes.hidden_size * self.dtype_bytes
            stage = stage + self.fitted.send_recv.predict(F.collective_features(size), size[:, None])
        embed = self.fitted.elementwise.get("embed")
        if embed is not None:
            stage = stage + embed.predict(F.elementwise_features(n), n[:, None])  # on stage 0; folded in
        stage[0] = 0.0
        self._token_table = stage
        self._token_list = stage.tolist()  # Python floats: list indexing beats numpy scalars
        lm = self._gemm("lm_head", n, *self.shapes.lm_head)
        lm[0] = 0.0
        self._lm_list = lm.tolist()
        self._max_tokens = max_tokens

    def _build_scalars(self) -> None:
        """Fold the attention predictors' features into per-term coefficients."""
        s, db = self.shapes, self.dtype_bytes
        pre = self.fitted.prefill
        c_causal, c_dense, c_bytes, c_q = pre.coef
        k = 4.0 * s.num_heads * s.head_dim
        # t = c0 + a_seen * seen + a_dense * q * kv + a_q * q + a_kv * kv   (per layer, per chunk)
        self._pre = (pre.intercept, c_causal * k, c_dense * k,
                     c_bytes * db * s.head_dim * 2.0 * s.num_heads + c_q, c_bytes * db * s.head_dim * 2.0 * s.num_kv_heads)
        dec = self.fitted.decode
        c_b, c_exact, c_padded = dec.coef
        kv_bytes = 2.0 * db * s.num_kv_heads * s.head_dim
        # t = c0 + b_seq * b + b_sum * sum_kv + b_pad * b * max_kv   (per layer, whole decode batch)
        self._dec = (dec.intercept, c_b, c_exact * kv_bytes, c_padded * kv_bytes)
        # Corrections of the attention predictors, tabulated per power-of-two bucket of
        # (query tokens, context) and (decodes, mean context): bit_length() indexes them.
        mid = np.array([1.0] + [2.0 ** (b - 1) * 1.5 for b in range(2, _BUCKETS)])
        qq, kk = np.meshgrid(mid, mid, indexing="ij")
        self._pre_ratio = np.reshape(pre.ratio(np.stack([qq.ravel(), np.maximum(kk, qq).ravel()], -1)), qq.shape).tolist() \
            if pre.correction is not None else None
        self._dec_ratio = np.reshape(dec.ratio(np.stack([qq.ravel(), kk.ravel()], -1)), qq.shape).tolist() \
            if dec.correction is not None else None
        ovh = self.fitted.overhead
        self._ovh = (ovh.intercept, *ovh.coef) if ovh is not None else (0.0, 0.0, 0.0, 0.0)
        fwd = getattr(self.fitted, "forward", None)
        self._fwd = (fwd.intercept, float(fwd.coef[0])) if fwd is not None else None
        fwd_g = getattr(self.fitted, "forward_graphed", None)
        self._fwd_graphed = (fwd_g.intercept, float(fwd_g.coef[0])) if fwd_g is not None else None
        self._graph_max = int(self.fitted.meta.get("cuda_graph_max_batch") or 0)
        """Decode-only batches up to this size replay CUDA graphs in the profiled engine."""
        direct = getattr(self.fitted, "graphed_decode", None)
        self._graphed_direct = ((direct.intercept, float(direct.coef[0]), float(direct.coef[1]))
                                if direct is not None and self.tp == 1 and self.pp == 1 else None)
        """(a, per decode, per KV token) of graphed decode steps, for the profiled deployment only."""

    # --- the hot path ----------------------------------------------------------------------
    def decode_attention(self, num_decodes: int, sum_kv: int, max_kv: int) -> float:
        """One layer's attention for a decode batch whose contexts sum to ``sum_kv``."""
        c0, b_seq, b_sum, b_pad = self._dec
        t = c0 + b_seq * num_decodes + b_sum * sum_kv + b_pad * num_decodes * max_kv
        if self._dec_ratio is not None:
            t *= self._dec_ratio[num_decodes.bit_length()][(sum_kv // num_decodes).bit_length()]
        return t

    def prefill_attention(self, q: int, start: int) -> float:
        """One layer's attention for a chunk of ``q`` tokens after ``start`` cached ones."""
        p0, a_seen, a_dense, a_q, a_kv = self._pre
        kv = start + q
        t = p0 + a_seen * (q * start + q * (q + 1) * 0.5) + a_dense * q * kv + a_q * q + a_kv * kv
        return t if self._pre_ratio is None else t * self._pre_ratio[q.bit_length()][kv.bit_length()]

    def estimate(self, num_decodes: int, sum_kv: int, max_kv: int, chunks, num_sampled: int) -> IterationCost:
        """Cost of an iteration described by counts: ``chunks`` are (q, start) prefill chunks."""
        num_tokens = num_decodes
        attn = self.decode_attention(num_decodes, sum_kv, max_kv) if num_decodes else 0.0
        for q, start in chunks:
            num_tokens += q
            attn += self.prefill_attention(q, start)
        if num_tokens > self._max_tokens:
            self._extend(max(2 * self._max_tokens, num_tokens))
        o0, o_seq, o_tok, o_pre = self._ovh
        num_seqs = num_decodes + len(chunks)
        host = o0 + o_seq * num_seqs + o_tok * num_tokens + o_pre * len(chunks)
        stage, lm = self._token_list[num_tokens] + self.layers_per_stage * attn, self._lm_list[num_sampled]
        fwd = self._fwd
        if not chunks and self._fwd_graphed is not None and num_decodes <= self._graph_max:
            # A decode-only step the engine replays as a CUDA graph.
            if self._graphed_direct is not None:
                a, per_decode, per_kv = self._graphed_direct
                total = a + per_decode * num_decodes + per_kv * sum_kv
                ops = stage + lm
                return IterationCost(host, total * stage / ops, total * lm / ops) if ops > 0.0 else IterationCost(host, total, 0.0)
            fwd = self._fwd_graphed
        if fwd is not None:
            # Whole-forward calibration (measured by the profiler's engine phase), spread
            # over stages and LM head in proportion.
            ops = self.pp * stage + lm
            if ops > 0.0:
                scale = (fwd[0] + fwd[1] * ops) / ops
                stage, lm = stage * scale, lm * scale
        return IterationCost(host, stage, lm)

    def iteration_cost(self, batch: ScheduledBatch) -> IterationCost:
        """Predicted host, per-stage and last-stage times of ``batch``."""
        seqs = batch.seqs
        nd = batch.num_decodes
        sum_kv = max_kv = 0
        if nd:
            starts = [s.start_pos for s in seqs[:nd]]
            # A decode's context is its cached tokens plus the new one.
            sum_kv, max_kv = sum(starts) + nd, max(starts) + 1
        prefills = seqs[nd:]
        chunks = [(len(s.token_ids), s.start_pos) for s in prefills]
        return self.estimate(nd, sum_kv, max_kv, chunks, nd + sum(s.do_sample for s in prefills))

    def iteration_time(self, batch: ScheduledBatch) -> float:
        """Wall time of ``batch`` on a replica without pipeline parallelism."""
        c = self.iteration_cost(batch)
        return c.host + self.pp * c.stage + c.last_stage_extra


def _config_of(meta: dict):
    from podserve.model.config import LlamaConfig

    return LlamaConfig(**meta["model_config"])
