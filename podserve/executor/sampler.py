"""Token sampling on the device: greedy, temperature, top-k, top-p, min-p, per-request seeds."""
from __future__ import annotations

import torch

from podserve.request import SamplingParams

_SEED_STRIDE = 1_000_003  # mixes (seed, step) into one generator seed


class Sampler:
    """Samples one token per row of a logits matrix.

    A seeded request draws from a generator seeded by (seed, tokens generated so far),
    so its tokens don't depend on what else is in the batch or on preemptions.
    """

    def __init__(self, device: torch.device, seed: int = 0):
        self.device = device
        self._generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(
        self,
        logits: torch.Tensor,  # [n, vocab] float32
        params: list[SamplingParams],
        steps: list[int],
    ) -> list[int]:
        greedy = logits.argmax(dim=-1)  # [n]
        if all(p.greedy for p in params):
            return greedy.tolist()
        n = logits.shape[0]
        temps = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params], device=logits.device)
        probs = torch.softmax(logits / temps[:, None], dim=-1)  # [n, vocab]
        probs = _filter(probs, params)
        chosen = greedy.clone()
        for i, p in enumerate(params):
            if p.greedy:
                continue
            gen = self._generator
            if p.seed is not None:
                gen = torch.Generator(device=logits.device).manual_seed((p.seed * _SEED_STRIDE + steps[i]) % (2**63))
            chosen[i] = torch.multinomial(probs[i], 1, generator=gen)[0]
        return chosen[:n].tolist()


def _filter(probs: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Zero out tokens excluded by top-k, top-p and min-p, row by row as each asks."""
    top_ks = [p.top_k for p in params]
    top_ps = [p.top_p for p in params]
    min_ps = [p.min_p for p in params]
    vocab = probs.shape[-1]
    if any(0 < k < vocab for k in top_ks) or any(p < 1.0 for p in top_ps):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        rank = torch.arange(vocab, device=probs.device)[None, :]
        k = torch.tensor([k if 0 < k < vocab else vocab for k in top_ks], device=probs.device)[:, None]
        keep = rank < k
        top_p = torch.tensor(top_ps, device=probs.device, dtype=probs.dtype)[:, None]
        # Keep each token whose preceding mass is below top_p: the smallest set reaching it.
        keep &= (sorted_probs.cumsum(-1) - sorted_probs) < top_p
        keep[:, 0] = True
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    if any(m > 0 for m in min_ps):
        min_p = torch.tensor(min_ps, device=probs.device, dtype=probs.dtype)[:, None]
        probs = torch.where(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0, probs)
    return probs
