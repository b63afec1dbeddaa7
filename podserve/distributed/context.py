"""Process groups of one worker: its place in the tp x pp grid and its communicators."""
from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from podserve.core.partition import Partition, rank_of


def free_port() -> int:
    """A TCP port free on this host now (for the rendezvous of a new process group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_backend(name: str, device: str) -> str:
    """"auto" -> nccl on CUDA, gloo on CPU; a named backend is checked against the device."""
    is_cuda = device.startswith("cuda")
    if name == "auto":
        return "nccl" if is_cuda else "gloo"
    if name == "nccl" and not is_cuda:
        raise ValueError("distributed backend nccl needs --device cuda; use gloo (or auto) on CPU")
    return name


@dataclass
class RankContext:
    """Where one worker sits: ``rank = pp_rank * tp + tp_rank``; its tensor-parallel group
    is the ``tp`` ranks of its stage, its pipeline neighbours the same ``tp_rank`` one
    stage before and after."""

    rank: int
    tp_rank: int
    pp_rank: int
    tp: int
    pp: int
    partition: Partition
    device: torch.device
    tp_group: object = None

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def prev_rank(self) -> int:
        return rank_of(self.tp_rank, self.pp_rank - 1, self.tp)

    @property
    def next_rank(self) -> int:
        return rank_of(self.tp_rank, self.pp_rank + 1, self.tp)

    @property
    def is_stage_leader(self) -> bool:
        """tp_rank 0 of its stage: the one that reports the stage's timing (and, on the
        last stage, the sampled tokens) to the engine."""
        return self.tp_rank == 0


def init_distributed(ctx: RankContext, backend: str, port: int, timeout_s: float) -> None:
    """Join the world group over TCP on localhost and create every stage's TP group
    (``new_group`` is collective: every rank creates all of them, in the same order)."""
    kwargs = {}
    if backend == "nccl":
        torch.cuda.set_device(ctx.device)
        kwargs["device_id"] = ctx.device
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=ctx.rank,
                            world_size=ctx.world_size, timeout=timedelta(seconds=timeout_s), **kwargs)
    if ctx.tp == 1:
        return  # no tensor-parallel collectives
    if ctx.pp == 1:
        ctx.tp_group = dist.group.WORLD
        return
    for stage in range(ctx.pp):
        group = dist.new_group([rank_of(t, stage, ctx.tp) for t in range(ctx.tp)])
        if stage == ctx.pp_rank:
            ctx.tp_group = group
