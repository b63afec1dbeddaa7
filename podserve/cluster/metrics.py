"""``/metrics`` of a replicated server: each replica's registry, labelled ``replica``, plus the router's.

Every replica runs the single-server exporter (``prom_metrics.ServerMetrics``) on its own
engine. At scrape time the front end asks every live replica for its metric families (in
parallel, each with a timeout), adds a ``replica="<id>"`` label to every sample and merges
families of the same name, as Prometheus federation would: ``sum by (model_name)`` gives the
cluster's totals and nothing is double-counted. A replica that is dead or does not answer is
left out of that scrape (its counters restart from zero after a restart, which ``rate()``
handles). The router adds its own per-replica families (healthy, outstanding, routed, failed,
restarts), which survive restarts.
"""
from __future__ import annotations

import asyncio
import logging

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

logger = logging.getLogger("podserve.router")

SCRAPE_TIMEOUT_S = 2.0


class _Families:
    """A one-shot collector over already-built families (what ``generate_latest`` iterates)."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self):
        return self.families


def relabel(families_by_replica: dict[int, list[Metric]]) -> list[Metric]:
    """Merge replicas' families by name, adding ``replica=<id>`` to every sample."""
    merged: dict[str, Metric] = {}
    for replica_id, families in sorted(families_by_replica.items()):
        for family in families:
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                target.samples.append(sample._replace(labels={**sample.labels, "replica": str(replica_id)}))
    return list(merged.values())


class ClusterMetrics:
    """The exporter behind ``/metrics`` when serving replicas; ``await render()``."""

    def __init__(self, router, model_name: str):
        self.router = router
        self.model_name = model_name

    async def _scrape(self, replica) -> list[Metric] | None:
        from podserve.cluster.router import HEALTHY, UNHEALTHY

        if replica.state not in (HEALTHY, UNHEALTHY):
            return None
        try:
            return await asyncio.wait_for(replica.actor.metric_families.remote(), SCRAPE_TIMEOUT_S)
        except Exception as e:  # dead or busy: leave it out of this scrape
            logger.debug("scrape of replica %d failed: %r", replica.replica_id, e)
            return None

    def router_families(self) -> list[Metric]:
        """Per-replica families kept by the router itself."""
        from podserve.cluster.router import HEALTHY

        labels = ["model_name", "replica"]
        healthy = GaugeMetricFamily("podserve:replica_healthy", "1 if the replica is routed to, else 0.", labels=labels)
        outstanding = GaugeMetricFamily("podserve:router_requests_outstanding",
                                        "Requests routed to the replica and not finished.", labels=labels)
        routed = CounterMetricFamily("podserve:router_requests_routed", "Requests sent to the replica.", labels=labels)
        failed = CounterMetricFamily("podserve:router_requests_failed",
                                     "Requests that failed because the replica died under them.", labels=labels)
        restarts = CounterMetricFamily("podserve:replica_restarts", "Times the replica's actor was replaced.",
                                       labels=labels)
        for r in self.router.replicas:
            key = [self.model_name, str(r.replica_id)]
            healthy.add_metric(key, float(r.state == HEALTHY))
            outstanding.add_metric(key, r.num_outstanding)
            routed.add_metric(key, r.num_routed)
            failed.add_metric(key, r.num_failed)
            restarts.add_metric(key, r.num_restarts)
        return [healthy, outstanding, routed, failed, restarts]

    async def render(self) -> bytes:
        """Prometheus text of every live replica's metrics plus the router's."""
        replicas = list(self.router.replicas)
        scraped = await asyncio.gather(*(self._scrape(r) for r in replicas))
        families = relabel({r.replica_id: f for r, f in zip(replicas, scraped) if f is not None})
        return generate_latest(_Families(families + self.router_families()))
