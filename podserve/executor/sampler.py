"""Token sampling on the device: greedy, temperature, top-k, top-p, min-p, per-request seeds.

Everything stays on the device and nothing is read back: the sampler returns a tensor of
token ids and the runner reads it with one ``.tolist()``, the step's only sync. Per-row
parameters reach the device through pinned memory (a plain ``torch.tensor(..., device=)``
from pageable memory would synchronise the stream).

Sampling is the exponential race (the Gumbel-max trick): with ``q ~ Exp(1)`` per token,
``argmax(p / q)`` is a draw from ``p``, for every row in one kernel. Tokens filtered out
(top-k/top-p/min-p) have ``p = 0`` and never win. A seeded request draws its ``q`` row
from a generator seeded by (seed, tokens generated so far), so its tokens don't depend on
what else is in the batch or on preemptions.
"""
from __future__ import annotations

import numpy as np
import torch

from podserve.request import SamplingParams

_SEED_STRIDE = 1_000_003  # mixes (seed, step) into one generator seed
_TINY = 1e-20  # floor for the exponential noise: no 0/0 when a filtered token draws q = 0


class Sampler:
    """Samples one token per row of a logits matrix, on the logits' device."""

    def __init__(self, device: torch.device, seed: int = 0):
        self.device = torch.device(device)
        self._generator = torch.Generator(device=self.device).manual_seed(seed)

    def to_device(self, values, dtype) -> torch.Tensor:
        """A host array on the device without a sync (pinned staging, async copy)."""
        t = torch.from_numpy(np.asarray(values, dtype=dtype))
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def __call__(
        self,
        logits: torch.Tensor,  # [n, vocab] float32
        params: list[SamplingParams],
        steps: list[int],
    ) -> torch.Tensor:  # int64 [n] on the logits' device
        greedy = logits.argmax(dim=-1)  # [n]
        if all(p.greedy for p in params):
            return greedy
        temps = self.to_device([1.0 if p.greedy else p.temperature for p in params], np.float32)
        probs = torch.softmax(logits / temps[:, None], dim=-1)  # [n, vocab]
        probs = self._filter(probs, params)
        q = torch.empty_like(probs).exponential_(generator=self._generator)  # [n, vocab]
        for i, p in enumerate(params):
            if p.seed is not None and not p.greedy:
                gen = torch.Generator(device=logits.device).manual_seed((p.seed * _SEED_STRIDE + steps[i]) % (2**63))
                q[i].exponential_(generator=gen)
        chosen = (probs / q.clamp_min_(_TINY)).argmax(dim=-1)
        is_greedy = self.to_device([p.greedy for p in params], np.bool_)
        return torch.where(is_greedy, greedy, chosen)

    def _filter(self, probs: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        """Zero out tokens excluded by top-k, top-p and min-p, row by row as each asks."""
        vocab = probs.shape[-1]
        top_ks = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
        top_ps = [p.top_p for p in params]
        min_ps = [p.min_p for p in params]
        if any(k < vocab for k in top_ks) or any(p < 1.0 for p in top_ps):
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            rank = torch.arange(vocab, device=probs.device)[None, :]
            keep = rank < self.to_device(top_ks, np.int64)[:, None]
            top_p = self.to_device(top_ps, np.float32)[:, None]
            # Keep each token whose preceding mass is below top_p: the smallest set reaching it.
            keep &= (sorted_probs.cumsum(-1) - sorted_probs) < top_p
            keep[:, 0] = True
            sorted_probs = sorted_probs * keep
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        if any(m > 0 for m in min_ps):
            min_p = self.to_device(min_ps, np.float32)[:, None]
            probs = torch.where(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0, probs)
        return probs
