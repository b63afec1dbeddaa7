"""SLO-aware token budget for Sarathi: each iteration, the largest prefill chunk whose
predicted iteration time stays under a TBT SLO (the same cost model as the simulator).

A fixed ``chunk_size`` has to be small enough for the worst iteration (many decodes with
long contexts) and so wastes headroom whenever the batch is light; this picks the budget
per iteration instead. ``chunk_size`` remains the upper cap.
"""
from __future__ import annotations

from collections import deque

from podserve.sim.cost_model import CostModel


class SLOTokenBudget:
    """Callable hook for ``SarathiScheduler.token_budget``: ``(scheduler, decodes) -> tokens``."""

    def __init__(self, cost_model: CostModel, tbt_slo_s: float, min_chunk: int = 16, quantile: float = 0.95,
                 window: int = 64):
        if tbt_slo_s <= 0:
            raise ValueError(f"tbt_slo={tbt_slo_s}: must be > 0 seconds")
        self.cost_model = cost_model
        self.tbt_slo_s = tbt_slo_s
        self.min_chunk = min_chunk
        """Prefill tokens allowed even when the decodes alone miss the SLO, so prefills never starve."""
        self.quantile = quantile
        self.scale = 1.0
        """Measured / predicted iteration time applied to predictions: 1 in the simulator; in
        the engine, the ``quantile`` of the last ``window`` iterations (``observe``)."""
        self._ratios: deque[float] = deque(maxlen=window)
        self.adaptive = True
        """False: ignore ``observe`` (keep the cost model's predictions as they are)."""

    @classmethod
    def for_engine(cls, profile_dir, model_config, device: str, dtype: str, tbt_slo_s: float) -> "SLOTokenBudget":
        """The budget the engine uses: the cost model of ``profile_dir`` (``podserve profile``
        of the same model on the same kind of device and dtype), else a ValueError saying
        what does not match. The simulator builds the same object from its own cost model."""
        from dataclasses import asdict

        from podserve.sim.cache import fitted_profile
        from podserve.sim.profile_io import load_profile

        if profile_dir is None:
            raise ValueError("a TBT SLO token budget predicts iteration times from a cost model: "
                             "pass a profile directory of this model on this device (--profile DIR, made by `podserve profile`)")
        profile = load_profile(profile_dir)
        meta = profile.meta
        shape = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size")
        mine, theirs = asdict(model_config), meta.get("model_config", {})
        diff = [f"{k} {theirs.get(k)} vs {mine.get(k)}" for k in shape if theirs.get(k) != mine.get(k)]
        if diff:
            raise ValueError(f"profile {profile_dir} is of another model shape than the engine's ({', '.join(diff)}): "
                             f"profile this model with `podserve profile`")
        kind = str(device).split(":")[0]
        if meta.get("device") != kind or meta.get("dtype") != dtype:
            raise ValueError(f"profile {profile_dir} was measured on {meta.get('device')}/{meta.get('dtype')}, "
                             f"the engine runs on {kind}/{dtype}: profile this device with `podserve profile`")
        return cls(CostModel(fitted_profile(profile), model_config), tbt_slo_s)

    def observe(self, batch, duration_s: float) -> None:
        """The engine reports each executed iteration. A real machine drifts from its profile
        (other tenants, temperature) and varies from one iteration to the next; sizing chunks
        by the ``quantile`` of recent measured/predicted ratios of iterations with prefill
        chunks (those the budget sizes) keeps that many under the SLO instead of about half."""
        if not self.adaptive or batch.num_decodes == batch.num_seqs:
            return  # decode-only: not sized by the budget (and relatively noisier, being short)
        c = self.cost_model.iteration_cost(batch)
        predicted = c.host + self.cost_model.pp * c.stage + c.last_stage_extra
        if predicted <= 0.0:
            return
        self._ratios.append(duration_s / predicted)
        if len(self._ratios) >= 8:
            ratios = sorted(self._ratios)
            self.scale = ratios[min(len(ratios) - 1, int(self.quantile * len(ratios)))]

    def attach(self, scheduler) -> None:
        """Install on a Sarathi scheduler (other policies have no token budget to adapt)."""
        if scheduler.name != "sarathi":
            raise ValueError(f"--tbt-slo needs the sarathi scheduler, not {scheduler.name!r}")
        scheduler.token_budget = self

    def _candidates(self, scheduler) -> list[tuple[int, int]]:
        """(tokens left, cached tokens) of the prefills the scheduler would chunk next, in order."""
        out = [(r.num_tokens - r.num_computed_tokens, r.num_computed_tokens) for r in scheduler.running if r.is_prefill]
        room = scheduler.config.max_num_seqs - len(scheduler.running)
        for r in scheduler.waiting:
            if room <= 0 or len(out) >= 8:  # a few suffice: chunks fill the budget in this order
                break
            out.append((r.num_tokens - r.num_computed_tokens, r.num_computed_tokens))
            room -= 1
        return out

    def _time(self, nd: int, sum_kv: int, max_kv: int, candidates, budget: int) -> float:
        chunks, left = [], budget
        for remaining, start in candidates:
            if left <= 0:
                break
            q = min(remaining, left)
            chunks.append((q, start))
            left -= q
        c = self.cost_model.estimate(nd, sum_kv, max_kv, chunks, nd + len(chunks))
        pp = self.cost_model.pp
        if pp == 1:
            return self.scale * (c.host + c.stage + c.last_stage_extra)
        # Under pipeline parallelism a request's next token needs its micro-batch to clear
        # all pp stages and then a free stage 0, which may still hold the next micro-batch:
        # up to pp + 1 stage slots, each as long as this one if every micro-batch is sized alike.
        return self.scale * ((pp + 1) * (c.host + c.stage) + c.last_stage_extra)

    def __call__(self, scheduler, decodes) -> int:
        nd = len(decodes)
        candidates = self._candidates(scheduler)
        cap = scheduler.config.chunk_size - nd
        if not candidates or cap <= 0:
            return scheduler.config.chunk_size
        starts = [r.num_computed_tokens for r, _ in decodes]
        sum_kv, max_kv = (sum(starts) + nd, max(starts) + 1) if nd else (0, 0)
        total = sum(c[0] for c in candidates)
        hi = min(cap, total)
        if self._time(nd, sum_kv, max_kv, candidates, hi) <= self.tbt_slo_s:
            return nd + hi
        lo = 0  # largest budget known to meet the SLO (0 always "meets" it: nothing to add)
        while hi - lo > max(1, lo // 64):  # ~1.5% resolution is plenty for a chunk size
            mid = (lo + hi) // 2
            if self._time(nd, sum_kv, max_kv, candidates, mid) <= self.tbt_slo_s:
                lo = mid
            else:
                hi = mid
        return nd + max(lo, self.min_chunk)
