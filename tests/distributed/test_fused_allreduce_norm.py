"""The tensor-parallel reduction fused into the residual add + RMSNorm (allreduce.py).

Two ranks' symmetric buffers are emulated by CPU tensors both "ranks" can read (the fused
kernel runs in Triton's interpreter), the barrier by a recorder: the protocol -- where a
row-parallel layer writes its partial, which slot each reduction uses, that every rank
sums the same parts in the same order -- is checked without GPUs.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton")

from podserve.distributed import layers as tp_layers  # noqa: E402
from podserve.distributed.allreduce import NUM_SLOTS, TPAllReduce  # noqa: E402
from podserve.kernels.add_norm import add_rms_norm_ref  # noqa: E402
from podserve.model.config import LlamaConfig  # noqa: E402
from podserve.model.layers import RMSNorm  # noqa: E402
from podserve.model.llama import LlamaForCausalLM  # noqa: E402


class _Barrier:
    def __init__(self):
        self.channels: list[int] = []

    def barrier(self, channel: int = 0) -> None:
        self.channels.append(channel)


def _emulated_group(world: int, numel: int, dtype=torch.float32) -> list[TPAllReduce]:
    """``world`` TPAllReduce objects on the fused path whose "symmetric" slots are shared CPU tensors."""
    slots = [torch.full((NUM_SLOTS * numel,), float("nan"), dtype=dtype) for _ in range(world)]  # poisoned
    group = []
    for rank in range(world):
        ar = object.__new__(TPAllReduce)
        ar.max_bytes, ar.fused, ar.rank, ar.world = numel * slots[0].element_size(), True, rank, world
        ar.buffer, ar._device, ar._slots, ar._handle = None, torch.device("cpu"), slots[rank], _Barrier()
        ar._peers = [[slots[r][s * numel:(s + 1) * numel] for r in range(world)] for s in range(NUM_SLOTS)]
        group.append(ar)
    return group


@pytest.mark.parametrize("slot", [0, 1])
def test_row_parallel_partials_are_reduced_inside_the_norm(slot):
    world, n, inner, hidden = 2, 5, 24, 64
    group = _emulated_group(world, 8 * hidden)
    linears = [torch.nn.Linear(inner, hidden, bias=False) for _ in range(world)]
    xs = [torch.randn(n, inner) for _ in range(world)]
    norm = RMSNorm(hidden, 1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        residual = torch.randn(n, hidden)
        partials = []
        for rank in range(world):  # every rank's row-parallel GEMM, before any reduction
            row = tp_layers.RowParallel(linears[rank], group[rank], slot)
            out = row(xs[rank])
            assert out.data_ptr() == group[rank].staging(out.shape, slot).data_ptr()  # written in place, no copy
            partials.append(out.clone())
        results = []
        for rank in range(world):
            res = residual.clone()
            normed, res_out = tp_layers.ReducingNorm(norm, group[rank], slot)(partials[rank], res)
            assert res_out is res
            results.append((normed, res))
        ref_res = residual.clone()
        expected = add_rms_norm_ref([linears[r](xs[r]) for r in range(world)], ref_res, norm.weight, 1e-5)
    for rank, (normed, res) in enumerate(results):
        assert group[rank]._handle.channels == [slot]
        torch.testing.assert_close(res, ref_res, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(normed, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(normed, results[0][0]) and torch.equal(res, results[0][1])  # bit-identical on every rank


def test_messages_over_the_cap_take_the_unfused_path():
    (ar,) = _emulated_group(1, 64)
    ar.__class__ = type("_Summing", (TPAllReduce,), {"__call__": lambda self, x: x * 2})  # stands in for NCCL
    assert ar.staging((2, 64), 0) is None
    residual = torch.zeros(2, 64)
    partial = torch.ones(2, 64)
    out = ar.add_rms_norm(partial, residual, None, 0.0, slot=0)
    assert ar._handle.channels == [] and torch.equal(out, torch.full((2, 64), 2.0))


class _RecordingAllReduce:
    """World-size-1 stand-in that records which slot each reduction used."""

    def __init__(self, *args, **kwargs):
        self.slots: list[int] = []
        self.error = None

    def __call__(self, x):
        return x

    def staging(self, shape, slot):
        return None

    def add_rms_norm(self, partial, residual, weight, eps, slot):
        from podserve.model.layers import add_rms_norm

        self.slots.append(slot)
        return add_rms_norm(partial, residual, weight, eps)


class _EchoAttention:
    def forward(self, q, k, v, k_cache, v_cache, meta, scale):
        return q * 0.5 + 0.1


def test_reductions_alternate_slots_in_every_forward(monkeypatch):
    # The fused path's safety rests on consecutive reductions never sharing a slot,
    # within a forward and from one forward to the next (allreduce.py, module doc).
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.init_random(seed=1, std=0.2)
    reference = copy.deepcopy(model)
    monkeypatch.setattr(tp_layers, "TPAllReduce", _RecordingAllReduce)
    ctx = SimpleNamespace(tp=2, tp_rank=0, tp_group=None, is_first_stage=True, is_last_stage=True,
                          partition=SimpleNamespace(vocab=lambda rank: (0, config.vocab_size)))
    all_reduce = tp_layers.parallelize(model, ctx, config.vocab_size)
    ids, pos = torch.tensor([3, 7, 11, 2]), torch.arange(4)
    caches = [(None, None)] * config.num_hidden_layers
    with torch.no_grad():
        for _ in range(2):
            got = model(ids, pos, caches, None, _EchoAttention())
            torch.testing.assert_close(got, reference(ids, pos, caches, None, _EchoAttention()), rtol=1e-5, atol=1e-5)
    assert all_reduce.slots == [0, 1] * config.num_hidden_layers * 2
