"""Cluster-level routing: which replica receives an arriving request."""
from __future__ import annotations

import random


class GlobalScheduler:
    """Picks a replica index for each request. ``replicas`` expose ``num_outstanding``."""

    name = "base"

    def __init__(self, replicas: list, seed: int = 0):
        self.replicas = replicas

    def route(self, request) -> int:
        raise NotImplementedError


class RoundRobin(GlobalScheduler):
    """Replica i, i+1, ... in turn, whatever their load."""

    name = "round_robin"

    def __init__(self, replicas, seed: int = 0):
        super().__init__(replicas, seed)
        self._next = 0

    def route(self, request) -> int:
        i = self._next
        self._next = (i + 1) % len(self.replicas)
        return i


class LeastOutstanding(GlobalScheduler):
    """The replica with the fewest unfinished requests (lowest index on ties)."""

    name = "lor"

    def route(self, request) -> int:
        loads = [r.num_outstanding for r in self.replicas]
        return loads.index(min(loads))


class RandomRouting(GlobalScheduler):
    """A uniformly random replica from a seeded generator."""

    name = "random"

    def __init__(self, replicas, seed: int = 0):
        super().__init__(replicas, seed)
        self._rng = random.Random(seed)

    def route(self, request) -> int:
        return self._rng.randrange(len(self.replicas))


GLOBAL_SCHEDULERS = {c.name: c for c in (RoundRobin, LeastOutstanding, RandomRouting)}


def make_global_scheduler(name: str, replicas: list, seed: int = 0) -> GlobalScheduler:
    try:
        return GLOBAL_SCHEDULERS[name](replicas, seed)
    except KeyError:
        raise ValueError(f"unknown global scheduler {name!r}; choose one of {', '.join(GLOBAL_SCHEDULERS)}") from None
