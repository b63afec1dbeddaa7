"""Routing policies in isolation (pure Python, no Ray)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from podserve.cluster.policy import ROUTING_POLICIES, LeastOutstanding, RoundRobin, make_policy


@dataclass
class FakeReplica:
    replica_id: int
    num_outstanding: int = 0


def test_round_robin_cycles_and_skips_missing_replicas():
    policy = RoundRobin()
    replicas = [FakeReplica(i) for i in range(3)]
    assert [policy.choose(replicas).replica_id for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    # Replica 1 drops out of the candidates (unhealthy): the cycle goes on without it...
    without_1 = [replicas[0], replicas[2]]
    assert [policy.choose(without_1).replica_id for _ in range(4)] == [0, 2, 0, 2]
    # ...and it rejoins in its place once healthy again.
    assert [policy.choose(replicas).replica_id for _ in range(3)] == [0, 1, 2]


def test_least_outstanding_picks_the_idlest_and_alternates_on_ties():
    policy = LeastOutstanding()
    replicas = [FakeReplica(0, 3), FakeReplica(1, 1), FakeReplica(2, 1)]
    assert policy.choose(replicas).replica_id == 1
    assert policy.choose(replicas).replica_id == 2  # a tie goes round-robin, not always to the first
    replicas[0].num_outstanding = 0
    assert policy.choose(replicas).replica_id == 0


def test_least_outstanding_balances_a_burst():
    """Requests that stay outstanding spread evenly, as the router sees them arrive."""
    policy = LeastOutstanding()
    replicas = [FakeReplica(i) for i in range(2)]
    for _ in range(10):
        policy.choose(replicas).num_outstanding += 1
    assert [r.num_outstanding for r in replicas] == [5, 5]


def test_make_policy_by_name():
    assert set(ROUTING_POLICIES) == {"round-robin", "least-outstanding"}
    assert isinstance(make_policy("round-robin"), RoundRobin)
    with pytest.raises(ValueError, match="known: round-robin, least-outstanding"):
        make_policy("random")
