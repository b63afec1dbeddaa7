"""The tensor-parallel all-reduce: NCCL, or one-shot over symmetric memory for small messages.

A decode step of a TP=2 Llama-3-8B runs 65 all-reduces of ~2 MB (one after attention and one
after the MLP per layer, one for the embedding). NCCL's ring all-reduce takes ~31 us each at
that size on two NVLink-connected H200s (``benchmarks/profile_step.py --tp 2``): 2 ms of an
8 ms step. A one-shot all-reduce over symmetric memory (``torch.distributed._symmetric_memory``)
lets every rank read its peers' buffers directly over NVLink and sum them in one kernel,
with a barrier on device-side signal pads before and after; for small messages that is a few
microseconds of NVLink reads instead of NCCL's protocol latency. vLLM (custom all-reduce,
symmetric-memory communicator) and SGLang do the same.

``TPAllReduce`` picks per call: the one-shot path for CUDA tensors up to ``max_bytes`` (4 MB), NCCL
(or gloo) otherwise. It is captured into CUDA graphs like NCCL is. Setup failures (no P2P
access, an old torch) leave NCCL in place and are reported, never raised.

**Fused with the residual add and RMSNorm** (``add_rms_norm``; ``PODSERVE_FUSED_ALLREDUCE=0``
turns it off). Every row-parallel output in a Llama layer is consumed by a residual add and
a norm (the next sublayer's). So the row-parallel GEMM writes its partial sum straight into
this rank's symmetric buffer (``staging``), one barrier kernel (signal pads, release/acquire
at system scope) says every rank's partial is there, and one Triton kernel
(``kernels/add_norm.py``) reads all ranks' partials over NVLink, sums them in rank order (so
every rank gets bit-identical sums), adds the residual in place and normalises: a barrier
and one kernel where the unfused path runs a copy, the one-shot kernel with its two
barriers, an add and a norm.

The fused path has one barrier per call, not two, so a rank may still be reading a peer's
buffer when that peer writes its next partial. Two buffer *slots* make this safe: the
attention output (o_proj) always uses slot 0 and the MLP output (down_proj) slot 1, and
the two alternate strictly in every forward (o_proj, down_proj, o_proj, ...; a forward
ends with a down_proj and starts with an o_proj), so between a rank's read of a slot and
its peer's next write into the same slot lies the barrier of the other slot's call, which
the reader passes only after finishing that read.
"""
from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist

from podserve.config import ONE_SHOT_MAX_BYTES

FUSED_ALL_REDUCE = os.environ.get("PODSERVE_FUSED_ALLREDUCE", "1") != "0"
"""Fuse the one-shot all-reduce with the residual add and RMSNorm that follow it (module doc);
``PODSERVE_FUSED_ALLREDUCE=0`` keeps them separate (to measure the difference)."""

NUM_SLOTS = 2
"""Buffer slots of the fused path: 0 for attention outputs, 1 for MLP outputs (module doc)."""


class TPAllReduce:
    """In-place sum over the tensor-parallel ``group`` (``__call__(x)`` returns the sum)."""

    def __init__(self, group, device: torch.device, dtype: torch.dtype, max_bytes: int = ONE_SHOT_MAX_BYTES,
                 enable_one_shot: bool = True):
        self.group = group
        self.max_bytes = max_bytes
        self.buffer: torch.Tensor | None = None
        """This rank's symmetric buffer (flat, ``dtype``), or None: NCCL for everything."""
        self.error: str | None = None
        """Why the one-shot path is off although it was wanted (setup failed), else None."""
        self.fused = False
        """Whether row-parallel outputs are reduced inside the residual add + norm kernel."""
        self._copy_fused = False
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self._device = device
        if enable_one_shot and device.type == "cuda" and self.world > 1:
            try:
                self._setup(device, dtype)
            except Exception as e:  # noqa: BLE001 -- any failure: keep NCCL, say why
                self.buffer = None
                self.error = f"one-shot all-reduce unavailable, using NCCL: {type(e).__name__}: {e}"
            # Every rank must take the same path at every call, or the first all-reduce hangs.
            ok = torch.tensor([int(self.buffer is not None), int(self.fused)], device=device)
            dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=group)
            if not ok[0].item() and self.buffer is not None:
                self.buffer = None
                self.error = "one-shot all-reduce unavailable on another rank, using NCCL"
            if not ok[1].item():
                self.fused = False

    def _setup(self, device: torch.device, dtype: torch.dtype) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        self.group_name = self.group.group_name
        numel = self.max_bytes // torch.empty((), dtype=dtype).element_size()
        buffer = symm_mem.empty(numel, dtype=dtype, device=device)
        symm_mem.rendezvous(buffer, self.group_name)
        self._copy_fused = hasattr(torch.ops.symm_mem, "one_shot_all_reduce_copy")
        self.buffer = buffer
        # A first call checks the path end to end (every rank makes it: it is collective).
        probe = torch.full((4096,), float(dist.get_rank(self.group) + 1), dtype=dtype, device=device)
        got = self(probe)
        world = self.world
        expected = world * (world + 1) / 2
        if not torch.all(got == expected):
            raise RuntimeError(f"one-shot sum check failed: got {got[0].item()}, expected {expected}")
        from podserve.model.layers import FUSED_CUDA_OPS

        if FUSED_ALL_REDUCE and FUSED_CUDA_OPS:
            try:
                self._setup_fused(numel, device, dtype, probe, expected)
            except Exception as e:  # noqa: BLE001 -- the unfused one-shot path still works
                self.fused = False
                self.error = f"fused all-reduce + norm unavailable, unfused one-shot used: {type(e).__name__}: {e}"

    def _setup_fused(self, numel: int, device: torch.device, dtype: torch.dtype, probe: torch.Tensor,
                     expected: float) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        slots = symm_mem.empty(NUM_SLOTS * numel, dtype=dtype, device=device)
        self._handle = symm_mem.rendezvous(slots, self.group_name)
        self._slots = slots
        # [slot][rank]: every rank's slot, as tensors this rank can read (its own included).
        self._peers = [[self._handle.get_buffer(r, (numel,), dtype, slot * numel) for r in range(self.world)]
                       for slot in range(NUM_SLOTS)]
        self.fused = True
        for slot in range(NUM_SLOTS):  # end to end, each slot: a row-parallel output plus a zero residual
            staged = self.staging((1, probe.numel()), slot)
            staged.copy_(probe.view(1, -1))
            residual = torch.zeros_like(staged)
            self.add_rms_norm(staged, residual, None, 0.0, slot)
            if not torch.all(residual == expected):
                raise RuntimeError(f"fused sum check failed: got {residual[0, 0].item()}, expected {expected}")

    def staging(self, shape: tuple[int, ...], slot: int) -> torch.Tensor | None:
        """Where a row-parallel layer should write its partial output of ``shape`` (this rank's
        buffer ``slot``), or None when the fused path does not take a message that size."""
        numel = math.prod(shape)
        if not self.fused or numel * self._slots.element_size() > self.max_bytes:
            return None
        return self._peers[slot][self.rank][:numel].view(shape)

    def add_rms_norm(self, partial: torch.Tensor,  # [num_tokens, hidden]: this rank's partial sum
                     residual: torch.Tensor,  # [num_tokens, hidden]: updated in place
                     weight: torch.Tensor | None, eps: float, slot: int) -> torch.Tensor:
        """``residual += all_reduce(partial)``, then ``weight * rms_norm(residual)`` (or
        ``residual`` without a weight): one barrier and one kernel on the fused path
        (``partial`` best written at ``staging(shape, slot)``, else it is copied there)."""
        staged = self.staging(tuple(partial.shape), slot) if partial.device == self._device else None
        if staged is None or staged.dtype != partial.dtype or residual.stride(1) != 1:
            from podserve.model.layers import add_rms_norm

            return add_rms_norm(self(partial), residual, weight, eps)
        if staged.data_ptr() != partial.data_ptr():
            staged.copy_(partial)
        self._handle.barrier(channel=slot)
        numel = partial.numel()
        parts = [peer[:numel].view(partial.shape) for peer in self._peers[slot]]  # rank order on every rank
        from podserve.kernels.add_norm import add_rms_norm as fused

        return fused(parts, residual, weight, eps)

    @property
    def one_shot(self) -> bool:
        """Whether small CUDA messages take the one-shot path."""
        return self.buffer is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over the group: ``x`` itself, summed in place (NCCL), or a new
        tensor (one-shot)."""
        if self.buffer is not None and x.is_cuda and x.dtype == self.buffer.dtype and x.is_contiguous() \
                and x.numel() * x.element_size() <= self.max_bytes:
            staged = self.buffer[: x.numel()].view(x.shape)
            if self._copy_fused:  # the kernel copies x into this rank's buffer before its barrier
                return torch.ops.symm_mem.one_shot_all_reduce_copy(staged, x, "sum", self.group_name)
            staged.copy_(x)
            return torch.ops.symm_mem.one_shot_all_reduce_out(staged, "sum", self.group_name, x)
        dist.all_reduce(x, group=self.group)
        return x
