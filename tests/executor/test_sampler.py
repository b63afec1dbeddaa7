"""Sampling on the device: greedy rows, filters, seeded reproducibility, the right distribution."""
from __future__ import annotations

import torch

from podserve.executor.sampler import Sampler
from podserve.request import SamplingParams

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def logits_of(probs: list[float], rows: int = 1) -> torch.Tensor:
    return torch.tensor(probs).log().repeat(rows, 1).to(DEV)


def test_returns_a_device_tensor_and_greedy_rows_take_the_argmax():
    s = Sampler(torch.device(DEV))
    logits = torch.randn(6, 50, device=DEV)
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0), SamplingParams(temperature=1e-6),
              SamplingParams(temperature=0.7, top_k=1), SamplingParams(temperature=0), SamplingParams(temperature=2.0, seed=3)]
    out = s(logits, params, [0] * 6)
    assert isinstance(out, torch.Tensor) and out.device.type == DEV and out.dtype == torch.int64
    best = logits.argmax(-1).tolist()
    got = out.tolist()
    assert [got[i] for i in (0, 2, 3, 4)] == [best[i] for i in (0, 2, 3, 4)]  # greedy, and top_k=1


def test_all_greedy_batch_is_one_argmax():
    s = Sampler(torch.device(DEV))
    logits = torch.randn(4, 30, device=DEV)
    assert s(logits, [SamplingParams(temperature=0)] * 4, [0] * 4).tolist() == logits.argmax(-1).tolist()


def test_seeded_rows_ignore_batch_neighbours_and_depend_on_seed_and_step():
    probs = [1 / 64] * 64
    p = SamplingParams(temperature=1.0, seed=1234)
    alone = [Sampler(torch.device(DEV), seed=0)(logits_of(probs), [p], [k]).item() for k in range(12)]
    crowd = []
    for k in range(12):
        params = [SamplingParams(temperature=1.0), p, SamplingParams(temperature=0.5, seed=9)]
        crowd.append(Sampler(torch.device(DEV), seed=k)(logits_of(probs, 3), params, [5, k, 2])[1].item())
    assert crowd == alone
    other = [Sampler(torch.device(DEV))(logits_of(probs), [SamplingParams(temperature=1.0, seed=4321)], [k]).item()
             for k in range(12)]
    assert other != alone
    assert len(set(alone)) > 1  # the step moves the stream on


def test_draws_follow_the_distribution():
    probs = [0.5, 0.3, 0.15, 0.05]
    s = Sampler(torch.device(DEV), seed=1)
    n = 4000
    out = s(logits_of(probs, n), [SamplingParams(temperature=1.0)] * n, [0] * n)
    freq = torch.bincount(out.cpu(), minlength=4).double() / n
    assert (freq - torch.tensor(probs, dtype=torch.double)).abs().max() < 0.03, freq


def test_filters_exclude_tokens():
    probs = [0.4, 0.3, 0.2, 0.06, 0.04]
    s = Sampler(torch.device(DEV), seed=2)
    n = 2000
    cases = [(SamplingParams(temperature=1.0, top_k=2), {0, 1}),
             (SamplingParams(temperature=1.0, top_p=0.65), {0, 1}),
             (SamplingParams(temperature=1.0, min_p=0.6), {0, 1}),
             (SamplingParams(temperature=1.0, top_k=3, top_p=0.95), {0, 1, 2})]
    params = [c for c, _ in cases for _ in range(n)]
    out = s(logits_of(probs, len(params)), params, [0] * len(params)).cpu()
    for i, (_, allowed) in enumerate(cases):
        assert set(out[i * n:(i + 1) * n].tolist()) == allowed


def test_temperature_sharpens():
    probs = [0.4, 0.3, 0.2, 0.1]
    s = Sampler(torch.device(DEV), seed=3)
    n = 3000
    cold = s(logits_of(probs, n), [SamplingParams(temperature=0.25)] * n, [0] * n).cpu()
    hot = s(logits_of(probs, n), [SamplingParams(temperature=1.0)] * n, [0] * n).cpu()
    assert (cold == 0).double().mean() > (hot == 0).double().mean() + 0.2
