"""Simulator (Vidur-style): operator profiles, cost model, event-driven replica/cluster
simulation over the engine's own ``core/`` scheduler, and a configuration search.

Nothing in this package imports torch at import time; only ``podserve.sim.profiler`` does.
"""
