"""TPAllReduce: NCCL/gloo on CPU tensors (the one-shot path is CUDA-only), exact sums."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from podserve.distributed.allreduce import TPAllReduce
from podserve.distributed.context import free_port


def _rank(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        all_reduce = TPAllReduce(dist.group.WORLD, torch.device("cpu"), torch.float32)
        x = torch.arange(12, dtype=torch.float32).reshape(3, 4) * (rank + 1)
        out = all_reduce(x)
        results.put((rank, all_reduce.one_shot, all_reduce.error, out.tolist()))
    finally:
        dist.destroy_process_group()


def test_cpu_falls_back_to_the_process_group():
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, results)) for r in range(2)]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    expected = (torch.arange(12, dtype=torch.float32).reshape(3, 4) * 3).tolist()
    for rank, one_shot, error, out in got:
        assert not one_shot and error is None  # CPU: no symmetric memory, and nothing to report
        assert out == expected


def test_parallel_flags_reach_the_config():
    import argparse

    from podserve.entrypoints.engine_args import add_engine_args, engine_config_from_args

    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    default = engine_config_from_args(parser.parse_args([])).parallel
    assert default.custom_all_reduce is True and default.async_scheduling is None
    off = engine_config_from_args(parser.parse_args(["--disable-custom-all-reduce", "--no-async-scheduling"])).parallel
    assert off.custom_all_reduce is False and off.async_scheduling is False
