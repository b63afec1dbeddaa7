"""Tensor and pipeline parallelism over torch.distributed (gloo on CPU, NCCL on CUDA).

The engine's process keeps the scheduler; ``executor.DistributedExecutor`` spawns one
worker per rank (``worker.worker_main``), each a ModelRunner over its shard
(``weights``, ``layers``), and exchanges pickled ScheduledBatches and sampled tokens with
them over pipes. Partition rules: ``podserve.core.partition`` (shared with the simulator).
"""
