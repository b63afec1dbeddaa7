"""Routing policies: which healthy replica gets the next request (pure Python, no Ray).

A policy sees the healthy replicas (objects with ``replica_id`` and ``num_outstanding``)
and returns one. Add a policy by subclassing ``RoutingPolicy`` and registering it in
``ROUTING_POLICIES``; ``--routing NAME`` picks it.
"""
from __future__ import annotations

from typing import Protocol, Sequence


class Routable(Protocol):
    replica_id: int
    num_outstanding: int
    """Requests routed to this replica that have not finished yet."""


class RoutingPolicy:
    """Base class: ``choose`` one of ``candidates`` (never empty, ordered by ``replica_id``)."""

    name = "base"

    def choose(self, candidates: Sequence[Routable]) -> Routable:
        raise NotImplementedError


class RoundRobin(RoutingPolicy):
    """Each replica in turn, skipping unhealthy ones (a replica that comes back rejoins the cycle)."""

    name = "round-robin"

    def __init__(self):
        self._last_id = -1

    def choose(self, candidates: Sequence[Routable]) -> Routable:
        # The first candidate after the one picked last time, wrapping around: stable when
        # replicas leave or join, unlike an index into a list whose length changes.
        after = [c for c in candidates if c.replica_id > self._last_id]
        pick = after[0] if after else candidates[0]
        self._last_id = pick.replica_id
        return pick


class LeastOutstanding(RoutingPolicy):
    """The replica with the fewest unfinished requests; ties go round-robin so idle replicas share."""

    name = "least-outstanding"

    def __init__(self):
        self._tie_break = RoundRobin()

    def choose(self, candidates: Sequence[Routable]) -> Routable:
        fewest = min(c.num_outstanding for c in candidates)
        return self._tie_break.choose([c for c in candidates if c.num_outstanding == fewest])


ROUTING_POLICIES: dict[str, type[RoutingPolicy]] = {p.name: p for p in (RoundRobin, LeastOutstanding)}


def make_policy(name: str) -> RoutingPolicy:
    """A fresh policy by name; ValueError naming the known ones otherwise."""
    try:
        return ROUTING_POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}; known: {', '.join(ROUTING_POLICIES)}") from None
