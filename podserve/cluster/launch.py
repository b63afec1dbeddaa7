"""Start replicas for ``podserve serve --replicas N [--ray-address ADDR]`` and return their Router.

Connects to the Ray cluster at ``--ray-address`` or starts a local one (no dashboard), creates
one ``ReplicaActor`` per replica with its resources (``--replica-num-cpus`` CPUs on CPU;
``tensor_parallel_size`` GPUs on CUDA, Ray sets ``CUDA_VISIBLE_DEVICES``), waits until every
replica has loaded the model, and fetches the tokenizer from one of them (the front end never
loads weights). Workers get this process's ``podserve`` on ``PYTHONPATH``, so front end and
replicas run the same code.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from pathlib import Path

from podserve.cluster import require_ray
from podserve.config import EngineConfig

logger = logging.getLogger("podserve.router")

RAY_NAMESPACE = "podserve"
START_TIMEOUT_S = 600.0  # a replica must load its model within this (a cold 8B on one GPU is ~1 min)


def replica_resources(args, config: EngineConfig) -> dict:
    """Ray resources of one replica: GPUs = tensor parallel size on CUDA, else CPUs."""
    if config.device.startswith("cuda"):
        tp = int(getattr(args, "tensor_parallel_size", 1) or 1) * int(getattr(args, "pipeline_parallel_size", 1) or 1)
        return {"num_cpus": 1, "num_gpus": tp}
    return {"num_cpus": args.replica_num_cpus, "num_gpus": 0}


def _init_ray(ray, args, needed_cpus: float) -> None:
    if args.ray_address:
        ray.init(address=args.ray_address, namespace=RAY_NAMESPACE, log_to_driver=True)
        return
    # A local cluster: at least as many logical CPUs as the replicas ask for, so an
    # oversubscribed machine runs slowly rather than waiting forever for resources.
    num_cpus = max(os.cpu_count() or 1, int(needed_cpus + 0.999))
    if num_cpus > (os.cpu_count() or 1):
        logger.warning("%d replicas x %g CPUs exceed this machine's %d cores: they will share them",
                       args.replicas, args.replica_num_cpus, os.cpu_count())
    ray.init(num_cpus=num_cpus, namespace=RAY_NAMESPACE, include_dashboard=False, log_to_driver=True)


def start_router(args, config: EngineConfig):
    """Create ``args.replicas`` replicas, wait for them, return a ``Router`` (not yet started)."""
    ray = require_ray("--ray-address" if args.ray_address and args.replicas is None else "--replicas")
    from podserve.cluster.policy import make_policy
    from podserve.cluster.replica import ReplicaActor
    from podserve.cluster.router import HEALTHY, Replica, Router

    num_replicas = args.replicas if args.replicas is not None else 1
    if num_replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {num_replicas}")
    policy = make_policy(args.routing)
    if config.device.startswith("cuda"):
        config = dataclasses.replace(config, device="cuda")  # each actor sees only its own GPUs
    resources = replica_resources(args, config)
    _init_ray(ray, args, num_replicas * resources["num_cpus"])
    total = ray.cluster_resources()
    for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        need = num_replicas * resources[key]
        if need > total.get(name, 0):
            ray.shutdown()
            raise ValueError(f"{num_replicas} replicas need {need:g} {name}s but the Ray cluster has "
                             f"{total.get(name, 0):g}; lower --replicas or add nodes")

    package_root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    actor_class = ray.remote(ReplicaActor)
    name_prefix = f"podserve-{uuid.uuid4().hex[:6]}"
    threads = max(1, int(resources["num_cpus"])) if resources["num_gpus"] == 0 else None
    max_concurrency = (args.max_queue_len or 1024) + config.scheduler.max_num_seqs + 64

    def spawn(replica_id: int, generation: int):
        name = f"{name_prefix}-replica-{replica_id}" + (f"-r{generation}" if generation else "")
        actor = actor_class.options(
            name=name, namespace=RAY_NAMESPACE, max_restarts=0, max_concurrency=max_concurrency,
            runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **resources,
        ).remote(config, replica_id, args.served_model_name, args.max_queue_len, threads)
        return actor, name

    logger.info("starting %d replicas (%s each) in Ray namespace %r", num_replicas, resources, RAY_NAMESPACE)
    spawned = [spawn(i, 0) for i in range(num_replicas)]
    try:
        infos = ray.get([actor.info.remote() for actor, _ in spawned], timeout=START_TIMEOUT_S)
        tokenizer = ray.get(spawned[0][0].tokenizer.remote(), timeout=START_TIMEOUT_S)
    except Exception as e:
        ray.shutdown()
        raise ValueError(f"the replicas failed to start: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}") from e
    replicas = [Replica(i, actor, name, state=HEALTHY, info=info) for i, ((actor, name), info) in enumerate(zip(spawned, infos))]
    for r in replicas:
        logger.info("replica %d: %s pid %d on %s (%s)", r.replica_id, r.actor_name, r.info.pid, r.info.node_ip, r.info.device)
    return Router(
        replicas, spawn, policy, tokenizer, infos[0],
        health_check_interval_s=args.health_check_interval, health_check_timeout_s=args.health_check_timeout,
        auto_restart=args.replica_restart == "auto", restart_delay_s=args.replica_restart_delay,
        start_timeout_s=START_TIMEOUT_S, namespace=RAY_NAMESPACE, on_stop=ray.shutdown,
    )
