"""Request and iteration statistics, fed alike by the engine and the simulator (no torch)."""
from podserve.metrics.collector import MetricsCollector
from podserve.metrics.records import IterationRecord, RequestMetrics
from podserve.metrics.summary import distribution, piggyback_table

__all__ = ["IterationRecord", "MetricsCollector", "RequestMetrics", "distribution", "piggyback_table"]
